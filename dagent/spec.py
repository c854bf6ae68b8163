"""RunRequest + configuration → ContainerSpec: pure, total, and the only home of docker-py's argument names."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, PlainSerializer, SecretStr

from dagent import policy
from dagent.config import AgentConfig, DockerConfig, Mount
from dagent.config.types import normalize_capability
from dagent.images import parse_image
from dagent.runs import PORT_RE, RunRequest

CONTAINER_PREFIX = "dagent-"
LABEL_AGENT = "dagent.agent"
LABEL_RUN_ID = "dagent.run-id"
LABEL_SOURCE = "dagent.source"
LABEL_KEEP = "dagent.keep"
ENV_RUN_ID = "DAGENT_RUN_ID"


@dataclass(frozen=True)
class Origin:
    """What the source of a run adds that the run itself may not change.

    `env` and `labels` win over the run's and the agent's (e.g. PREFECT__FLOW_RUN_ID), and
    `secret_env` carries values that must reach the container but never a log or `plan`.
    `run_labels` are the run's own container labels (Prefect's `labels` job variable): the agent's
    configured labels win over them. `base_env` is what the source sets that the run's own `env` may
    change (Prefect's PREFECT_API_URL and attribution variables), below the run's env.
    """

    source: str = "inbox"
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, SecretStr] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    run_labels: Mapping[str, str] = field(default_factory=dict)
    base_env: Mapping[str, str] = field(default_factory=dict)
    stream_output: bool | None = None  # the run's output in the agent's log; None: show_flow_logs decides
    registry_auth: RegistryLogin | None = None  # Prefect's registry_credentials block: used for this run's pull


@dataclass(frozen=True)
class RegistryLogin:
    """Credentials for one registry that came with a run (never shown: the password is a secret)."""

    registry: str
    username: str
    password: SecretStr


def container_name(run_id: str, agent: str | None = None) -> str:
    """The deterministic container name of a run: `dagent-<id>`, or `dagent-<agent>-<id>` when
    another agent on the same daemon already has a run of that id (identity is in the labels)."""
    return f"{CONTAINER_PREFIX}{agent}-{run_id}" if agent else CONTAINER_PREFIX + run_id


MountStr = Annotated[Mount, PlainSerializer(str, return_type=str)]


class ContainerSpec(BaseModel):
    """Everything needed to create one run's container, decided before touching the daemon."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    name: str
    agent: str
    image: str
    pull: Literal["if-not-present", "always", "never"]
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: dict[str, str] = {}
    secret_env: dict[str, SecretStr] = {}
    labels: dict[str, str] = {}
    mounts: tuple[MountStr, ...] = ()
    network: str | None = None
    network_mode: str | None = None
    extra_hosts: dict[str, str] = {}
    cpus: float | None = None
    memory: int | None = None
    shm_size: int | None = None
    gpus: Literal["all"] | int | None = None
    devices: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    privileged: bool = False
    pid_mode: str | None = None
    ipc_mode: str | None = None
    working_dir: str | None = None
    user: str | None = None
    memory_swap: int | None = None
    networks: tuple[str, ...] = ()
    init: bool | None = None
    hostname: str | None = None
    dns: tuple[str, ...] = ()
    ulimits: tuple[dict[str, Any], ...] = ()
    stop_signal: str | None = None
    healthcheck: dict[str, Any] | None = None
    tmpfs: dict[str, str] = {}
    dns_search: tuple[str, ...] = ()
    dns_opt: tuple[str, ...] = ()
    domainname: str | None = None
    tty: bool | None = None
    read_only: bool | None = None
    cap_drop: tuple[str, ...] = ()
    mem_reservation: int | None = None
    pids_limit: int | None = None
    log_config: dict[str, Any] | None = None
    registry_login: RegistryLogin | None = None
    timeout: float
    stop_grace: float
    keep: Literal["never", "on-failure", "always"]

    def to_docker_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for docker-py's `containers.create` (the one place its names appear)."""
        env = {**self.env, **{k: v.get_secret_value() for k, v in self.secret_env.items()}}
        kwargs: dict[str, Any] = {
            "image": self.image,
            "name": self.name,
            # No `detach`: created as Prefect's worker creates them (Attach* on, which nothing uses once
            # the container is started apart), so `docker inspect` shows the same Config.
            "environment": env,
            "labels": dict(self.labels),
            "privileged": self.privileged,
            # docker-py would copy the proxies of the agent's ~/.docker/config.json into every
            # container's environment; they are the agent's, and a proxy URL can hold a password.
            "use_config_proxy": False,
        }
        optional: dict[str, Any] = {
            "command": list(self.command) if self.command is not None else None,
            "entrypoint": list(self.entrypoint) if self.entrypoint is not None else None,
            "volumes": [str(m) for m in self.mounts] or None,
            "network": self.network,
            "network_mode": self.network_mode,
            "extra_hosts": dict(self.extra_hosts) or None,
            "nano_cpus": round(self.cpus * 1e9) if self.cpus is not None else None,
            "mem_limit": self.memory,
            "shm_size": self.shm_size,
            "device_requests": _device_requests(self.gpus),
            "devices": [_device(d) for d in self.devices] or None,
            "ports": _ports(self.ports) or None,
            "cap_add": list(self.cap_add) or None,
            "pid_mode": self.pid_mode,
            "ipc_mode": self.ipc_mode,
            "working_dir": self.working_dir,
            "user": self.user,
            "memswap_limit": self.memory_swap,
            "init": self.init,
            "hostname": self.hostname,
            "dns": list(self.dns) or None,
            "ulimits": [dict(u) for u in self.ulimits] or None,
            "stop_signal": self.stop_signal,
            "healthcheck": dict(self.healthcheck) if self.healthcheck else None,
            "tmpfs": dict(self.tmpfs) or None,
            "dns_search": list(self.dns_search) or None,
            "dns_opt": list(self.dns_opt) or None,
            "domainname": self.domainname,
            "tty": self.tty,
            "read_only": self.read_only,
            "cap_drop": list(self.cap_drop) or None,
            "mem_reservation": self.mem_reservation,
            "pids_limit": self.pids_limit,
            "log_config": dict(self.log_config) if self.log_config else None,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        return kwargs


def _device_requests(gpus: Literal["all"] | int | None) -> list[dict[str, Any]] | None:
    if gpus is None:
        return None
    return [{"count": -1 if gpus == "all" else gpus, "capabilities": [["gpu"]]}]


def _device(spec: str) -> str:
    parts = spec.split(":")
    host = parts[0]
    target = parts[1] if len(parts) > 1 else host
    perms = parts[2] if len(parts) > 2 else "rwm"
    return f"{host}:{target}:{perms}"


def _ports(specs: tuple[str, ...]) -> dict[str, Any]:
    ports: dict[str, Any] = {}
    for spec in specs:
        match = PORT_RE.fullmatch(spec)
        assert match, spec  # validated when the run was loaded
        key = f"{match['ctr']}/{match['proto'] or 'tcp'}"
        host = int(match["host"]) if match["host"] else None
        ports[key] = (match["ip"].strip("[]"), host) if match["ip"] else host
    return ports


def _network(network: str | None, facts: policy.HostFacts) -> tuple[str | None, str | None]:
    """(network, network_mode) for docker-py; host and container modes in the spelling Docker reads."""
    if network is None:
        return None, None
    kind = policy.network_kind(network, facts)
    if kind == "host":
        return None, "host"
    if kind == "container":
        return None, policy.CONTAINER_MODE + network[len(policy.CONTAINER_MODE) :]
    return network, None


def _resolved_mount(mount: Mount, facts: policy.HostFacts) -> Mount:
    # Judged resolved, so mounted resolved: the daemon gets no link to follow.
    return replace(mount, source=facts.resolved[mount.source]) if mount.is_bind else mount


def _resolved_device(spec: str, facts: policy.HostFacts) -> str:
    parts = spec.split(":")
    host = facts.resolved[parts[0]]
    target = parts[1] if len(parts) > 1 else parts[0]
    return f"{host}:{target}:{policy.device_permissions(spec)}"


def _login(login: RegistryLogin | None, image: str) -> RegistryLogin | None:
    """A run's own registry credentials, kept only for the registry its image is pulled from."""
    return login if login is not None and parse_image(image).registry == login.registry else None


def build(
    config: AgentConfig,
    run: RunRequest,
    origin: Origin | None = None,
    facts: policy.HostFacts | None = None,
    platform: str = sys.platform,
) -> ContainerSpec:
    """The ContainerSpec for a run, or PolicyError naming every rule it breaks.

    `facts` (dagent.hostview) are the host as the daemon sees it; without them no host path or
    device is allowed. The spec carries host paths resolved, as they were judged.
    """
    origin = origin or Origin()
    facts = facts or policy.HostFacts()
    docker = config.docker
    policy.check(docker, run, facts)
    network, network_mode = _network(run.network or docker.network, facts)
    env, secret_env = _environment(docker, run, origin)
    wanted = run.pull or docker.pull
    return ContainerSpec(
        run_id=run.id,
        name=container_name(run.id),
        agent=config.name,
        image=run.image,
        pull=wanted if policy.image_may_be_pulled(docker, run.image) else "never",
        command=run.command,
        entrypoint=run.entrypoint,
        env=env,
        secret_env=secret_env,
        labels=_labels(config, run, origin),
        mounts=(*docker.volumes, *(_resolved_mount(m, facts) for m in run.volumes)),
        network=network,
        network_mode=network_mode,
        extra_hosts=_extra_hosts(docker, run, network_mode, platform),
        devices=tuple(_resolved_device(d, facts) for d in run.devices),
        cap_add=tuple(normalize_capability(c) for c in run.cap_add),
        cap_drop=tuple(normalize_capability(c) for c in run.cap_drop),
        registry_login=_login(origin.registry_auth, run.image),
        stop_grace=docker.stop_grace,
        keep=run.keep or docker.keep_containers,
        **_limits(docker, run),
        **_as_asked(run),
    )


def _environment(docker: DockerConfig, run: RunRequest, origin: Origin) -> tuple[dict[str, str], dict[str, SecretStr]]:
    """The container's plain environment, and its secret one (never logged, never in `plan`)."""
    env = {**docker.env, **origin.base_env, **run.env, ENV_RUN_ID: run.id, **origin.env}
    secret_env = {k: v for k, v in origin.secret_env.items() if k not in origin.env}
    for name in secret_env:
        env.pop(name, None)
    return env, secret_env


def _labels(config: AgentConfig, run: RunRequest, origin: Origin) -> dict[str, str]:
    """The run's own labels under the agent's, and dagent's (which say whose container it is) over all."""
    return {
        **origin.run_labels,
        **config.docker.labels,
        **origin.labels,
        LABEL_AGENT: config.name,
        LABEL_RUN_ID: run.id,
        LABEL_SOURCE: origin.source,
        LABEL_KEEP: run.keep or config.docker.keep_containers,
    }


def _extra_hosts(docker: DockerConfig, run: RunRequest, network_mode: str | None, platform: str) -> dict[str, str]:
    # host.docker.internal exists on Docker Desktop; on Linux it needs the host-gateway mapping.
    # As Prefect's worker: on the host's network too (Docker refuses it only beside container: mode).
    shared = (network_mode or "").startswith(policy.CONTAINER_MODE)
    interface = docker.docker_interface and platform.startswith("linux") and not shared
    return {**({"host.docker.internal": "host-gateway"} if interface else {}), **run.extra_hosts}


def _limits(docker: DockerConfig, run: RunRequest) -> dict[str, Any]:
    """What bounds the run: its own ask, else the agent's maximum, so that no run is unbounded."""
    return dict(
        cpus=run.cpus if run.cpus is not None else docker.max_cpus,
        memory=run.memory if run.memory is not None else docker.max_memory,
        pids_limit=run.pids_limit if run.pids_limit is not None else docker.max_pids,
        timeout=run.timeout if run.timeout is not None else docker.run_timeout,
    )


def _as_asked(run: RunRequest) -> dict[str, Any]:
    """The run's fields that go to the container as they are (the policy has judged them already)."""
    return dict(
        shm_size=run.shm_size,
        gpus=run.gpus,
        ports=run.ports,
        privileged=run.privileged,
        pid_mode=run.pid,
        ipc_mode=run.ipc,
        working_dir=run.working_dir,
        user=run.user,
        memory_swap=run.memory_swap,
        networks=run.networks,
        init=run.init,
        hostname=run.hostname,
        dns=run.dns,
        ulimits=tuple(u.model_dump() for u in run.ulimits),
        stop_signal=run.stop_signal,
        healthcheck=run.healthcheck.model_dump(exclude_none=True) if run.healthcheck else None,
        tmpfs=dict(run.tmpfs),
        dns_search=run.dns_search,
        dns_opt=run.dns_opt,
        domainname=run.domainname,
        tty=run.tty,
        read_only=run.read_only,
        mem_reservation=run.mem_reservation,
        log_config=run.log_config.model_dump() if run.log_config else None,
    )
