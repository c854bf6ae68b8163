"""The corpus: deployment and flow-run job variables, each run under Prefect's Docker worker and under dagent.

`{image}`, `{image_latest}`, `{data}` and `{network}` are filled in by the runner (a local registry's
busybox, a host directory, a Docker network of the run's own). Containers run a command that makes no
network call, so no test traffic leaves the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Case:
    name: str
    deployment: dict[str, Any] = field(default_factory=dict)
    flow_run: dict[str, Any] = field(default_factory=dict)
    short: bool = False  # in the short mode run by .ci/run


EXIT_0 = "sh -c 'exit 0'"

CASES: list[Case] = [
    Case("defaults only", {}, short=True),
    Case("command", {"command": "sh -c 'echo hi; exit 0'"}, short=True),
    Case("command exit 3", {"command": "sh -c 'exit 3'"}),
    Case("env", {"env": {"A": "1", "B": "two"}}, short=True),
    Case("env null removes a key", {"env": {"A": "1", "FROM_POOL": None}}),
    Case("env flow-run override", {"env": {"A": "1", "B": "2"}}, {"env": {"B": "3", "C": "4"}}),
    Case("env overrides the pool default", {"env": {"FROM_POOL": "changed"}}),
    # `{{ ... }}` doubled: the runner fills {image} and the like with str.format.
    Case(
        "env placeholder of the worker's environment",
        {"env": {"FROM_AGENT_ENV": "{{{{ $CONFORMANCE_AGENT_VAR }}}}"}},
        short=True,
    ),
    Case(
        "env placeholder of a Prefect variable",
        {"env": {"FROM_VARIABLE": "{{{{ prefect.variables.conformance_var }}}}"}},
    ),
    Case("labels", {"labels": {"team": "etl", "com.example/owner": "me"}}, short=True),
    Case("labels flow-run override", {"labels": {"a": "1"}}, {"labels": {"b": "2"}}),
    Case("volumes bind", {"volumes": ["{data}:/data:ro"]}),
    Case("volumes named", {"volumes": ["conf-vol:/v"]}),
    Case("network_mode host", {"network_mode": "host"}, short=True),
    Case("network_mode none", {"network_mode": "none"}),
    Case("networks one", {"networks": ["{network}"]}),
    Case("networks two", {"networks": ["{network}", "bridge"]}),
    Case("networks flow-run override", {}, {"networks": ["{network}"]}),
    Case("mem_limit", {"mem_limit": "64m"}, short=True),
    Case("mem_limit and memswap_limit", {"mem_limit": "64m", "memswap_limit": "128m"}),
    Case("memswap_limit -1", {"mem_limit": "64m", "memswap_limit": "-1"}),
    Case("privileged", {"privileged": True}),
    Case("auto_remove", {"auto_remove": True}),
    Case("stream_output false", {"stream_output": False}),
    Case("image_pull_policy Always", {"image_pull_policy": "Always"}, short=True),
    Case("image_pull_policy Never", {"image_pull_policy": "Never"}),
    Case("image_pull_policy IfNotPresent", {"image_pull_policy": "IfNotPresent"}),
    Case("image latest, no policy", {"image": "{image_latest}"}),
    Case("name", {"name": "conformance-named"}),
    Case("create kwargs shm_size", {"container_create_kwargs": {"shm_size": "32m"}}),
    Case("create kwargs init and user", {"container_create_kwargs": {"init": True, "user": "1000:1000"}}),
    Case(
        "create kwargs working_dir and hostname",
        {"container_create_kwargs": {"working_dir": "/tmp", "hostname": "conf"}},
    ),
    Case("create kwargs extra_hosts", {"container_create_kwargs": {"extra_hosts": {"db.local": "127.0.0.1"}}}),
    Case(
        "create kwargs ulimits",
        {"container_create_kwargs": {"ulimits": [{"name": "nofile", "soft": 1024, "hard": 2048}]}},
    ),
    Case("create kwargs labels", {"container_create_kwargs": {"labels": {"extra": "x"}}}),
    Case("create kwargs cap_add", {"container_create_kwargs": {"cap_add": ["NET_ADMIN"]}}),
    Case(
        "create kwargs healthcheck",
        {"container_create_kwargs": {"healthcheck": {"test": ["CMD", "true"], "interval": 10**9}}},
    ),
    Case("create kwargs tmpfs", {"container_create_kwargs": {"tmpfs": {"/scratch": "size=16m"}}}, short=True),
    # container_create_kwargs the worker passes that grant nothing, or that dagent judges (issue 28).
    Case(
        "create kwargs entrypoint domainname tty",
        {"container_create_kwargs": {"entrypoint": ["env"], "domainname": "example.org", "tty": True}},
    ),
    Case(
        "create kwargs dns_search dns_opt read_only cap_drop",
        {
            "container_create_kwargs": {
                "dns_search": ["corp.example"],
                "dns_opt": ["ndots:2"],
                "read_only": True,
                "cap_drop": ["NET_RAW"],
            }
        },
        short=True,
    ),
    Case(
        "create kwargs mem_reservation nano_cpus pids_limit",
        {"container_create_kwargs": {"mem_reservation": "32m", "nano_cpus": 500_000_000, "pids_limit": 256}},
    ),
    Case(
        "create kwargs log_config json-file",
        {"container_create_kwargs": {"log_config": {"type": "json-file", "config": {"max-size": "10m"}}}},
    ),
    Case(
        "create kwargs dns and stop_signal",
        {"container_create_kwargs": {"dns": ["127.0.0.1"], "stop_signal": "SIGINT"}},
    ),
    Case("null values", {"command": None, "mem_limit": None, "network_mode": None}),
    Case("unknown variable", {"not_a_variable": "x"}),
    Case("flow-run overrides image and command", {"command": EXIT_0}, {"command": "sh -c 'exit 0 # run'"}),
]
