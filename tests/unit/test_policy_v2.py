"""Policy v2: each bypass class, attacked first, then judged in the daemon's view of the host.

The classes are those of the policy review: paths the agent cannot fully see, a different mount
namespace, exceptions that leaked to the whole path, the daemon's and the agent's own files, and
limits that turned into "no limit"; plus the near-misses (networks, device permissions, labels,
trailing newlines).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from dagent.config import AgentConfig, DockerConfig, load_config
from dagent.contracts import DaemonFacts
from dagent.errors import PolicyError, RunFileError
from dagent.hostview import HostView, Unresolvable, resolve, view_error
from dagent.policy import HostFacts, VolumeFacts, check
from dagent.runs import RunRequest, parse_run
from dagent.spec import Origin, build
from tests.support import REPO
from tests.support.fakes import RoutingTransport
from tests.support.helpers import lexical_facts

SHARED = DaemonFacts(data_root="/var/lib/docker", socket_path="/var/run/docker.sock", view_error=None)


def _config(**docker: Any) -> AgentConfig:
    return load_config({"name": "a1", "docker": docker}, environ={}).config


def _run(**fields: Any) -> RunRequest:
    return parse_run({"id": "r1", "image": "busybox", **fields}, "run.toml")


def _judge(config: AgentConfig, run: RunRequest, daemon: DaemonFacts = SHARED, **view: Any) -> Any:
    return build(config, run, facts=HostView(config, daemon, **view).facts(run))


def _refused(config: AgentConfig, run: RunRequest, match: str, **kw: Any) -> None:
    with pytest.raises(PolicyError, match=match):
        _judge(config, run, **kw)


# --- 1. paths the agent cannot fully see ----------------------------------------------------------


def test_resolve_follows_links_and_dotdot_in_order(tmp_path: Path) -> None:
    """`link/..` is the parent of the link's target, as the kernel reads it, not the link's parent."""
    (tmp_path / "real" / "deep").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "deep")
    assert resolve(f"{tmp_path}/link/../x") == f"{tmp_path}/real/x"
    assert resolve(f"{tmp_path}//real/./deep/") == f"{tmp_path}/real/deep"
    assert resolve(f"{tmp_path}/missing/sub") == f"{tmp_path}/missing/sub"  # the daemon creates it


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: (d / "loop").symlink_to(d / "loop"), "symbolic links"),
        (lambda d: (d / "file").write_text(""), "not a directory"),
        (lambda d: None, "does not exist"),
    ],
)
def test_unresolvable_shapes(tmp_path: Path, make: Any, reason: str) -> None:
    """Link loops, a file used as a directory, `..` after a missing part: each refused with why."""
    make(tmp_path)
    path = {"symbolic links": "loop/x", "not a directory": "file/x", "does not exist": "missing/../../etc"}[reason]
    with pytest.raises(Unresolvable, match=reason):
        resolve(f"{tmp_path}/{path}")


def test_devices_are_resolved_too(tmp_path: Path) -> None:
    """A link named like an allowed device but pointing elsewhere is judged by its target."""
    (tmp_path / "fuse").symlink_to("/dev/kmsg")
    config = _config(allowed_devices=["/dev/fuse"], allowed_host_paths=[str(tmp_path)])
    _refused(config, _run(devices=[f"{tmp_path}/fuse:/dev/fuse"]), "allowed_devices")
    spec = _judge(_config(allowed_devices=["/dev/null"]), _run(devices=["/dev/null"]))
    assert spec.devices == ("/dev/null:/dev/null:rwm",)


# --- 2. the agent and the daemon see different filesystems -----------------------------------------


def test_unverified_view_refuses_every_host_path(tmp_path: Path) -> None:
    """When the agent cannot vouch for the daemon's view, no host path and no device passes."""
    daemon = DaemonFacts("/var/lib/docker", None, "the daemon at tcp://10.0.0.9:2376 may see another filesystem")
    config = _config(allowed_host_paths=[str(tmp_path)], allowed_devices=["/dev/null"])
    _refused(config, _run(volumes=[f"{tmp_path}:/d"]), "may see another filesystem", daemon=daemon)
    _refused(config, _run(devices=["/dev/null"]), "may see another filesystem", daemon=daemon)
    assert _judge(config, _run(), daemon=daemon).mounts == ()  # a run naming no host path is unaffected


def test_remote_daemon_paths_are_refused_unless_the_operator_says_they_are_ours() -> None:
    """A tcp:// daemon's paths are another host's; docker.verify_host_view = false is the way out."""
    assert "may see another filesystem" in (view_error("tcp://127.0.0.1:2376", verify=True) or "")
    assert view_error("tcp://127.0.0.1:2376", verify=False) is None


def test_systemd_unit_gives_the_agent_the_hosts_mount_namespace() -> None:
    """The shipped unit sets nothing that gives the agent a mount namespace of its own."""
    unit = (REPO / "examples" / "systemd" / "dagent.service").read_text()
    directives = [line.split("=")[0] for line in unit.splitlines() if line and not line.startswith("#")]
    namespaced = {"PrivateTmp", "ProtectSystem", "ProtectHome", "ReadOnlyPaths", "InaccessiblePaths",
                  "PrivateDevices", "TemporaryFileSystem", "BindPaths", "RootDirectory", "PrivateMounts"}  # fmt: skip
    assert not namespaced & set(directives)


# --- 3. an exception for a sensitive path grants that root only ----------------------------------


EXCEPTIONS = [
    (["/", "/etc/ssl/certs"], "/etc/shadow", "exposes /etc"),
    (["/", "/etc/ssl/certs"], "/etc", "exposes /etc"),
    (["/", "/etc/ssl/certs"], "/etc/ssl", "exposes /etc"),
    (["/", "/etc/ssl/certs"], "/", "exposes"),
    (["/var", "/var/lib/docker/volumes/x/_data"], "/var/lib/docker", "exposes /var/lib/docker"),
    (["/var", "/var/lib/docker/volumes/x/_data"], "/var/lib/docker/volumes", "exposes /var/lib/docker"),
    (["/var", "/var/lib/docker/volumes/x/_data"], "/var/lib", "exposes /var/lib/docker"),
    (["/var", "/var/lib/docker/volumes/x/_data"], "/var/lib/docker/volumes/y/_data", "exposes /var/lib/docker"),
    (["/", "/etc/ssl/certs"], "/etc/ssl/certs/ca.pem", None),
    (["/", "/etc/ssl/certs"], "/etc/ssl/certs", None),
    (["/var", "/var/lib/docker/volumes/x/_data"], "/var/lib/docker/volumes/x/_data/sub", None),
    (["/var", "/var/lib/docker/volumes/x/_data"], "/var/cache", None),
]


@pytest.mark.parametrize(("roots", "source", "refusal"), EXCEPTIONS)
def test_sensitive_exception_is_that_root_alone(roots: list[str], source: str, refusal: str | None) -> None:
    """An allowed root inside a sensitive path grants it and what is under it, nothing above or beside."""
    docker = DockerConfig(allowed_host_paths=roots)
    run = _run(volumes=[f"{source}:/m"])
    if refusal is None:
        check(docker, run, lexical_facts(docker, run))
    else:
        with pytest.raises(PolicyError, match=refusal):
            check(docker, run, lexical_facts(docker, run))


# --- 4. the daemon's real sockets and state, the agent's own files --------------------------------


def test_the_daemons_own_socket_and_data_root_are_protected(tmp_path: Path) -> None:
    """The socket of docker.base_url and the DockerRootDir the daemon names, wherever they are."""
    sock, root = tmp_path / "user" / "docker.sock", tmp_path / "docker-data"
    sock.parent.mkdir()
    sock.write_text("")
    root.mkdir()
    daemon = DaemonFacts(data_root=str(root), socket_path=str(sock), view_error=None)
    config = _config(allowed_host_paths=[str(tmp_path)])
    _refused(config, _run(volumes=[f"{sock}:/s"]), "exposes", daemon=daemon)
    _refused(config, _run(volumes=[f"{root}/volumes:/v"]), "exposes", daemon=daemon)
    _refused(config, _run(volumes=[f"{tmp_path}:/all"]), "exposes", daemon=daemon)  # a parent of both


@pytest.mark.parametrize("path", ["/run/containerd/containerd.sock", "/run/docker", "/var/run/docker"])
def test_containerd_and_the_daemons_exec_root_are_protected(path: str) -> None:
    """containerd's sockets and state, and Docker's exec root, like /var/run/docker.sock."""
    _refused(_config(allowed_host_paths=["/"]), _run(volumes=[f"{path}:/x"]), "exposes")


def test_the_agents_own_files_are_protected(tmp_path: Path) -> None:
    """Its config file, token file, registry password files and inbox, even under an allowed root."""
    for name in ("conf.toml", "token", "registry-pass"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "token").chmod(0o600)
    config = load_config(
        {"name": "a1", "inbox": {"path": str(tmp_path / "inbox")}, "api": {"token_file": str(tmp_path / "token")},
         "docker": {"allowed_host_paths": [str(tmp_path)],
                    "registry_auth": [{"registry": "127.0.0.1:5000", "username": "u",
                                       "password_file": str(tmp_path / "registry-pass")}]}},
        environ={},
    ).config  # fmt: skip
    own = {"own_files": [tmp_path / "conf.toml"]}
    for target in ("conf.toml", "token", "registry-pass", "inbox", "inbox/new", "."):
        _refused(config, _run(volumes=[f"{tmp_path}/{target}:/x"]), "exposes", **own)
    (tmp_path / "work").mkdir()
    assert _judge(config, _run(volumes=[f"{tmp_path}/work:/w"]), **own).mounts[0].source == f"{tmp_path}/work"


def test_a_protected_path_reached_through_a_link_is_still_protected(tmp_path: Path) -> None:
    """/var/run is often a link to /run: both spellings, and any link to them, are the socket."""
    (tmp_path / "s").symlink_to("/var/run/docker.sock")
    _refused(_config(allowed_host_paths=["/"]), _run(volumes=[f"{tmp_path}/s:/s"]), "docker.sock")


# --- 5. limits that turn into "no limit" ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"cpus": 1e-10}, "cpus"),  # nano_cpus = 0: docker-py drops it, the container is unlimited
        ({"cpus": 0.004}, "cpus"),
        ({"cpus": float("inf")}, "cpus"),
        ({"cpus": float("nan")}, "cpus"),
        ({"cpus": 1e300}, "cpus"),
        ({"memory": 1}, "memory"),  # under Docker's 6 MiB minimum
        ({"memory": "9" * 400}, "memory"),
        ({"memory": 10**400}, "memory"),
        ({"memory": 1e300}, "memory"),
        ({"memory": float("inf")}, "memory"),
        ({"memory": "0.1b"}, "memory"),  # rounds to 0 bytes
        ({"shm_size": "0.5"}, "shm_size"),
        ({"shm_size": 2**70}, "shm_size"),
        ({"timeout": float("inf")}, "timeout"),
        ({"timeout": 1e300}, "timeout"),
        ({"gpus": 10**30}, "gpus"),
        ({"gpus": 0}, "gpus"),
    ],
)
def test_numbers_at_their_limits_are_one_line_errors(fields: dict[str, Any], key: str) -> None:
    """Every number is finite, within Docker's range, and never rounds to "unset"."""
    with pytest.raises(RunFileError) as info:
        _run(**fields)
    assert len(info.value.lines) == 1 and f": {key}: " in info.value.lines[0]


def test_the_smallest_cpu_share_is_still_a_limit() -> None:
    """0.01 CPU reaches docker-py as nano_cpus 10,000,000, never 0 or absent."""
    assert _judge(_config(max_cpus=2), _run(cpus=0.01)).to_docker_kwargs()["nano_cpus"] == 10_000_000


@pytest.mark.parametrize(
    ("docker", "message"),
    [
        ({"max_cpus": 1e-10}, "docker.max_cpus"),
        ({"max_cpus": float("inf")}, "docker.max_cpus"),
        ({"max_memory": 1}, "docker.max_memory"),
        ({"max_memory": "9" * 400}, "docker.max_memory"),
        ({"run_timeout": float("inf")}, "docker.run_timeout"),
        ({"stop_grace": 1e300}, "docker.stop_grace"),
    ],
)
def test_config_limits_are_bounded_too(docker: dict[str, Any], message: str) -> None:
    """The agent's own maxima obey the same bounds (a maximum of 1e-10 CPU would be no maximum)."""
    from dagent.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _config(**docker)


def test_shm_size_stays_within_the_memory_limit() -> None:
    """/dev/shm larger than the memory a run may use is refused; within it, allowed."""
    _refused(_config(max_memory="1g"), _run(shm_size="2g"), "shm_size")
    _refused(_config(), _run(memory="64m", shm_size="128m"), "shm_size")
    assert _judge(_config(max_memory="1g"), _run(shm_size="512m")).shm_size == 512 * 2**20


# --- near-misses -------------------------------------------------------------------------------


@pytest.mark.parametrize("network", ["host", "HOST", "Host", "container:x", "CONTAINER:x", "Container:abc"])
def test_network_modes_in_any_spelling(network: str) -> None:
    """Host and container modes are judged whatever their case."""
    _refused(_config(), _run(network=network), "allow_host_network")


def test_a_network_that_resolves_to_the_host_driver_is_the_host_network() -> None:
    """A run naming the host network by id (or an id prefix) gets judged as host networking."""
    config = _config()
    view = HostView(config, SHARED, network_driver=lambda name: "host" if name.startswith("28ec7") else "bridge")
    run = _run(network="28ec7caf3aab")
    with pytest.raises(PolicyError, match="allow_host_network"):
        build(config, run, facts=view.facts(run))
    spec = build(_config(allow_host_network=True), run, facts=view.facts(run))
    assert spec.network_mode == "host" and spec.network is None


def test_allowed_host_network_is_passed_in_dockers_spelling() -> None:
    """When allowed, `HOST` and `CONTAINER:x` reach Docker as the modes they were judged as."""
    config = _config(allow_host_network=True)
    assert _judge(config, _run(network="HOST")).network_mode == "host"
    assert _judge(config, _run(network="CONTAINER:x")).network_mode == "container:x"


def test_a_configured_network_limits_what_runs_pick() -> None:
    """docker.network set: a run may pick only from docker.allowed_networks (default: just that one)."""
    _refused(_config(network="flows"), _run(network="other"), "allowed_networks")
    assert _judge(_config(network="flows"), _run(network="flows")).network == "flows"
    assert _judge(_config(network="flows"), _run(network="none")).network == "none"
    config = _config(network="flows", allowed_networks=["flows", "etl"])
    assert _judge(config, _run(network="etl")).network == "etl"
    _refused(_config(allowed_networks=["etl"]), _run(network="flows"), "allowed_networks")
    assert _judge(_config(), _run(network="anything")).network == "anything"  # no network set: as before


@pytest.mark.parametrize(
    ("allowed", "asked", "ok"),
    [
        ("/dev/null:/dev/null:r", "/dev/null", False),  # Docker's default is rwm
        ("/dev/null:/dev/null:r", "/dev/null:/dev/null:rw", False),
        ("/dev/null:/dev/null:r", "/dev/null:/dev/x:r", True),
        ("/dev/null:/dev/null:rw", "/dev/null:/dev/null:wr", True),
        ("/dev/null", "/dev/null:/dev/null:rwm", True),
    ],
)
def test_configured_device_permissions_are_a_ceiling(allowed: str, asked: str, ok: bool) -> None:
    """allowed_devices = ["/dev/x:/dev/x:r"] grants r, not rwm."""
    config = _config(allowed_devices=[allowed])
    if ok:
        _judge(config, _run(devices=[asked]))
    else:
        _refused(config, _run(devices=[asked]), "allowed_devices")


def test_prefect_labels_cannot_claim_the_agents_labels() -> None:
    """The `labels` job variable: dagent.* refused; configured docker.labels win over it."""
    from dagent.sources.prefect import PrefectSource

    config = load_config(
        {"name": "a1", "source": "prefect", "api": {"url": "http://127.0.0.1:9/api"},
         "docker": {"labels": {"team": "data"}}}, environ={},
    ).config  # fmt: skip
    source = PrefectSource(config)
    try:
        with pytest.raises(RunFileError, match=r"labels\.dagent\.keep"):
            source.prepare.run_request("r1", {"image": "busybox", "labels": {"dagent.keep": "always"}})
        with pytest.raises(RunFileError, match="labels"):
            source.prepare.run_request("r1", {"image": "busybox", "labels": ["a"]})
    finally:
        source.close()
    origin = Origin("prefect", labels={"io.prefect.flow-run-id": "r1"},
                    run_labels={"team": "mine", "io.prefect.flow-run-id": "spoof", "extra": "x"})  # fmt: skip
    spec = build(config, _run(), origin, HostFacts())
    assert spec.labels["team"] == "data" and spec.labels["extra"] == "x"
    assert spec.labels["io.prefect.flow-run-id"] == "r1"


@pytest.mark.parametrize(
    "fields",
    [{"id": "abc\n"}, {"env": {"NAME\n": "x"}}, {"image": "busybox:latest\n"}, {"image": "127.0.0.1:5000\n/x"},
     {"ports": ["80\n"]}, {"image": "busybox:t\u00e9"}, {"devices": ["/dev/null\n:/dev/x"]}],
)  # fmt: skip
def test_patterns_do_not_accept_a_trailing_newline(fields: dict[str, Any]) -> None:
    """`$` matches before a final newline; every pattern is matched in full."""
    with pytest.raises(RunFileError):
        parse_run({"id": "r1", "image": "busybox", **fields}, "run.toml")


def test_registry_names_are_matched_in_full() -> None:
    """A registry with a trailing newline is no registry."""
    from dagent.images import normalize_registry

    with pytest.raises(ValueError):
        normalize_registry("127.0.0.1:5000\n")


# --- bad input never wedges the agent -----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        'image = "busybox"\nvolumes = ["/tmp/a\\u0000b:/x"]\n',
        'image = "busybox"\nmemory = ' + "9" * 400 + "\n",
        'image = "busybox"\ncpus = 1e300\n',
        'image = "busybox"\ncpus = inf\n',
        'image = "busybox"\ncpus = nan\n',
        'image = "busybox"\ndevices = ["/dev/null\\u0000"]\n',
    ],
)
def test_a_poisoned_run_file_goes_to_failed_and_later_runs_are_taken(tmp_path: Path, text: str) -> None:
    """One bad file in new/ is moved to failed/ with its reason; the next poll takes the good one."""
    from dagent.sources.inbox import InboxSource

    config = load_config({"name": "a", "inbox": {"path": str(tmp_path / "inbox")}}, environ={}).config
    source = InboxSource(config)
    source.connect()
    (source.new / "0-bad.toml").write_text(text)
    (source.new / "1-good.toml").write_text('image = "busybox"\n')
    os.utime(source.new / "0-bad.toml", (1000, 1000))
    claims = source.poll(5)
    assert [c.run.id for c in claims] == ["1-good"]
    reason = (source.failed / "0-bad.toml.error").read_text()
    assert reason.count("\n") <= 1 and "Traceback" not in reason and "0-bad.toml" in reason


@pytest.mark.parametrize("variables", [{"cpus": 1e300}, {"mem_limit": "9" * 400}, {"volumes": ["/tmp/a\x00b:/x"]}])
def test_a_poisoned_prefect_run_is_crashed_at_recovery_not_resumed_forever(variables: dict[str, Any]) -> None:
    """A run claimed PENDING whose job variables are bad is set CRASHED with why at the next start."""
    from dagent.sources.prefect import PrefectSource
    from dagent.sources.prefect.client import PrefectClient

    run_id = "8b0a3c0e-0000-4000-8000-000000000001"
    name = "poisoned"
    pending = {"type": "PENDING", "name": "Pending", "message": f"Claimed by dagent agent {name!r}"}
    flow_run = {"id": run_id, "state": pending, "job_variables": {"image": "busybox", **variables}}

    def answer(method: str, path: str, body: Any) -> tuple[int, Any]:
        if (method, path) == ("POST", "/flow_runs/filter"):
            return 200, [flow_run]
        if (method, path) == ("POST", f"/flow_runs/{run_id}/set_state"):
            return 200, {"status": "ACCEPT"}
        return 404, {"detail": "not found"}

    config = load_config(
        {"name": name, "source": "prefect",
         "api": {"url": "http://prefect.test/api", "event_stream": False, "send_agent_logs": False},
         "retry": {"attempts": 1}},
        environ={},
    ).config  # fmt: skip
    transport = RoutingTransport(answer)
    source = PrefectSource(config, PrefectClient(config, transport))
    try:
        assert source.recover({}, []) == []
    finally:
        source.close()
    [(_, _, body)] = [r for r in transport.seen if r[1].endswith("/set_state")]
    assert body["state"]["type"] == "CRASHED"
    assert "refused" in body["state"]["message"] and next(iter(variables)).split("_")[0] in body["state"]["message"]


# --- found by attacking policy v2 (each failed before its fix) -------------------------------------


def test_a_path_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    """`a` → b"\\xff" (missing) and b"\\xef\\xbf\\xbd" → outside: the daemon reads \\udcff as U+FFFD."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(b"\xff", os.path.join(os.fsencode(allowed), b"a"))
    os.symlink(os.fsencode(tmp_path / "outside"), os.path.join(os.fsencode(allowed), "\ufffd".encode()))
    with pytest.raises(Unresolvable, match="not UTF-8"):
        resolve(f"{allowed}/a")
    _refused(_config(allowed_host_paths=[str(allowed)]), _run(volumes=[f"{allowed}/a:/x:ro"]), "not UTF-8")


@pytest.mark.parametrize("options", ["size=1m,size=0", "size=1m,size=100g", "size=1m,nr_blocks=10000000", "size=0"])
def test_a_tmpfs_has_one_size_within_the_limit(options: str) -> None:
    """The daemon keeps the last size=, and the kernel also sizes a tmpfs by nr_blocks=."""
    _refused(_config(max_memory="256m"), _run(tmpfs={"/t": options}), "tmpfs")


@pytest.mark.parametrize("name", ["rtprio", "rttime", "nice", "memlock"])
def test_ulimits_that_raise_priority_are_privileges(name: str) -> None:
    """Real-time scheduling is not bound by the CPU quota: such a ulimit needs docker.allow_privileged."""
    _refused(_config(), _run(ulimits=[{"name": name, "soft": 99, "hard": 99}]), "allow_privileged")
    _judge(_config(), _run(ulimits=[{"name": "nofile", "soft": 1024, "hard": 2048}]))


@pytest.mark.parametrize(
    "path", ["/usr", "/usr/bin", "/lib/modules", "/home", "/var/spool/cron", "/run/user", "/run/dbus", "/bin"]
)
def test_the_hosts_system_directories_are_protected(path: str) -> None:
    _refused(_config(allowed_host_paths=["/"]), _run(volumes=[f"{path}:/x"]), "exposes")


def test_the_agents_docker_credentials_are_protected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "home" / ".docker").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    _refused(_config(allowed_host_paths=[str(tmp_path)]), _run(volumes=[f"{tmp_path}/home/.docker:/d"]), "exposes")


def test_a_named_volume_that_binds_a_host_directory_is_judged_as_that_bind(tmp_path: Path) -> None:
    """`docker volume create -o type=none -o o=bind -o device=/etc x`: allowing named volumes is not allowing /etc."""
    (tmp_path / "data").mkdir()
    config = _config(allow_named_volumes=True, allowed_host_paths=[str(tmp_path / "data")])
    binds = {"etc": "/etc", "ok": str(tmp_path / "data")}
    devices = {name: VolumeFacts("local", {"type": "none", "o": "bind", "device": d}) for name, d in binds.items()}
    view = {"volume": devices.get}
    _refused(config, _run(volumes=["etc:/e"]), "volume .etc. binds it", **view)
    assert _judge(config, _run(volumes=["ok:/o", "plain:/p"]), **view).mounts[0].source == "ok"


def test_the_agents_tls_keys_are_protected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """[docker.tls] files (here inside an allowed root) and ~/.docker even when DOCKER_CONFIG points elsewhere."""
    keys = tmp_path / "tls"
    keys.mkdir()
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (keys / name).write_text("x")
    (tmp_path / "home" / ".docker").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "elsewhere"))
    config = _config(allowed_host_paths=[str(tmp_path)], tls={"client_cert": str(keys / "cert.pem"),
                                                               "client_key": str(keys / "key.pem")})  # fmt: skip
    _refused(config, _run(volumes=[f"{keys}/key.pem:/k"]), "exposes")
    _refused(config, _run(volumes=[f"{tmp_path}:/all"]), "exposes")
    _refused(config, _run(volumes=[f"{tmp_path}/home/.docker:/d"]), "exposes")
    with_path = _config(allowed_host_paths=[str(tmp_path)], tls={"cert_path": str(keys)})
    _refused(with_path, _run(volumes=[f"{keys}/ca.pem:/c"]), "exposes")


# --- named volumes are allow-listed: the local driver with no options, or a bind judged as one -----


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"type": "none", "o": "rbind", "device": "/etc"}, "volume 'v' binds it"),
        ({"type": "none", "o": "ro,BIND", "device": "/etc"}, "volume 'v' binds it"),
        ({"type": "none", "o": " bind ", "device": "/etc/../etc"}, "volume 'v' binds it"),
        ({"type": "overlay", "o": "lowerdir=/etc,upperdir=/tmp/u,workdir=/tmp/w", "device": "overlay"}, "type=overlay"),
        ({"type": "ext4", "device": "/dev/sda1"}, "type=ext4"),
        ({"type": "nfs", "o": "addr=127.0.0.1", "device": ":/export"}, "type=nfs"),
        ({"type": "none", "device": "/etc"}, "does not judge"),  # a device with no bind flag
        ({"type": "none", "o": "bind", "device": "/srv", "size": "1g"}, "size=1g"),  # an option not understood
        ({"o": "uid=1000"}, "does not judge"),
    ],
)
def test_a_named_volumes_local_options_are_judged_or_refused(
    tmp_path: Path, options: dict[str, str], match: str
) -> None:
    """Attack first (issue 27): only `o=bind` was judged; rbind, other spellings, overlay and devices passed."""
    config = _config(allow_named_volumes=True, allowed_host_paths=[str(tmp_path)])
    view = {"volume": {"v": VolumeFacts("local", options)}.get}
    _refused(config, _run(volumes=["v:/e:ro"]), match, **view)


def test_a_named_volume_binding_an_allowed_path_with_rbind_runs(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    config = _config(allow_named_volumes=True, allowed_host_paths=[str(tmp_path)])
    data = VolumeFacts("local", {"type": "none", "o": "rbind,ro", "device": str(tmp_path / "data")})
    view = {"volume": {"v": data, "plain": VolumeFacts("local", {})}.get}
    assert len(_judge(config, _run(volumes=["v:/e", "plain:/p", "absent:/a"]), **view).mounts) == 3


def test_volumes_of_other_drivers_need_allowed_volume_drivers() -> None:
    view = {"volume": {"v": VolumeFacts("rexray/ebs", {"size": "10"})}.get}
    _refused(_config(allow_named_volumes=True), _run(volumes=["v:/e"]), "allowed_volume_drivers.*rexray/ebs", **view)
    _judge(_config(allow_named_volumes=True, allowed_volume_drivers=["rexray/ebs"]), _run(volumes=["v:/e"]), **view)


def test_a_named_volume_that_was_not_looked_up_is_refused() -> None:
    """Pure judgement with no facts fails closed: a volume nobody asked the daemon about is not allowed."""
    config = _config(allow_named_volumes=True)
    with pytest.raises(PolicyError, match="was not looked up"):
        check(config.docker, _run(volumes=["v:/e"]), HostFacts())


# --- an image named by ID is judged by the names the daemon holds for it --------------------------

_LISTED = ["127.0.0.1:5000"]


@pytest.mark.parametrize(
    ("image", "names"),
    [
        ("0123456789ab", ("127.0.0.1:6000/evil:1",)),
        ("sha256:" + "ab" * 32, ("127.0.0.1:6000/evil:1", "127.0.0.1:6000/evil@sha256:" + "cd" * 32)),
        ("abcdef", ()),  # no names at all: built here, or dangling
    ],
)
def test_an_image_named_by_id_outside_the_allow_list_is_refused(image: str, names: tuple[str, ...]) -> None:
    """Attack first (issue 27): a short or sha256 ID read as a Docker Hub name was judged 'no pull' and ran."""
    config = _config(registry_allow_list=_LISTED)
    _refused(config, _run(image=image), "named by ID", image_names={image: names}.get)


@pytest.mark.parametrize("names", [("127.0.0.1:5000/ok:1",), ("local/busybox:latest",), ("busybox:1",)])
def test_an_image_named_by_id_runs_when_one_of_its_names_would(names: tuple[str, ...]) -> None:
    """A listed registry's name, or a Docker Hub name (present, so run without a pull, as given directly)."""
    _judge(_config(registry_allow_list=_LISTED), _run(image="0123456789ab"), image_names={"0123456789ab": names}.get)


def test_image_ids_are_only_asked_about_with_an_allow_list() -> None:
    asked: list[str] = []

    def names(reference: str) -> tuple[str, ...] | None:
        asked.append(reference)
        return ()

    _judge(_config(), _run(image="0123456789ab"), image_names=names)
    assert asked == []


def test_extra_networks_are_judged_by_the_driver_the_daemon_resolves_them_to() -> None:
    """Attack first (issue 27): only the main network was looked up; an extra one named by the host
    network's id prefix was judged as an ordinary network."""
    config = _config(allowed_networks=["bridge", "28ec7"])
    drivers = {"28ec7": "host", "bridge": "bridge"}
    _refused(config, _run(network="bridge", networks=["28ec7"]), "only ordinary networks", network_driver=drivers.get)


def test_a_health_check_every_millisecond_is_refused() -> None:
    with pytest.raises(RunFileError, match="under 1 s"):
        _run(healthcheck={"test": ["CMD", "true"], "interval": 1_000_000})
    assert _run(healthcheck={"test": ["CMD", "true"], "interval": 0}).healthcheck is not None


def test_another_services_volume_is_not_lent_to_runs_unless_listed() -> None:
    """Attack (issue 27's review): with named volumes on, a run mounted a database's existing volume."""
    view = {"volume": {"pgdata": VolumeFacts("local", {}, others=("compose-postgres-1",)),
                       "mine": VolumeFacts("local", {})}.get}  # fmt: skip
    _refused(_config(allow_named_volumes=True), _run(volumes=["pgdata:/v"]), "compose-postgres-1", **view)
    _judge(_config(allow_named_volumes=True), _run(volumes=["mine:/v", "new:/n"]), **view)
    listed = _config(allow_named_volumes=True, allowed_volumes=["pg*"])
    _judge(listed, _run(volumes=["pgdata:/v"]), **view)
    _refused(listed, _run(volumes=["mine:/v"]), r"not in \['pg\*'\]", **view)


_MOUNTINFO = """\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /srv/runs rw,nosuid,nodev,relatime shared:2 - ext4 /dev/vdb rw
31 22 0:27 / /srv/runs/sub rw,relatime shared:3 - tmpfs tmpfs rw,nosuid,nodev
"""


def test_allowed_roots_on_mounts_without_nosuid_nodev_are_named() -> None:
    """A root run can leave a set-uid binary or a device node in an allowed root for the host's users."""
    from dagent.hostview import exposed_roots, mount_options

    assert mount_options("/srv/runs/x", _MOUNTINFO) == frozenset({"rw", "nosuid", "nodev", "relatime"})
    assert "nosuid" in (mount_options("/srv/runs/sub/y", _MOUNTINFO) or set())  # the superblock's options count
    config = _config(allowed_host_paths=["/srv/runs/x", "/srv/data", "/srv/runs/sub"])
    assert exposed_roots(config, _MOUNTINFO) == ["/srv/data"]


def test_pids_are_bounded_by_max_pids_and_a_run_that_asks_none_gets_the_maximum() -> None:
    """A run with no pids_limit could start processes until the host has no PIDs left (issue 27's review)."""
    config = _config(max_pids=512)
    assert _judge(config, _run()).to_docker_kwargs()["pids_limit"] == 512
    assert _judge(config, _run(pids_limit=100)).to_docker_kwargs()["pids_limit"] == 100
    _refused(config, _run(pids_limit=1000), "docker.max_pids: pids_limit = 1000 is over 512")
    _refused(config, _run(pids_limit=-1), "is unlimited")
    _refused(config, _run(pids_limit=0), "is unlimited")
    assert "pids_limit" not in _judge(_config(), _run()).to_docker_kwargs()


def test_a_soft_memory_limit_stays_within_the_hard_one() -> None:
    _refused(_config(max_memory="64m"), _run(mem_reservation="128m"), "mem_reservation")
    _judge(_config(max_memory="64m"), _run(mem_reservation="32m"))


@pytest.mark.parametrize("driver", ["syslog", "fluentd", "none", "gelf"])
def test_log_drivers_past_this_host_need_allowed_log_drivers(driver: str) -> None:
    _refused(_config(), _run(log_config={"type": driver}), "docker.allowed_log_drivers")
    _judge(_config(allowed_log_drivers=[driver]), _run(log_config={"type": driver}))
    _judge(_config(), _run(log_config={"type": "local", "config": {"max-size": "10m"}}))
