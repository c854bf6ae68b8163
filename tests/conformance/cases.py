"""The corpus: deployment and flow-run job variables, each run under Prefect's Docker worker and under dagent.

`{image}`, `{image_latest}`, `{data}`, `{network}` and `{flow_image}` are filled in by the runner (a
local registry's busybox, a host directory, a Docker network of the run's own, the test flows' image),
and `{image_private}`, `{private_registry}`, `{private_password}` name a second registry behind a login.
(A pool's schema takes `registry_credentials` as the block's fields: a `$ref` to a block is valid only as
the pool's default.) Containers run a
command that makes no network call, so no test traffic leaves the host.

Four families: every job variable of Prefect's docker template; every `container_create_kwargs`
keyword dagent takes (one case each); keywords dagent refuses (the run CRASHED, naming the keyword);
and flow runs that a real flow engine ends, whose events, flow-run labels, `infrastructure_pid` and
state names are compared as well as their containers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Family = Literal["job variables", "keywords", "refused", "flow runs"]
FAMILIES: tuple[Family, ...] = ("job variables", "keywords", "refused", "flow runs")


@dataclass(frozen=True)
class Case:
    name: str
    deployment: dict[str, Any] = field(default_factory=dict)
    flow_run: dict[str, Any] = field(default_factory=dict)
    family: Family = "job variables"
    short: bool = False  # in the short mode run by .ci/run: one case of each family
    entrypoint: str | None = None  # "flow runs": the flow in the flow image's /flows/flows.py
    refused: str | None = None  # "refused": the keyword dagent's CRASHED message names
    template: Literal["customised", "pinned"] = "customised"  # the pools' template (run.TEMPLATES)


EXIT_0 = "sh -c 'exit 0'"


def _kw(name: str, kwargs: dict[str, Any], short: bool = False) -> Case:
    return Case(f"create kwargs {name}", {"container_create_kwargs": kwargs}, family="keywords", short=short)


def _refused(keyword: str, value: Any, short: bool = False) -> Case:
    return Case(
        f"refused {keyword}",
        {"container_create_kwargs": {keyword: value}},
        family="refused",
        refused=keyword,
        short=short,
    )


def _flow(name: str, entrypoint: str, short: bool = False, **job_variables: Any) -> Case:
    variables = {
        "image": "{flow_image}",
        "network_mode": "host",
        "command": "prefect flow-run execute",
        **job_variables,
    }
    return Case(name, variables, family="flow runs", entrypoint=entrypoint, short=short)


CASES: list[Case] = [
    # --- every job variable of Prefect's docker template ---------------------------------------
    Case("defaults only", {}, short=True),
    Case("command", {"command": "sh -c 'echo hi; exit 0'"}),
    Case("command exit 3", {"command": "sh -c 'exit 3'"}),
    Case("env", {"env": {"A": "1", "B": "two"}}),
    Case("env null removes a key", {"env": {"A": "1", "FROM_POOL": None}}),
    Case("env flow-run override", {"env": {"A": "1", "B": "2"}}, {"env": {"B": "3", "C": "4"}}),
    Case("env overrides the pool default", {"env": {"FROM_POOL": "changed"}}),
    # `{{ ... }}` doubled: the runner fills {image} and the like with str.format.
    Case(
        "env placeholder of the worker's environment",
        {"env": {"FROM_AGENT_ENV": "{{{{ $CONFORMANCE_AGENT_VAR }}}}"}},
    ),
    Case(
        "env placeholder of a Prefect variable",
        {"env": {"FROM_VARIABLE": "{{{{ prefect.variables.conformance_var }}}}"}},
    ),
    Case("labels", {"labels": {"team": "etl", "com.example/owner": "me"}}),
    Case("labels flow-run override", {"labels": {"a": "1"}}, {"labels": {"b": "2"}}),
    Case("volumes bind", {"volumes": ["{data}:/data:ro"]}),
    Case("volumes named", {"volumes": ["conf-vol:/v"]}),
    Case("network_mode host", {"network_mode": "host"}),
    Case("network_mode none", {"network_mode": "none"}),
    Case("networks one", {"networks": ["{network}"]}),
    Case("networks two", {"networks": ["{network}", "bridge"]}),
    Case("networks flow-run override", {}, {"networks": ["{network}"]}),
    Case("mem_limit", {"mem_limit": "64m"}),
    # Not 128m: Docker makes the swap limit twice the memory when none is given, which would hide it.
    Case("mem_limit and memswap_limit", {"mem_limit": "64m", "memswap_limit": "96m"}),
    Case("memswap_limit -1", {"mem_limit": "64m", "memswap_limit": "-1"}),
    Case("privileged", {"privileged": True}),
    # Long enough to be seen before Docker's AutoRemove (the worker's) takes the container away.
    Case("auto_remove", {"auto_remove": True, "command": "sh -c 'sleep 2'"}),
    Case("auto_remove pinned off by the pool", {"auto_remove": True}, template="pinned"),
    Case("stream_output false", {"stream_output": False}),
    Case("image_pull_policy Always", {"image_pull_policy": "Always"}),
    Case("image_pull_policy Never", {"image_pull_policy": "Never"}),
    Case("image_pull_policy IfNotPresent", {"image_pull_policy": "IfNotPresent"}),
    Case("image latest, no policy", {"image": "{image_latest}"}),
    Case("image flow-run override", {}, {"image": "{image_latest}"}),
    Case("name", {"name": "conformance-named"}),
    Case(
        "registry_credentials",
        {
            "image": "{image_private}",
            "image_pull_policy": "Always",
            "registry_credentials": {
                "username": "conformance",
                "password": "{private_password}",
                "registry_url": "{private_registry}",
            },
        },
    ),
    Case("container_create_kwargs with a job variable's name", {"container_create_kwargs": {"mem_limit": "32m"}}),
    Case("null values", {"command": None, "mem_limit": None, "network_mode": None}),
    Case("unknown variable", {"not_a_variable": "x"}),
    Case("flow-run overrides image and command", {"command": EXIT_0}, {"command": "sh -c 'exit 0 # run'"}),
    # --- every container_create_kwargs keyword dagent takes, one case each -------------------------
    _kw("entrypoint", {"entrypoint": ["env"]}),
    _kw("working_dir", {"working_dir": "/tmp"}),
    _kw("user", {"user": "1000:1000"}),
    _kw("hostname", {"hostname": "conf"}),
    _kw("domainname", {"domainname": "example.org"}),
    _kw("extra_hosts", {"extra_hosts": {"db.local": "127.0.0.1"}}),
    _kw("dns", {"dns": ["127.0.0.1"]}),
    _kw("dns_search", {"dns_search": ["corp.example"]}),
    _kw("dns_opt", {"dns_opt": ["ndots:2"]}),
    _kw("init", {"init": True}),
    _kw("tty", {"tty": True}),
    _kw("read_only", {"read_only": True}, short=True),
    _kw("cap_drop", {"cap_drop": ["NET_RAW"]}),
    _kw("stop_signal", {"stop_signal": "SIGINT"}),
    _kw("shm_size", {"shm_size": "32m"}),
    _kw("mem_reservation", {"mem_reservation": "32m"}),
    _kw("nano_cpus", {"nano_cpus": 500_000_000}),
    _kw("pids_limit", {"pids_limit": 256}),
    _kw("ulimits", {"ulimits": [{"name": "nofile", "soft": 1024, "hard": 2048}]}),
    _kw("cap_add", {"cap_add": ["NET_ADMIN"]}),
    _kw("devices", {"devices": ["/dev/null:/dev/conf-null:rwm"]}),
    _kw("pid_mode", {"pid_mode": "host"}),
    _kw("ipc_mode", {"ipc_mode": "shareable"}),
    _kw("healthcheck", {"healthcheck": {"test": ["CMD", "true"], "interval": 10**9}}),
    _kw("tmpfs", {"tmpfs": {"/scratch": "size=16m"}}),
    _kw("log_config", {"log_config": {"type": "json-file", "config": {"max-size": "10m"}}}),
    _kw("labels", {"labels": {"extra": "x"}}),
    _kw("several at once", {"dns": ["127.0.0.1"], "stop_signal": "SIGINT", "read_only": True, "init": True}),
    # --- keywords dagent refuses (the run CRASHED naming the keyword; the worker passes them) -------
    _refused("restart_policy", {"Name": "on-failure", "MaximumRetryCount": 2}, short=True),
    _refused("mounts", [{"Target": "/m", "Source": "conf-vol", "Type": "volume"}]),
    _refused("security_opt", ["seccomp=unconfined"]),
    _refused("sysctls", {"net.ipv4.ip_forward": "1"}),
    _refused("not_a_docker_keyword", 1),
    # --- flow runs a real flow engine ends ------------------------------------------------------
    _flow("flow completes", "flows.py:hello", short=True),
    _flow("flow fails", "flows.py:boom"),
    _flow("flow with env and labels", "flows.py:hello", env={"A": "1"}, labels={"team": "etl"}),
]
