"""A rendered job configuration → RunRequest and Origin, as Prefect's Docker worker reads each variable."""

from __future__ import annotations

import re
from typing import Any

import pytest

from dagent.config import load_config
from dagent.errors import PolicyError, RunFileError
from dagent.policy import check
from dagent.sources.prefect.jobvars import FlowRunContext, container_origin, docker_label, run_request
from tests.support.helpers import lexical_facts


def _run(**variables: Any) -> Any:
    return run_request("r1", {"image": "busybox:1", **variables})


@pytest.mark.parametrize(
    ("image", "policy", "pull"),
    [("busybox:1", None, None), ("busybox", None, "always"), ("busybox:latest", None, "always"),
     ("busybox:1", "Always", "always"), ("busybox:latest", "Never", "never"), ("busybox", "IfNotPresent", "if-not-present"),
     ("busybox:1", "IfPossible", "if-not-present")],
)  # fmt: skip
def test_image_pull_policy_and_prefects_default_rule(image: str, policy: str | None, pull: str | None) -> None:
    assert _run(image=image, image_pull_policy=policy).pull == pull


def test_the_agents_never_overrides_prefects_default_rule_and_the_cap_refuses() -> None:
    assert run_request("r1", {"image": "busybox"}, prefect_rule=False).pull is None
    config = load_config({"docker": {"allowed_pull_policies": ["if-not-present", "never"]}}, environ={}).config
    run = _run(image_pull_policy="Always")
    with pytest.raises(PolicyError, match="allowed_pull_policies"):
        check(config.docker, run, lexical_facts(config.docker, run))
    with pytest.raises(RunFileError, match="image_pull_policy"):
        _run(image_pull_policy={"x": 1})


def test_env_values_become_text_and_nulls_remove_keys() -> None:
    assert dict(_run(env={"A": "1", "B": None, "C": "x"}).env) == {"A": "1", "C": "x"}


def test_every_network_is_joined_the_first_at_create() -> None:
    run = _run(networks=["a", "b", "c"])
    assert (run.network, run.networks) == ("a", ("b", "c"))


def test_memswap_limit_and_auto_remove() -> None:
    run = _run(mem_limit="64m", memswap_limit="128m", auto_remove=True)
    assert (run.memory, run.memory_swap, run.keep) == (64 * 2**20, 128 * 2**20, "never")
    assert _run(mem_limit="64m", memswap_limit="-1").memory_swap == -1


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [({"shm_size": "32m"}, "shm_size", 32 * 2**20), ({"init": True}, "init", True), ({"user": "1000"}, "user", "1000"),
     ({"working_dir": "/w"}, "working_dir", "/w"), ({"hostname": "h"}, "hostname", "h"),
     ({"extra_hosts": {"db": "127.0.0.1"}}, "extra_hosts", {"db": "127.0.0.1"}),
     ({"extra_hosts": ["db:127.0.0.1"]}, "extra_hosts", {"db": "127.0.0.1"}), ({"dns": ["1.1.1.1"]}, "dns", ("1.1.1.1",)),
     ({"stop_signal": "SIGINT"}, "stop_signal", "SIGINT"), ({"cap_add": ["NET_ADMIN"]}, "cap_add", ("NET_ADMIN",)),
     ({"pid_mode": "host"}, "pid", "host")],
)  # fmt: skip
def test_create_kwargs_become_run_fields(kwargs: dict[str, Any], field: str, value: Any) -> None:
    got = getattr(_run(container_create_kwargs=kwargs), field)
    assert (dict(got) if isinstance(got, dict) else got) == value


def test_create_kwargs_the_worker_ignores_are_ignored_and_the_rest_refused_by_name() -> None:
    run = _run(container_create_kwargs={"privileged": True, "labels": {"x": "1"}, "volumes": ["/:/h"]})
    assert run.privileged is False and run.volumes == ()
    for key in ("security_opt", "sysctls", "runtime", "device_requests", "cgroup_parent"):
        with pytest.raises(RunFileError, match=f"container_create_kwargs.{key}"):
            _run(container_create_kwargs={key: "x"})


def test_origin_env_labels_and_stream_output() -> None:
    context = FlowRunContext(
        {"name": "n", "flow_id": "f", "deployment_id": "d"}, {"name": "dep", "updated": "2026-12-02T02:12:47Z"}, "flow"
    )
    origin = container_origin(
        "r1", context, {"labels": {"example.com/owner": "me"}, "stream_output": False},
        api_url="http://127.0.0.1:4200/api", container_url=None, docker_interface=True, work_pool="p",
        work_pool_id="pid", worker="w", token=None, auth_string=None,
    )  # fmt: skip
    assert origin.base_env["PREFECT_API_URL"] == "http://host.docker.internal:4200/api"
    assert origin.base_env["PREFECT__FLOW_NAME"] == "flow" and origin.base_env["PREFECT__DEPLOYMENT_NAME"] == "dep"
    assert origin.env == {"PREFECT__FLOW_RUN_ID": "r1"} and origin.stream_output is False
    assert origin.run_labels == {"com.example.owner": "me"}
    assert origin.labels["io.prefect.deployment-updated"] == "2026-12-02T02:12:47+00:00"
    assert origin.labels["io.prefect.work-pool-id"] == "pid"
    assert docker_label("plain") == "plain" and docker_label("a.b.c/k") == "c.b.a.k"


def test_registry_credentials_block_is_a_secret_login_for_that_registry_only() -> None:
    from dagent.sources.prefect.jobvars import registry_login
    from dagent.spec import build

    login = registry_login({"username": "ci", "password": "s3cret", "registry_url": "https://127.0.0.1:5000/"}, "o")
    assert login is not None and (login.registry, login.username) == ("127.0.0.1:5000", "ci")
    config = load_config({"name": "a"}, environ={}).config
    from dagent.spec import Origin

    for image, kept in (("127.0.0.1:5000/x:1", True), ("busybox:1", False)):
        spec = build(config, run_request("r1", {"image": image}), Origin("prefect", registry_auth=login))
        assert (spec.registry_login is not None) is kept
        assert "s3cret" not in str(spec.model_dump(mode="json")) and "s3cret" not in str(spec.to_docker_kwargs())
    with pytest.raises(RunFileError, match="registry_credentials"):
        registry_login({"username": "ci"}, "o")


def test_healthcheck_and_tmpfs_from_create_kwargs_and_tmpfs_within_the_memory_limit() -> None:
    run = _run(container_create_kwargs={"healthcheck": {"test": ["CMD", "true"], "interval": 10**9},
                                        "tmpfs": {"/scratch": "size=64m"}})  # fmt: skip
    assert (
        run.healthcheck is not None
        and run.healthcheck.interval == 10**9
        and dict(run.tmpfs) == {"/scratch": "size=64m"}
    )
    config = load_config({"docker": {"max_memory": "128m"}}, environ={}).config
    check(config.docker, run, lexical_facts(config.docker, run))
    for options in ("size=1g", "mode=1777"):
        unbounded = _run(container_create_kwargs={"tmpfs": {"/scratch": options}})
        with pytest.raises(PolicyError, match="tmpfs"):
            check(config.docker, unbounded, lexical_facts(config.docker, unbounded))


def test_only_the_prefect_settings_named_one_by_one_reach_the_container(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect's worker copies every setting it has (credentials included); dagent copies only those named."""
    from dagent.config import load_config
    from dagent.errors import ConfigError
    from dagent.sources.prefect import PrefectSource
    from dagent.sources.prefect.jobvars import FlowRunContext

    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "DEBUG")
    monkeypatch.setenv("PREFECT_API_DATABASE_PASSWORD", "not-for-flows")
    api = {"url": "http://prefect.test/api", "pass_settings": ["PREFECT_LOGGING_LEVEL", "PREFECT_NOT_SET"],
           "send_agent_logs": False, "send_events": False}  # fmt: skip
    source = PrefectSource(load_config({"source": "prefect", "api": api}, environ={}).config)
    try:
        origin = source.prepare.origin("r1", FlowRunContext({}, None, None), {"image": "busybox"})
    finally:
        source.close()
    passed = {k: v.get_secret_value() for k, v in origin.secret_env.items()}
    assert passed["PREFECT_LOGGING_LEVEL"] == "DEBUG" and "PREFECT_NOT_SET" not in passed
    assert "not-for-flows" not in str(passed) and "PREFECT_LOGGING_LEVEL" not in origin.base_env
    with pytest.raises(ConfigError, match="not a Prefect setting"):
        load_config({"source": "prefect", "api": {"pass_settings": ["HOME"]}}, environ={})


def test_every_keyword_docker_py_takes_has_a_decision() -> None:
    """A docker-py release that gains a containers.create keyword fails here until someone decides it."""
    from docker.models.containers import RUN_CREATE_KWARGS, RUN_HOST_CONFIG_KWARGS

    from dagent.sources.prefect.create_kwargs import DECISIONS

    keywords = {*RUN_CREATE_KWARGS, *RUN_HOST_CONFIG_KWARGS, "ports", "volumes", "network", "networking_config"}
    assert sorted(keywords - set(DECISIONS)) == []


_PASSED = {
    "entrypoint": (["/bin/sh", "-c"], "Entrypoint", ["/bin/sh", "-c"]),
    "domainname": ("example.org", "Domainname", "example.org"),
    "dns_search": (["corp.example"], "DnsSearch", ["corp.example"]),
    "dns_opt": (["ndots:2"], "DnsOptions", ["ndots:2"]),
    "tty": (True, "Tty", True),
    "read_only": (True, "ReadonlyRootfs", True),
    "cap_drop": (["net_raw"], "CapDrop", ["NET_RAW"]),
    "mem_reservation": ("32m", "MemoryReservation", 32 << 20),
    "nano_cpus": (500_000_000, "NanoCpus", 500_000_000),
    "pids_limit": (256, "PidsLimit", 256),
    "log_config": ({"type": "json-file", "config": {"max-size": "10m"}}, "LogConfig",
                   {"Type": "json-file", "Config": {"max-size": "10m"}}),
}  # fmt: skip


@pytest.mark.parametrize("key", sorted(_PASSED))
def test_container_create_kwargs_that_grant_nothing_reach_docker(key: str) -> None:
    """Attack-free keywords Prefect's worker passes (issue 28: they were refused, so the run CRASHED)."""
    from dagent.config import load_config
    from dagent.contracts import DaemonFacts
    from dagent.hostview import HostView
    from dagent.spec import build
    from tests.support.helpers import docker_request

    value, field, expected = _PASSED[key]
    run = run_request("r1", {"image": "busybox", "container_create_kwargs": {key: value}})
    config = load_config({"name": "a1"}, environ={}).config
    spec = build(config, run, facts=HostView(config, DaemonFacts(None, None, None)).facts(run))
    body = docker_request(spec.to_docker_kwargs())
    assert {**body, **body["HostConfig"]}[field] == expected


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("restart_policy", {"Name": "always"}, "a run starts once"),
        ("security_opt", ["seccomp=unconfined"], "seccomp"),
        ("mounts", [{"Type": "bind", "Source": "/", "Target": "/h"}], "`volumes` job variable"),
        ("device_requests", [{"Count": -1}], "docker.allow_gpus"),
        ("no_such_keyword", 1, "not a docker-py containers.create argument"),
    ],
)
def test_container_create_kwargs_dagent_cannot_judge_are_refused_by_name(key: str, value: Any, says: str) -> None:
    with pytest.raises(RunFileError, match=rf"container_create_kwargs\.{key}: .*{re.escape(says)}"):
        run_request("r1", {"image": "busybox", "container_create_kwargs": {key: value}})
