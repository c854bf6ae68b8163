"""`dagent run/plan/ps/gc` against a real Docker daemon and a real local registry."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import docker
import pytest

from tests.support import infra
from tests.support.helpers import Dagent

pytestmark = pytest.mark.integration


def test_container_is_what_the_spec_says(dagent: Dagent, image: str, docker_network: str) -> None:
    """env, labels, mounts, network, resources, extra_hosts, caps and devices, checked by docker inspect."""
    config = dagent.config(
        keep_containers="always",
        allowed_host_paths=["/tmp"],
        allowed_capabilities=["NET_ADMIN"],
        allowed_devices=["/dev/null"],
        env={"AGENT_VAR": "a", "SHARED": "agent"},
        labels={"com.example.team": "platform"},
    )
    run = dagent.run_file(
        "inspect-me",
        image=image,
        command=["sh", "-c", "echo $AGENT_VAR $SHARED $RUN_VAR; cat /data/hello"],
        env={"RUN_VAR": "r", "SHARED": "run"},
        volumes=[f"{dagent.workdir}/data:/data:ro"],
        network=docker_network,
        cpus=0.5,
        memory="64m",
        shm_size="16m",
        cap_add=["NET_ADMIN"],
        devices=["/dev/null:/dev/mynull:r"],
        working_dir="/tmp",
        user="1234",
    )
    (dagent.workdir / "data").mkdir()
    (dagent.workdir / "data" / "hello").write_text("from the host\n")
    dagent.workdir.chmod(0o755)
    (dagent.workdir / "data" / "hello").chmod(0o644)
    result = dagent("run", str(run), "-c", str(config), "--logs")
    assert result.returncode == 0, result.stderr
    assert "a run r\nfrom the host" in result.stdout

    [container] = dagent.containers("inspect-me")
    attrs = container.attrs
    host, cfg = attrs["HostConfig"], attrs["Config"]
    assert container.name == "dagent-inspect-me"
    assert {"AGENT_VAR=a", "SHARED=run", "RUN_VAR=r", "DAGENT_RUN_ID=inspect-me"} <= set(cfg["Env"])
    assert cfg["Labels"]["dagent.agent"] == dagent.name and cfg["Labels"]["dagent.run-id"] == "inspect-me"
    assert cfg["Labels"]["dagent.source"] == "inbox" and cfg["Labels"]["com.example.team"] == "platform"
    assert host["Binds"] == [f"{dagent.workdir.resolve()}/data:/data:ro"]
    assert docker_network in attrs["NetworkSettings"]["Networks"]
    assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 64 * 2**20 and host["ShmSize"] == 16 * 2**20
    assert host["ExtraHosts"] == ["host.docker.internal:host-gateway"]
    assert host["CapAdd"] == ["NET_ADMIN"] and host["Privileged"] is False
    assert host["Devices"] == [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/mynull", "CgroupPermissions": "r"}]
    assert cfg["WorkingDir"] == "/tmp" and cfg["User"] == "1234"


@pytest.mark.parametrize("code", [0, 3, 42])
def test_exit_codes_pass_through(dagent: Dagent, image: str, code: int) -> None:
    """`dagent run` exits with the container's exit code; the container is removed per keep_containers."""
    config = dagent.config(keep_containers="never")
    run = dagent.run_file(f"exit-{code}", image=image, command=["sh", "-c", f"exit {code}"])
    result = dagent("run", str(run), "-c", str(config))
    assert result.returncode == code, result.stderr
    assert f"run exit-{code}: {'succeeded' if code == 0 else 'failed'}, exit code {code}" in result.stderr
    assert dagent.containers(f"exit-{code}") == []


def test_keep_on_failure(dagent: Dagent, image: str) -> None:
    """keep_containers = on-failure keeps failed containers only."""
    config = dagent.config(keep_containers="on-failure")
    assert dagent("run", str(dagent.run_file("ok", image=image, command=["true"])), "-c", str(config)).returncode == 0
    assert dagent("run", str(dagent.run_file("bad", image=image, command=["false"])), "-c", str(config)).returncode == 1
    assert dagent.containers("ok") == [] and len(dagent.containers("bad")) == 1


def test_same_run_twice_gives_one_container(dagent: Dagent, image: str) -> None:
    """A second apply of a run adopts its existing container: one container, never started twice."""
    config = dagent.config(keep_containers="always")
    run = dagent.run_file("once", image=image, command=["sh", "-c", "echo started; exit 7"])
    first = dagent("run", str(run), "-c", str(config), "--logs")
    second = dagent("run", str(run), "-c", str(config), "--logs")
    assert first.returncode == second.returncode == 7
    [container] = dagent.containers("once")
    assert container.logs().decode().count("started") == 1


def test_timeout_stops_the_container(dagent: Dagent, image: str) -> None:
    """Past `timeout` the container gets SIGTERM, then SIGKILL after the grace, and the run is timed-out."""
    config = dagent.config(keep_containers="never", stop_grace=1)
    run = dagent.run_file("slow", image=image, command=["sleep", "60"], timeout=1)
    result = dagent("run", str(run), "-c", str(config))
    # Stopped by its timeout, not by its own end: `sleep 60` would have exited 0.
    assert "run slow: timed-out" in result.stderr and "timed out after 1s" in result.stderr
    assert result.returncode in (137, 143)
    assert dagent.containers("slow") == []


def test_policy_refusal_happens_before_any_daemon_call(dagent: Dagent) -> None:
    """An image from a registry outside the allow-list is refused with exit 2 even with no daemon at all."""
    config = dagent.config(registry_allow_list=["127.0.0.1:5000"], base_url=f"tcp://127.0.0.1:{infra.free_port()}")
    run = dagent.run_file("evil", image="registry.example.com.evil.net/x:1")
    result = dagent("run", str(run), "-c", str(config))
    assert result.returncode == 2
    assert "refused by docker.registry_allow_list" in result.stderr and "Traceback" not in result.stderr


def test_daemon_unreachable_is_one_line_and_exit_1(dagent: Dagent, image: str) -> None:
    """No daemon at docker.base_url: exit 1 with one line naming it, after the configured retries."""
    url = f"tcp://127.0.0.1:{infra.free_port()}"
    config = dagent.config("[retry]\nattempts = 2\nbackoff_initial = 0.1\n", base_url=url)
    result = dagent("run", str(dagent.run_file("nodaemon", image=image)), "-c", str(config))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("dagent: error:")]
    assert len(errors) == 1 and url in errors[0] and "docker.base_url" in errors[0]
    assert "Traceback" not in result.stderr


def test_transient_daemon_fault_is_retried(dagent: Dagent, image: str) -> None:
    """A proxy in front of the daemon drops the first connections; the run still succeeds."""
    proxy = infra.FaultProxy(drop=2)
    try:
        config = dagent.config(base_url=proxy.url, keep_containers="never")
        result = dagent("run", str(dagent.run_file("flaky", image=image, command=["true"])), "-c", str(config))
        assert result.returncode == 0, result.stderr
        assert proxy.dropped == 2 and proxy.forwarded > 0
        assert "try 2" in result.stderr  # the retry was logged
    finally:
        proxy.stop()


def test_permanent_fault_is_not_retried(dagent: Dagent) -> None:
    """A 4xx from the daemon (no such image, pull never) fails at once, naming the image."""
    config = dagent.config(pull="never")
    run = dagent.run_file("missing", image=f"dagent-test/absent-{uuid.uuid4().hex[:6]}:1")
    result = dagent("run", str(run), "-c", str(config))
    assert result.returncode == 1
    assert "is not present and is not pulled (docker.pull is never)" in result.stderr
    assert "try 2" not in result.stderr


class TestPullPolicies:
    """Each pull policy against a real local registry, observed in the registry's own log."""

    @pytest.fixture
    def remote(self, registry: infra.Registry, image: str) -> str:
        name = f"dagent/bb-{uuid.uuid4().hex[:6]}"
        return registry.push(image, f"{name}:1")

    def _run(self, dagent: Dagent, ref: str, pull: str, allow: list[str] | None = None) -> tuple[int, str]:
        keys: dict[str, object] = {"pull": pull, "keep_containers": "never"}
        if allow is not None:
            keys["registry_allow_list"] = allow
        config = dagent.config(**keys)
        result = dagent("run", str(dagent.run_file(f"pull-{pull}", image=ref, command=["true"])), "-c", str(config))
        return result.returncode, result.stderr

    def test_never_with_missing_image(self, dagent: Dagent, remote: str) -> None:
        """never + missing image: a clear error and no pull."""
        dagent.client.images.remove(remote, force=True)
        code, err = self._run(dagent, remote, "never")
        assert code == 1 and f"image {remote} is not present" in err

    def test_if_not_present(self, dagent: Dagent, registry: infra.Registry, remote: str) -> None:
        """if-not-present pulls a missing image once, and not again while it is present."""
        name = remote.split("/", 1)[1].rsplit(":", 1)[0]
        dagent.client.images.remove(remote, force=True)
        before = registry.manifest_gets(name)
        assert self._run(dagent, remote, "if-not-present")[0] == 0
        after_first = registry.manifest_gets(name)
        assert after_first > before
        assert self._run(dagent, remote, "if-not-present")[0] == 0
        assert registry.manifest_gets(name) == after_first

    def test_always(self, dagent: Dagent, registry: infra.Registry, remote: str) -> None:
        """always pulls even when the image is present."""
        name = remote.split("/", 1)[1].rsplit(":", 1)[0]
        before = registry.manifest_gets(name)
        code, err = self._run(dagent, remote, "always", allow=[registry.address])
        assert code == 0, err
        assert registry.manifest_gets(name) > before

    def test_allow_list_refuses_other_registry(self, dagent: Dagent, registry: infra.Registry, remote: str) -> None:
        """An allow-list without this registry refuses the run (exit 2) and nothing is pulled."""
        name = remote.split("/", 1)[1].rsplit(":", 1)[0]
        before = registry.manifest_gets(name)
        code, err = self._run(dagent, remote, "always", allow=["registry.example.com"])
        assert code == 2 and "registry_allow_list" in err
        assert registry.manifest_gets(name) == before


def test_registry_credentials(dagent: Dagent, auth_registry: infra.Registry, image: str) -> None:
    """A registry that wants a login: refused without credentials, pulled with docker.registry_auth."""
    remote = auth_registry.push(image, f"private/bb-{uuid.uuid4().hex[:6]}:1")
    dagent.client.images.remove(remote, force=True)
    run = dagent.run_file("private", image=remote, command=["true"])
    without = dagent("run", str(run), "-c", str(dagent.config("[retry]\nattempts = 1\n", keep_containers="never")))
    assert without.returncode == 1 and f"pull {remote}" in without.stderr and "Traceback" not in without.stderr
    password_file = dagent.workdir / "registry-password"
    password_file.write_text("pa55-word\n")
    config = dagent.config(
        f'[[docker.registry_auth]]\nregistry = "{auth_registry.address}"\nusername = "ci"\npassword_file = "{password_file}"\n',
        keep_containers="never",
    )
    with_auth = dagent("run", str(run), "-c", str(config))
    assert with_auth.returncode == 0, with_auth.stderr
    assert "pa55-word" not in with_auth.stderr + without.stderr


def test_ps_and_gc(dagent: Dagent, image: str) -> None:
    """`ps` lists this agent's containers; `gc --older-than 0` removes finished ones and keeps running ones."""
    config = dagent.config(keep_containers="always")
    assert (
        dagent("run", str(dagent.run_file("done-1", image=image, command=["true"])), "-c", str(config)).returncode == 0
    )
    running = dagent.client.containers.run(
        image, ["sleep", "60"], detach=True, name=f"dagent-{dagent.name}-live",
        labels={"dagent.agent": dagent.name, "dagent.run-id": "live"},
    )  # fmt: skip
    listed = json.loads(dagent("ps", "--json", "-c", str(config)).stdout)
    assert {c["run_id"] for c in listed} == {"done-1", "live"}
    table = dagent("ps", "-c", str(config)).stdout
    assert "done-1" in table and "running" in table
    result = dagent("gc", "--older-than", "0", "-c", str(config))
    assert result.returncode == 0 and "removed dagent-done-1" in result.stdout
    assert [c.labels["dagent.run-id"] for c in dagent.containers()] == ["live"]
    running.remove(force=True)


def test_plan_needs_no_daemon(dagent: Dagent, image: str) -> None:
    """`plan` prints the spec with the daemon unreachable."""
    config = dagent.config(base_url=f"tcp://127.0.0.1:{infra.free_port()}")
    result = dagent("plan", str(dagent.run_file("p", image=image)), "-c", str(config))
    assert result.returncode == 0 and json.loads(result.stdout)["spec"]["name"] == "dagent-p"


def test_registry_reachable_only_on_loopback(registry: infra.Registry) -> None:
    """The test registry listens on 127.0.0.1 only (network rules of this workplace)."""
    assert registry.address.startswith("127.0.0.1:")


def test_docker_client_sees_engine(engine: docker.DockerClient) -> None:
    """The engine fixture yields a daemon that answers."""
    assert engine.ping()


def test_two_agents_on_one_daemon_never_share_a_container(engine: docker.DockerClient, image: str) -> None:
    """Same run id, two agents, one daemon: each gets its own container; neither touches the other's."""
    from dagent.config import load_config
    from dagent.runs import parse_run
    from dagent.runtime import DockerRuntime
    from dagent.spec import build

    suffix = uuid.uuid4().hex[:6]
    specs = []
    for name, command in ((f"one-{suffix}", ["sleep", "30"]), (f"two-{suffix}", ["sh", "-c", "exit 7"])):
        config = load_config({"name": name, "docker": {"keep_containers": "always"}}, environ={}).config
        specs.append(
            (DockerRuntime(config), build(config, parse_run({"id": "same", "image": image, "command": command}, "r")))
        )
    (first_rt, first), (second_rt, second) = specs
    try:
        running = first_rt.launch(first)
        result = second_rt.execute(second)
        assert result.exit_code == 7 and result.container_id != running.id
        assert running.name == "dagent-same" and engine.containers.get(result.container_id or "").name == (
            f"dagent-{second.agent}-same"
        )
        running.reload()
        assert running.status == "running" and running.labels["dagent.agent"] == first.agent
        assert [c.id for c in second_rt.managed(second.agent)] == [result.container_id]
        assert [c.id for c in first_rt.managed(first.agent)] == [running.id]
    finally:
        for c in engine.containers.list(all=True, filters={"label": "dagent.run-id=same"}):
            if c.labels.get("dagent.agent") in (first.agent, second.agent):
                c.remove(force=True)


def test_a_foreign_container_in_the_way_is_an_error_never_adopted(engine: docker.DockerClient, image: str) -> None:
    """A container with the run's name but not this agent's labels: one clear error; it is left alone."""
    from dagent.config import load_config
    from dagent.errors import DaemonError
    from dagent.runs import parse_run
    from dagent.runtime import DockerRuntime
    from dagent.spec import build

    name = f"three-{uuid.uuid4().hex[:6]}"
    config = load_config({"name": name}, environ={}).config
    spec = build(config, parse_run({"id": "x", "image": image, "command": ["true"]}, "r"))
    squatter = engine.containers.create(image, ["sleep", "30"], name=spec.name, labels={"team": "not dagent"})
    try:
        with pytest.raises(DaemonError, match="in the way"):
            DockerRuntime(config).launch(spec)
        squatter.reload()
        assert squatter.status == "created"
    finally:
        squatter.remove(force=True)


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_run_stops_its_container_on_ctrl_c(dagent: Dagent, image: str, signum: str) -> None:
    """`dagent run` + Ctrl-C (or SIGTERM): like `docker run`, the container is stopped; the run is cancelled (130)."""
    import os
    import signal
    import subprocess
    import sys

    from tests.support import REPO

    config = dagent.config(stop_grace=1)
    run = dagent.run_file("ctrl-c", image=image, command=["sleep", "60"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGENT_", "PREFECT_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "dagent", "run", str(run), "-c", str(config)], cwd=dagent.workdir,
        env={**env, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not [c for c in dagent.containers("ctrl-c") if c.status == "running"]:
            assert time.monotonic() < deadline and process.poll() is None, "the container never ran"
            time.sleep(0.1)
        process.send_signal(getattr(signal, signum))
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "cancelled" in err and "Traceback" not in err
    assert [c.status for c in dagent.containers("ctrl-c")] == []  # stopped, and removed (keep: on-failure)


def test_output_with_no_newline_is_passed_on_in_pieces(dagent: Dagent, image: str) -> None:
    """A container's output is outside input: 1 MiB with no newline reaches the log as lines of at most 64 KiB."""
    config = dagent.config(keep_containers="never")
    command = ["sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' x; echo; echo done"]
    run = dagent.run_file("long-line", image=image, command=command)
    result = dagent("run", str(run), "-c", str(config), "--logs")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "done" in lines and sum(len(line) for line in lines if set(line) == {"x"}) == 1 << 20
    assert max(len(line) for line in lines) <= 64 << 10


def test_a_container_killed_for_memory_says_so(dagent: Dagent, image: str) -> None:
    """Exit 137 is not just a code: Docker knows the container ran out of memory, and the result says so."""
    config = dagent.config(keep_containers="never")
    run = dagent.run_file("oom", image=image, command=["sh", "-c", "echo filling; tail /dev/zero"],
                          memory="8m", memory_swap="8m")  # fmt: skip
    result = dagent("run", str(run), "-c", str(config))
    assert result.returncode == 137, result.stderr
    assert "was killed for running out of memory (memory limit 8 MiB)" in result.stderr, result.stderr
    assert "last output:\n  filling" in result.stderr  # not shown as it ran: its end, with the error


def test_an_agent_on_the_local_socket_never_loads_paramiko(dagent: Dagent) -> None:
    """docker-py imports paramiko (about 18 MB) for ssh:// whenever it is installed; dagent keeps it out
    unless the daemon is reached over ssh (paramiko is installed in the test venv, so this can fail)."""
    import subprocess
    import sys

    code = (
        "import sys; from dagent.config import load_config; from dagent.runtime import DockerRuntime; "
        "r = DockerRuntime(load_config({'name': 'p'}, environ={}).config); r.verify(); "
        "print('paramiko' in sys.modules, 'docker' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=dagent.workdir, check=True)
    assert out.stdout.split() == ["False", "True"], out.stderr[-500:]


def test_an_idle_agent_never_loads_what_it_does_not_use(dagent: Dagent, tmp_path: Path) -> None:
    """asyncio (pydantic-settings imports it for its CLI), tarfile (docker-py, for builds), prometheus-client
    (without health.address) and
    websocket-client (on the inbox) stay out of an idle `dagent start`: each is memory an agent pays for."""
    import subprocess
    import sys

    code = (
        "import sys, threading, time, os\n"
        "def look():\n"
        "    time.sleep(4)\n"
        "    loaded = [m for m in ('asyncio', 'tarfile', 'prometheus_client', 'websocket', 'paramiko') if m in sys.modules\n"
        "              and type(sys.modules[m]).__name__ == 'module']\n"
        "    print(','.join(loaded) or 'none', 'docker' in sys.modules, flush=True)\n"
        "    os._exit(0)\n"
        "threading.Thread(target=look, daemon=True).start()\n"
        "from dagent.cli import main\n"
        f"main(['start', '--inbox', {str(tmp_path / 'inbox')!r}])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=dagent.workdir, timeout=60)
    assert out.stdout.split() == ["none", "True"], out.stdout + out.stderr[-800:]
