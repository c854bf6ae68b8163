"""spec.build: every run field reaches docker-py's kwargs as Docker expects it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from dagent.cli import main
from dagent.config import load_config
from dagent.contracts import DaemonFacts
from dagent.hostview import HostView
from dagent.runs import RunRequest
from dagent.spec import Origin, build

# A host whose daemon keeps its state in the default place and shares the agent's view.
DAEMON = DaemonFacts(data_root="/var/lib/docker", socket_path="/var/run/docker.sock", view_error=None)


def _build(run: dict[str, Any], docker: dict[str, Any] | None = None, **kw: Any) -> Any:
    config = load_config({"name": "a1", "docker": docker or {}}, environ={}).config
    request = RunRequest.model_validate({"id": "r1", "image": "local/busybox:latest", **run})
    return build(config, request, facts=HostView(config, DAEMON).facts(request), **kw)


def test_minimal_run() -> None:
    """Name, labels and defaults of a run that asks for nothing."""
    spec = _build({})
    kwargs = spec.to_docker_kwargs()
    assert kwargs["name"] == "dagent-r1" and kwargs["image"] == "local/busybox:latest" and "detach" not in kwargs
    assert kwargs["labels"] == {
        "dagent.agent": "a1",
        "dagent.run-id": "r1",
        "dagent.source": "inbox",
        "dagent.keep": "on-failure",
    }
    assert kwargs["environment"] == {"DAGENT_RUN_ID": "r1"}
    assert "command" not in kwargs and "nano_cpus" not in kwargs and "mem_limit" not in kwargs
    assert spec.timeout == 86400 and spec.pull == "if-not-present"


def test_every_field(tmp_path: Path) -> None:
    """Resources, devices, ports, namespaces and process settings map to docker-py names."""
    (tmp_path / "data").mkdir()
    docker = {"allowed_host_paths": [str(tmp_path / "data")], "allow_named_volumes": True, "allow_privileged": True,
              "allow_host_network": True, "allowed_capabilities": ["NET_ADMIN"], "allowed_devices": ["/dev/null"],
              "allow_gpus": True, "allow_ports": True}  # fmt: skip
    run = {"command": "sh -c 'exit 0'", "entrypoint": ["/bin/sh"], "volumes": [f"{tmp_path}/data:/d:ro", "cache:/c", "cache:/w2:rw"],
           "cpus": 1.5, "memory": "256m", "shm_size": "64m", "gpus": 2, "devices": ["/dev/null"],
           "ports": ["127.0.0.1:8080:80", "9090:90/udp", "7000"], "cap_add": ["cap_net_admin"], "privileged": True,
           "pid": "host", "ipc": "host", "working_dir": "/w", "user": "1000", "timeout": 5}  # fmt: skip
    kwargs = _build(run, docker).to_docker_kwargs()
    assert kwargs["command"] == ["sh", "-c", "exit 0"] and kwargs["entrypoint"] == ["/bin/sh"]
    # As written, as Prefect's worker passes them: a mode only where one was given.
    assert kwargs["volumes"] == [f"{tmp_path}/data:/d:ro", "cache:/c", "cache:/w2:rw"]
    assert (
        kwargs["nano_cpus"] == 1_500_000_000 and kwargs["mem_limit"] == 256 * 2**20 and kwargs["shm_size"] == 64 * 2**20
    )
    assert kwargs["device_requests"] == [{"count": 2, "capabilities": [["gpu"]]}]
    assert kwargs["devices"] == ["/dev/null:/dev/null:rwm"]
    assert kwargs["ports"] == {"80/tcp": ("127.0.0.1", 8080), "90/udp": 9090, "7000/tcp": None}
    assert kwargs["cap_add"] == ["NET_ADMIN"] and kwargs["privileged"] is True
    assert (kwargs["pid_mode"], kwargs["ipc_mode"], kwargs["working_dir"], kwargs["user"]) == (
        "host",
        "host",
        "/w",
        "1000",
    )


def test_env_precedence() -> None:
    """Agent env < run env < what the source enforces; secrets go only to the container."""
    origin = Origin(source="prefect", env={"PREFECT__FLOW_RUN_ID": "f1", "B": "origin"},
                    secret_env={"PREFECT_API_KEY": SecretStr("s3cr3t")}, labels={"io.prefect.flow-run-id": "f1"})  # fmt: skip
    spec = _build({"env": {"A": "run", "B": "run", "DAGENT_RUN_ID": "spoofed"}}, {"env": {"A": "agent", "C": "agent"}},
                  origin=origin)  # fmt: skip
    env = spec.to_docker_kwargs()["environment"]
    assert env == {"A": "run", "B": "origin", "C": "agent", "DAGENT_RUN_ID": "r1", "PREFECT__FLOW_RUN_ID": "f1",
                   "PREFECT_API_KEY": "s3cr3t"}  # fmt: skip
    assert "s3cr3t" not in json.dumps(spec.model_dump(mode="json")) and "s3cr3t" not in repr(spec)
    assert spec.labels["io.prefect.flow-run-id"] == "f1" and spec.labels["dagent.source"] == "prefect"


def test_agent_labels_cannot_override_dagent_labels() -> None:
    """The agent's own labels always win over configured and source labels."""
    spec = _build({}, origin=Origin(labels={"dagent.run-id": "spoof", "dagent.agent": "x"}))
    assert spec.labels["dagent.run-id"] == "r1" and spec.labels["dagent.agent"] == "a1"


@pytest.mark.parametrize(
    ("platform", "network", "interface", "expected"),
    [("linux", None, True, {"host.docker.internal": "host-gateway"}), ("linux", "flows", True, {"host.docker.internal": "host-gateway"}),
     ("linux", "host", True, {"host.docker.internal": "host-gateway"}), ("linux", "container:x", True, {}),
     ("linux", None, False, {}), ("darwin", None, True, {}), ("win32", None, True, {})],
)  # fmt: skip
def test_docker_interface(platform: str, network: str | None, interface: bool, expected: dict[str, str]) -> None:
    """host.docker.internal maps to the host gateway on Linux (as Prefect's worker does, host network
    included), unless another container's network namespace is shared or it is turned off."""
    docker = {"docker_interface": interface, "allow_host_network": True}
    spec = _build({"network": network} if network else {}, docker, platform=platform)
    assert spec.extra_hosts == expected
    kwargs = spec.to_docker_kwargs()
    mode = network if network in ("host", "container:x") else None
    assert kwargs.get("network_mode") == mode
    assert kwargs.get("network") == (network if network is not None and mode is None else None)


def test_agent_network_and_volumes_are_trusted() -> None:
    """The agent's own volumes and network apply to every run without policy checks."""
    spec = _build({}, {"volumes": ["/var/lib/x:/x:ro"], "network": "flows"})
    kwargs = spec.to_docker_kwargs()
    assert kwargs["volumes"] == ["/var/lib/x:/x:ro"] and kwargs["network"] == "flows"


def test_maxima_are_the_limits_of_runs_that_ask_for_nothing() -> None:
    """With max_cpus and max_memory set, no run is unbounded."""
    kwargs = _build({}, {"max_cpus": 2, "max_memory": "1g"}).to_docker_kwargs()
    assert kwargs["nano_cpus"] == 2_000_000_000 and kwargs["mem_limit"] == 2**30


def test_pull_policy() -> None:
    """docker.pull carries over, except for unqualified images outside the allow-list."""
    assert _build({}, {"pull": "always"}).pull == "always"
    assert _build({}, {"pull": "always", "registry_allow_list": ["127.0.0.1:5000"]}).pull == "never"
    assert (
        _build({"image": "127.0.0.1:5000/x"}, {"pull": "always", "registry_allow_list": ["127.0.0.1:5000"]}).pull
        == "always"
    )


def test_plan_prints_spec_and_kwargs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dagent plan` prints both as JSON and needs no daemon (base_url points nowhere)."""
    run = tmp_path / "hello.toml"
    run.write_text('image = "local/busybox:latest"\ncommand = ["echo", "hi"]\n')
    assert main(["plan", str(run), "--base-url", "tcp://127.0.0.1:1"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["spec"]["name"].endswith("-hello") and document["docker_kwargs"]["command"] == ["echo", "hi"]
