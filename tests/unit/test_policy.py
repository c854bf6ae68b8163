"""Policy: what a run may ask for, as tables and as a property over arbitrary runs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagent.config import DockerConfig
from dagent.errors import PolicyError
from dagent.policy import check, image_may_be_pulled, violations
from dagent.runs import RunRequest
from tests.support.helpers import lexical_facts


def _run(**fields: Any) -> RunRequest:
    return RunRequest.model_validate({"id": "r", "image": "busybox", **fields})


def _docker(**fields: Any) -> DockerConfig:
    return DockerConfig.model_validate(fields)


# (docker settings, run fields, rule the refusal must name or None when allowed)
TABLE: list[tuple[dict[str, Any], dict[str, Any], str | None]] = [
    ({}, {}, None),
    ({"registry_allow_list": ["127.0.0.1:5000"]}, {"image": "127.0.0.1:5000/x"}, None),
    ({"registry_allow_list": ["127.0.0.1:5000"]}, {"image": "evil.net/x"}, "registry_allow_list"),
    (
        {"registry_allow_list": ["registry.example.com"]},
        {"image": "registry.example.com.evil.net/x"},
        "registry_allow_list",
    ),
    (
        {"registry_allow_list": ["registry.example.com"]},
        {"image": "evil.net/registry.example.com/x"},
        "registry_allow_list",
    ),
    ({"registry_allow_list": ["docker.io"]}, {"image": "index.docker.io/library/busybox"}, None),
    ({"registry_allow_list": ["127.0.0.1:5000"]}, {"image": "local/busybox"}, None),  # never pulled, see below
    ({}, {"volumes": ["/srv/data:/d"]}, "allowed_host_paths"),
    ({"allowed_host_paths": ["/srv"]}, {"volumes": ["/srv/data:/d"]}, None),
    ({"allowed_host_paths": ["/srv"]}, {"volumes": ["/srvx/data:/d"]}, "allowed_host_paths"),
    ({"allowed_host_paths": ["/srv/data"]}, {"volumes": ["/srv:/d"]}, "allowed_host_paths"),
    ({"allowed_host_paths": ["/"]}, {"volumes": ["/var/run/docker.sock:/s"]}, "exposes /var/run/docker.sock"),
    ({"allowed_host_paths": ["/"]}, {"volumes": ["/run/docker.sock:/s"]}, "exposes /run/docker.sock"),
    ({"allowed_host_paths": ["/"]}, {"volumes": ["/proc:/p"]}, "exposes /proc"),
    ({"allowed_host_paths": ["/"]}, {"volumes": ["/:/host"]}, "exposes"),
    ({"allowed_host_paths": ["/var"]}, {"volumes": ["/var:/v"]}, "exposes /var/run/docker.sock"),
    ({"allowed_host_paths": ["/run/docker.sock"]}, {"volumes": ["/run/docker.sock:/s"]}, None),
    ({}, {"volumes": ["cache:/c"]}, "allow_named_volumes"),
    ({"allow_named_volumes": True}, {"volumes": ["cache:/c"]}, None),
    ({}, {"privileged": True}, "allow_privileged"),
    ({"allow_privileged": True}, {"privileged": True}, None),
    ({}, {"cap_add": ["NET_ADMIN"]}, "allowed_capabilities"),
    ({"allowed_capabilities": ["CAP_NET_ADMIN"]}, {"cap_add": ["net_admin"]}, None),
    ({"allowed_capabilities": ["NET_ADMIN"]}, {"cap_add": ["ALL"]}, "allowed_capabilities"),
    ({}, {"devices": ["/dev/fuse"]}, "allowed_devices"),
    ({"allowed_devices": ["/dev/fuse"]}, {"devices": ["/dev/fuse:/dev/fuse:rwm"]}, None),
    ({}, {"network": "host"}, "allow_host_network"),
    ({}, {"network": "container:other"}, "allow_host_network"),
    ({}, {"network": "flows"}, None),
    ({}, {"pid": "host"}, "allow_host_network"),
    ({}, {"ipc": "host"}, "allow_host_network"),
    ({}, {"ipc": "private"}, None),
    ({"allow_host_network": True}, {"network": "host", "pid": "host"}, None),
    ({}, {"gpus": "all"}, "allow_gpus"),
    ({}, {"ports": ["8080:80"]}, "allow_ports"),
    ({"max_cpus": 2}, {"cpus": 4}, "max_cpus"),
    ({"max_cpus": 2}, {"cpus": 2}, None),
    ({"max_memory": "1g"}, {"memory": "2g"}, "max_memory"),
    ({"max_memory": "1g"}, {"memory": "512m"}, None),
]


@pytest.mark.parametrize(("docker", "run", "rule"), TABLE)
def test_policy_table(docker: dict[str, Any], run: dict[str, Any], rule: str | None) -> None:
    """Each request is allowed, or refused by a PolicyError naming the rule."""
    config, request = _docker(**docker), _run(**run)
    if rule is None:
        check(config, request, lexical_facts(config, request))
    else:
        with pytest.raises(PolicyError, match=rule):
            check(config, request, lexical_facts(config, request))


def test_every_refusal_is_reported_at_once() -> None:
    """A run breaking three rules gets three lines."""
    with pytest.raises(PolicyError) as info:
        check(_docker(), _run(privileged=True, network="host", cap_add=["SYS_ADMIN"]))
    assert len(info.value.lines) == 3


def test_unqualified_image_outside_allow_list_is_never_pulled() -> None:
    """Prefect 1's rule: an image that names no registry runs only if present when Hub is not allowed."""
    docker = _docker(registry_allow_list=["127.0.0.1:5000"])
    assert image_may_be_pulled(docker, "local/busybox") is False
    assert image_may_be_pulled(docker, "127.0.0.1:5000/x") is True
    assert image_may_be_pulled(_docker(), "anything/at-all") is True


_paths = st.sampled_from(["/srv", "/srv/data", "/tmp", "/", "/var", "/var/run/docker.sock", "/proc", "/etc", "/home/u"])
_registries = st.sampled_from(["", "127.0.0.1:5000/", "evil.net/", "registry.example.com/", "docker.io/", "localhost/"])
_runs = st.fixed_dictionaries(
    {"image": st.tuples(_registries, st.sampled_from(["x", "a/b", "registry.example.com/x"])).map("".join)},
    optional={
        "volumes": st.lists(st.one_of(_paths.map(lambda p: f"{p}:/m"), st.just("named:/n")), max_size=3),
        "privileged": st.booleans(),
        "cap_add": st.lists(st.sampled_from(["NET_ADMIN", "SYS_ADMIN", "ALL", "cap_sys_ptrace"]), max_size=2),
        "devices": st.lists(st.sampled_from(["/dev/fuse", "/dev/kvm", "/dev/sda"]), max_size=2),
        "network": st.sampled_from(["host", "bridge", "container:x", "flows"]),
        "pid": st.just("host"),
        "ipc": st.sampled_from(["host", "private"]),
        "cpus": st.floats(0.01, 64),
        "memory": st.integers(6 * 2**20, 2**36),
        "gpus": st.just("all"),
    },
)
_configs = st.fixed_dictionaries(
    {},
    optional={
        "registry_allow_list": st.lists(st.sampled_from(["127.0.0.1:5000", "registry.example.com", "docker.io"])),
        "allowed_host_paths": st.lists(st.sampled_from(["/srv", "/tmp", "/", "/var/run/docker.sock"]), max_size=2),
        "allow_named_volumes": st.booleans(),
        "allow_privileged": st.booleans(),
        "allow_host_network": st.booleans(),
        "allowed_capabilities": st.lists(st.sampled_from(["NET_ADMIN", "SYS_PTRACE"]), max_size=2),
        "allowed_devices": st.lists(st.sampled_from(["/dev/fuse"]), max_size=1),
        "allow_gpus": st.booleans(),
        "max_cpus": st.floats(0.5, 8),
        "max_memory": st.integers(6 * 2**20, 2**34),
    },
)


@settings(max_examples=400, deadline=None)
@given(run=_runs, config=_configs)
def test_no_run_gets_more_than_the_config_allows(run: dict[str, Any], config: dict[str, Any]) -> None:
    """Whatever a run asks, an allowed run holds nothing the config does not grant."""
    from dagent.config import AgentConfig
    from dagent.images import parse_image
    from dagent.spec import build

    docker = _docker(**config)
    request = _run(**run)
    facts = lexical_facts(docker, request)
    if list(violations(docker, request, facts)):
        return
    spec = build(AgentConfig.model_construct(name="a", docker=docker), request, facts=facts)
    assert not spec.privileged or docker.allow_privileged
    assert set(spec.cap_add) <= set(docker.allowed_capabilities)
    assert set(d.split(":")[0] for d in spec.devices) <= set(docker.allowed_devices)
    assert spec.network_mode is None or docker.allow_host_network
    assert spec.pid_mode is None or docker.allow_host_network
    assert spec.ipc_mode != "host" or docker.allow_host_network
    assert spec.gpus is None or docker.allow_gpus
    for mount in spec.mounts:
        if mount.is_bind:
            assert any(
                mount.source == r or mount.source.startswith(r.rstrip("/") + "/") for r in docker.allowed_host_paths
            )
            assert "docker.sock" not in mount.source or "/var/run/docker.sock" in docker.allowed_host_paths
        else:
            assert docker.allow_named_volumes
    ref = parse_image(spec.image)
    allow = docker.registry_allow_list
    assert allow is None or ref.registry in allow or (not ref.explicit_registry and spec.pull == "never")
    if docker.max_cpus is not None:
        assert spec.cpus is not None and spec.cpus <= docker.max_cpus
    if docker.max_memory is not None:
        assert spec.memory is not None and spec.memory <= docker.max_memory
