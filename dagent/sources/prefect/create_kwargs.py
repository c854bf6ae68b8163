"""A decision for every docker-py `containers.create` keyword a pool's `container_create_kwargs` may hold (pure).

Prefect's worker passes `container_create_kwargs` to Docker as they are. dagent takes each keyword
one of three ways: the worker's own job variable of that name wins (the worker drops the keyword
too); it becomes a run field, which the policy judges as it judges the run's own (a keyword that
grants nothing is simply passed); or it is refused, naming the keyword and what would allow it.
docs/prefect.md carries the table (`python -m dagent.docs`); a test fails when docker-py gains a
keyword that is not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["worker", "field", "refused"]


@dataclass(frozen=True)
class Decision:
    """What becomes of one keyword: `field` names the run field it becomes; `why` says why (or why not)."""

    kind: Kind
    why: str
    field: str | None = None


def _worker(why: str = "the job variable of that name wins, as in Prefect's worker") -> Decision:
    return Decision("worker", why)


def _field(field: str, why: str) -> Decision:
    return Decision("field", why, field)


def _refused(why: str) -> Decision:
    return Decision("refused", why)


_NOT_JUDGED = "dagent cannot judge what it would grant"

DECISIONS: dict[str, Decision] = {
    # The worker's own job variables (and docker-py's own plumbing).
    "command": _worker(),
    "environment": _worker("the `env` job variable wins"),
    "env": _worker(),
    "labels": _worker(),
    "name": _worker("dagent names the container dagent-<run id>"),
    "image": _worker(),
    "registry_credentials": _worker(),
    "image_pull_policy": _worker(),
    "networks": _worker(),
    "network_mode": _worker(),
    "network": _worker("the `networks` and `network_mode` job variables win"),
    "auto_remove": _worker(),
    "volumes": _worker(),
    "stream_output": _worker(),
    "mem_limit": _worker(),
    "memswap_limit": _worker(),
    "privileged": _worker(),
    "container_create_kwargs": _worker(),
    "detach": _worker("dagent's own: a container is created, then started apart, as in Prefect's worker"),
    "version": _worker("dagent's own: the daemon's API version"),
    "use_config_proxy": _worker("dagent's own: the agent's proxies are never copied in"),
    # Passed as they are: they grant nothing.
    "entrypoint": _field("entrypoint", "grants nothing"),
    "working_dir": _field("working_dir", "grants nothing"),
    "user": _field("user", "grants nothing beyond the image's users"),
    "hostname": _field("hostname", "grants nothing"),
    "domainname": _field("domainname", "grants nothing"),
    "extra_hosts": _field("extra_hosts", "grants nothing"),
    "dns": _field("dns", "grants nothing"),
    "dns_search": _field("dns_search", "grants nothing"),
    "dns_opt": _field("dns_opt", "grants nothing"),
    "init": _field("init", "grants nothing"),
    "tty": _field("tty", "grants nothing"),
    "read_only": _field("read_only", "takes away, grants nothing"),
    "cap_drop": _field("cap_drop", "takes away, grants nothing"),
    "stop_signal": _field("stop_signal", "grants nothing"),
    # Judged by the policy, as the run's own fields are.
    "shm_size": _field("shm_size", "within the run's memory limit"),
    "mem_reservation": _field("mem_reservation", "within the run's memory limit"),
    "nano_cpus": _field("cpus", "as cpus: within docker.max_cpus"),
    "pids_limit": _field("pids_limit", "within docker.max_pids"),
    "ulimits": _field("ulimits", "rtprio, rttime, nice and memlock need docker.allow_privileged"),
    "cap_add": _field("cap_add", "each in docker.allowed_capabilities"),
    "devices": _field("devices", "each in docker.allowed_devices"),
    "pid_mode": _field("pid", "host needs docker.allow_host_network"),
    "ipc_mode": _field("ipc", "host needs docker.allow_host_network"),
    "healthcheck": _field("healthcheck", "an interval of at least 1 s"),
    "tmpfs": _field("tmpfs", "with docker.max_memory, a size within it"),
    "log_config": _field("log_config", "json-file and local, else docker.allowed_log_drivers"),
    # Refused: each reaches the host or a bound dagent does not judge yet, or breaks what dagent keeps.
    "restart_policy": _refused("Docker would start the run's container again by itself: a run starts once"),
    "mounts": _refused("use the `volumes` job variable, which the policy judges"),
    "volumes_from": _refused("another container's mounts: " + _NOT_JUDGED),
    "volume_driver": _refused("use named volumes, judged with docker.allowed_volume_drivers"),
    "links": _refused(_NOT_JUDGED),
    "ports": _refused("use the `ports` job variable (docker.allow_ports)"),
    "publish_all_ports": _refused("use the `ports` job variable (docker.allow_ports)"),
    "device_cgroup_rules": _refused("grants devices: use `devices` (docker.allowed_devices)"),
    "device_requests": _refused("use the `gpus` job variable (docker.allow_gpus)"),
    "security_opt": _refused("can turn off seccomp, AppArmor or no-new-privileges: " + _NOT_JUDGED),
    "sysctls": _refused(_NOT_JUDGED),
    "group_add": _refused("can add the host's groups (docker, disk): " + _NOT_JUDGED),
    "oom_score_adj": _refused("can make other processes die first: " + _NOT_JUDGED),
    "oom_kill_disable": _refused("a run past its memory would stall the host: " + _NOT_JUDGED),
    "cpu_rt_period": _refused("real-time scheduling is not bound by cpus: " + _NOT_JUDGED),
    "cpu_rt_runtime": _refused("real-time scheduling is not bound by cpus: " + _NOT_JUDGED),
    "networking_config": _refused("use the `networks` job variable (docker.allowed_networks)"),
    "userns_mode": _refused("host turns off user namespaces: " + _NOT_JUDGED),
    "uts_mode": _refused("host shares the host's names: " + _NOT_JUDGED),
    "cgroupns": _refused("host shares the host's cgroups: " + _NOT_JUDGED),
    "runtime": _refused("another runtime changes the isolation: " + _NOT_JUDGED),
    "cgroup_parent": _refused("moves the run out of its limits: " + _NOT_JUDGED),
    "isolation": _refused(_NOT_JUDGED),
    "init_path": _refused("a host path: " + _NOT_JUDGED),
    "lxc_conf": _refused(_NOT_JUDGED),
    "storage_opt": _refused(_NOT_JUDGED),
    "kernel_memory": _refused("deprecated by Docker: " + _NOT_JUDGED),
    "mem_swappiness": _refused("not judged yet"),
    "cpu_count": _refused("use `cpus`, judged with docker.max_cpus"),
    "cpu_percent": _refused("use `cpus`, judged with docker.max_cpus"),
    "cpu_period": _refused("use `cpus`, judged with docker.max_cpus"),
    "cpu_quota": _refused("use `cpus`, judged with docker.max_cpus"),
    "cpu_shares": _refused("not judged yet"),
    "cpuset_cpus": _refused("not judged yet"),
    "cpuset_mems": _refused("not judged yet"),
    "blkio_weight": _refused("not judged yet"),
    "blkio_weight_device": _refused("a host device: " + _NOT_JUDGED),
    "device_read_bps": _refused("a host device: " + _NOT_JUDGED),
    "device_read_iops": _refused("a host device: " + _NOT_JUDGED),
    "device_write_bps": _refused("a host device: " + _NOT_JUDGED),
    "device_write_iops": _refused("a host device: " + _NOT_JUDGED),
    "mac_address": _refused(_NOT_JUDGED),
    "network_disabled": _refused("use `network_mode = none`"),
    "platform": _refused("the image decides"),
    "stdin_open": _refused("a run has no input to read"),
}


def markdown() -> str:
    """The table of every keyword and its decision, for docs/prefect.md."""
    kinds = {"worker": "the job variable wins", "field": "taken", "refused": "refused"}
    rows = [
        f"| `{key}` | {kinds[d.kind]}{f' (as `{d.field}`)' if d.field and d.field != key else ''} | {d.why} |"
        for key, d in sorted(DECISIONS.items(), key=lambda item: (list(kinds).index(item[1].kind), item[0]))
    ]
    return "\n".join(["| keyword | decision | why |", "|---|---|---|", *rows])
