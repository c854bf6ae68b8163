"""What a run may ask for, judged against the agent's docker settings and the host's facts (pure: no I/O).

Host paths are judged as the daemon will use them: `HostFacts` (gathered by dagent.hostview) holds
each path resolved in full, or why it could not be; anything not resolved is refused.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from dagent.config import DockerConfig
from dagent.config.types import normalize_capability
from dagent.errors import PolicyError
from dagent.images import parse_image
from dagent.runs import RunRequest
from dagent.units import parse_bytes

# Host paths that give a container the host itself. Mounting one, one inside one, or a parent of
# one needs an allowed root at or inside it, and then grants that root and what is under it only:
# allowing "/" does not grant them. dagent.hostview adds the daemon's own sockets and data root
# and the agent's own files.
SENSITIVE_PATHS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/etc",
    "/root",
    # The host's system and its services: write access there is the host's root.
    "/run",
    "/var/run",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/home",
    "/var/spool",
)
# Resource limits that raise a process's priority (real-time scheduling is not bound by the CPU
# quota) or pin memory: privileges, not limits.
PRIVILEGED_ULIMITS = frozenset({"rtprio", "rttime", "nice", "memlock"})
# Network modes Docker reads itself rather than as a network's name. Docker matches them
# case-sensitively today; judging every spelling as the mode is the side that cannot be wrong.
HOST_NETWORKS = ("host",)
CONTAINER_MODE = "container:"
ISOLATED_NETWORKS = ("none",)
# Docker's network drivers that are no network of their own: the host's, or none.
HOST_DRIVERS = ("host",)
DEVICE_PERMISSIONS = "rwm"
# Log drivers that keep a container's output on this host, where `docker logs` and dagent read it.
LOG_DRIVERS = ("json-file", "local")


# The local driver's options dagent understands: a bind of a host directory, judged as that bind.
# Any other option (another filesystem type, a device, NFS) could reach the host and is refused.
LOCAL_DRIVER = "local"
BIND_FLAGS = frozenset({"bind", "rbind"})


@dataclass(frozen=True)
class VolumeFacts:
    """A named volume as the daemon holds it: its driver, the options it was created with, and who uses it."""

    driver: str
    options: Mapping[str, str] = field(default_factory=dict)
    others: tuple[str, ...] = ()
    """Containers (any state) that use it and are not this agent's: another service's data."""


def volume_bind(volume: VolumeFacts) -> str | None:
    """The host directory a local volume binds (`type=none,o=bind,device=DIR`); None when it is no bind."""
    if volume.driver != LOCAL_DRIVER:
        return None
    flags = {flag.strip().lower() for flag in str(volume.options.get("o", "")).split(",")}
    kind = str(volume.options.get("type", "none")).strip().lower()
    if set(volume.options) <= {"type", "o", "device"} and flags & BIND_FLAGS and kind in ("", "none"):
        device = volume.options.get("device")
        return str(device) if device else None
    return None


def _volume(name: str, config: DockerConfig, facts: HostFacts) -> str | None:
    """Why a named volume is refused, or None: allow-listed, never deny-listed by one spelling."""
    listed = config.allowed_volumes
    if listed is not None and not any(fnmatch.fnmatchcase(name, pattern) for pattern in listed):
        return f"docker.allowed_volumes: volume {name!r} is not in {listed}"
    if name not in facts.volumes:
        return f"docker.allow_named_volumes: volume {name!r} was not looked up"
    volume = facts.volumes[name]
    if volume is None:
        return None  # it does not exist yet: Docker makes an empty one with the local driver
    if volume.others and listed is None:
        # Another service's data (a database's volume, say): only an explicit allow-list lends it.
        return (
            f"docker.allowed_volumes: volume {name!r} is used by containers that are not this agent's "
            f"({', '.join(volume.others[:3])}); list it in docker.allowed_volumes to lend it to runs"
        )
    if volume.driver != LOCAL_DRIVER:
        if volume.driver in config.allowed_volume_drivers:
            return None
        return f"docker.allowed_volume_drivers: volume {name!r} uses the driver {volume.driver!r}"
    if not volume.options:
        return None
    device = volume_bind(volume)
    if device is None:
        shown = ",".join(f"{k}={v}" for k, v in sorted(volume.options.items()))
        return (
            f"docker.allow_named_volumes: volume {name!r} has local-driver options dagent does not judge ({shown}); "
            "only plain volumes and binds of allowed host paths are allowed"
        )
    problem = _bind(device, facts)
    return f"{problem} (volume {name!r} binds it)" if problem else None


@dataclass(frozen=True)
class HostFacts:
    """The host's filesystem and networks as the daemon will see them when the run starts."""

    resolved: Mapping[str, str] = field(default_factory=dict)
    """Each host path the run names (and each allowed device) → its real path, every component resolved."""
    unresolved: Mapping[str, str] = field(default_factory=dict)
    """Each host path that could not be resolved → why."""
    allowed_roots: tuple[str, ...] = ()
    """docker.allowed_host_paths, resolved (a root that cannot be resolved grants nothing)."""
    protected: tuple[str, ...] = ()
    """Sensitive paths, the daemon's sockets and data root, the agent's own files; resolved."""
    view_error: str | None = "host paths were not looked up"
    """Why the agent cannot vouch it sees the daemon's filesystem; None when it checked that it does."""
    network_drivers: Mapping[str, str] = field(default_factory=dict)
    """The run's network → the driver the daemon resolves it to (a name, an id or an id prefix)."""
    volumes: Mapping[str, VolumeFacts | None] = field(default_factory=dict)
    """Each named volume the run mounts → what the daemon holds for it (None: it does not exist yet)."""
    image_names: tuple[str, ...] | None = None
    """The daemon's names for the run's image when it resolved the image by ID; None when by name or absent."""


def _under(path: str, root: str) -> bool:
    root = posixpath.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def device_host(spec: str) -> str:
    """The host path of a device spec HOST[:CONTAINER[:PERMISSIONS]]."""
    return spec.split(":")[0]


def device_permissions(spec: str) -> str:
    """The permissions of a device spec; Docker's default is rwm."""
    parts = spec.split(":")
    return parts[2] if len(parts) > 2 else DEVICE_PERMISSIONS


def run_host_paths(run: RunRequest) -> tuple[str, ...]:
    """Every host path a run names: bind sources and devices."""
    return (*(m.source for m in run.volumes if m.is_bind), *(device_host(d) for d in run.devices))


def network_kind(network: str, facts: HostFacts) -> str:
    """`host`, `container`, `none` or `network`, as Docker would read the name (any spelling)."""
    lowered = network.lower()
    if lowered in HOST_NETWORKS or facts.network_drivers.get(network) in HOST_DRIVERS:
        return "host"
    if lowered.startswith(CONTAINER_MODE):
        return "container"
    if lowered in ISOLATED_NETWORKS:
        return "none"
    return "network"


def allowed_networks(config: DockerConfig) -> tuple[str, ...] | None:
    """The networks a run may pick; None is any (no docker.network and no allow-list)."""
    if config.allowed_networks is not None:
        return tuple(config.allowed_networks)
    return (config.network,) if config.network else None


def _allowed_name(name: str, allow: list[str]) -> bool:
    """A name the allow-list lets run: from a listed registry, or a Docker Hub name (present, so not pulled)."""
    try:
        ref = parse_image(name)
    except ValueError:
        return False
    return ref.registry in allow or not ref.explicit_registry


def _image(config: DockerConfig, run: RunRequest, facts: HostFacts) -> Iterator[str]:
    allow = config.registry_allow_list
    if allow is None:
        return
    ref = parse_image(run.image)
    if ref.explicit_registry and ref.registry not in allow:
        yield f"docker.registry_allow_list: image {run.image!r} is from {ref.registry}, not in {allow}"
    elif facts.image_names is not None and not any(_allowed_name(n, allow) for n in facts.image_names):
        # Docker took the reference as an image ID: judge the image by the names it holds instead.
        names = list(facts.image_names) if facts.image_names else "none"
        yield (
            f"docker.registry_allow_list: image {run.image!r} is named by ID, and none of its names "
            f"({names}) is allowed by {allow}"
        )


def image_may_be_pulled(config: DockerConfig, image: str) -> bool:
    """False when the image's registry is outside the allow-list.

    An image that names no registry (so Docker Hub) outside the allow-list may still run if it is
    already present (Prefect 1's rule); an image that names a registry outside it is refused.
    """
    ref = parse_image(image)
    allow = config.registry_allow_list
    return allow is None or ref.registry in allow


def _host_path(what: str, path: str, facts: HostFacts) -> tuple[str | None, str | None]:
    """(real path, None), or (None, why it cannot be judged)."""
    if facts.view_error is not None:
        return None, f"{what} {path!r}: {facts.view_error}"
    real = facts.resolved.get(path)
    if real is None:
        reason = facts.unresolved.get(path, "not looked up")
        return None, f"{what} {path!r} cannot be resolved in full ({reason})"
    return real, None


def _bind(path: str, facts: HostFacts) -> str | None:
    """Why a bind source is refused, or None."""
    rule = "docker.allowed_host_paths"
    real, problem = _host_path("host path", path, facts)
    if real is None:
        return f"{rule}: {problem}"
    roots = facts.allowed_roots
    if not any(_under(real, root) for root in roots):
        shown = path if real == path else f"{path} (really {real})"
        return f"{rule}: host path {shown!r} is not under {list(roots)}"
    for sensitive in (*SENSITIVE_PATHS, *facts.protected):
        touches = _under(real, sensitive) or _under(sensitive, real)
        # An allowed root at or inside a sensitive path grants that root and what is under it.
        granted = any(_under(root, sensitive) and _under(real, root) for root in roots)
        if touches and not granted:
            return f"{rule}: host path {path!r} exposes {sensitive}"
    return None


def _device(spec: str, config: DockerConfig, facts: HostFacts) -> str | None:
    """Why a device is refused, or None."""
    rule = "docker.allowed_devices"
    real, problem = _host_path("device", device_host(spec), facts)
    if real is None:
        return f"{rule}: {problem}"
    wanted = set(device_permissions(spec))
    for allowed in config.allowed_devices:
        if facts.resolved.get(device_host(allowed)) == real and wanted <= set(device_permissions(allowed)):
            return None
    return f"{rule}: device {spec!r} (not allowed with these permissions)"


def _network(config: DockerConfig, run: RunRequest, facts: HostFacts) -> Iterator[str]:
    allowed = allowed_networks(config)
    if run.network is not None:
        kind = network_kind(run.network, facts)
        if kind in ("host", "container") and not config.allow_host_network:
            yield f"docker.allow_host_network: network = {run.network!r}"
        elif kind == "network" and allowed is not None and run.network not in allowed:
            yield f"docker.allowed_networks: network = {run.network!r} is not in {list(allowed)}"
    for extra in run.networks:
        # Joined after create: only ordinary networks can be, and each is judged as `network` is.
        if network_kind(extra, facts) != "network":
            yield f"docker.allowed_networks: networks = {extra!r} (only ordinary networks can be joined too)"
        elif allowed is not None and extra not in allowed:
            yield f"docker.allowed_networks: networks = {extra!r} is not in {list(allowed)}"


def violations(config: DockerConfig, run: RunRequest, facts: HostFacts | None = None) -> Iterator[str]:
    """Each thing the run asks for that the config does not allow, as `rule: value`."""
    facts = facts or HostFacts()
    yield from _image(config, run, facts)
    yield from _storage(config, run, facts)
    yield from _privileges(config, run, facts)
    yield from _network(config, run, facts)
    yield from _resources(config, run)


def _storage(config: DockerConfig, run: RunRequest, facts: HostFacts) -> Iterator[str]:
    """Volumes: a named one where named volumes are on, a bind mount only of an allowed host path."""
    for mount in run.volumes:
        if not mount.is_bind:
            if not config.allow_named_volumes:
                yield f"docker.allow_named_volumes: volume {mount.source!r} (named volumes are off)"
            elif problem := _volume(mount.source, config, facts):
                yield problem
            continue
        problem = _bind(mount.source, facts)
        if problem:
            yield problem


def _privileges(config: DockerConfig, run: RunRequest, facts: HostFacts) -> Iterator[str]:
    """What reaches past the container: privileges, capabilities, devices, the host's namespaces,
    GPUs, published ports, the pull policy and the log driver."""
    if run.privileged and not config.allow_privileged:
        yield "docker.allow_privileged: privileged = true"
    allowed_caps = set(config.allowed_capabilities)
    for cap in run.cap_add:
        if normalize_capability(cap) not in allowed_caps:
            yield f"docker.allowed_capabilities: cap_add {cap!r}"
    for device in run.devices:
        problem = _device(device, config, facts)
        if problem:
            yield problem
    if not config.allow_host_network:
        if run.pid == "host":
            yield "docker.allow_host_network: pid = 'host'"
        if run.ipc == "host":
            yield "docker.allow_host_network: ipc = 'host'"
    if (
        run.pull is not None
        and config.allowed_pull_policies is not None
        and run.pull not in config.allowed_pull_policies
    ):
        yield f"docker.allowed_pull_policies: pull = {run.pull!r} is not in {config.allowed_pull_policies}"
    for ulimit in run.ulimits:
        if ulimit.name in PRIVILEGED_ULIMITS and not config.allow_privileged:
            yield f"docker.allow_privileged: ulimit {ulimit.name!r} raises priority or pins memory"
    if run.gpus is not None and not config.allow_gpus:
        yield f"docker.allow_gpus: gpus = {run.gpus!r}"
    if run.ports and not config.allow_ports:
        yield f"docker.allow_ports: ports = {list(run.ports)}"
    if run.log_config is not None and run.log_config.type not in (*LOG_DRIVERS, *config.allowed_log_drivers):
        yield f"docker.allowed_log_drivers: log_config type {run.log_config.type!r} is not json-file, local or listed"


def _resources(config: DockerConfig, run: RunRequest) -> Iterator[str]:
    """CPUs, memory in all its forms (shm, tmpfs, reservation, swap) and processes within the maximums."""
    if config.max_cpus is not None and run.cpus is not None and run.cpus > config.max_cpus:
        yield f"docker.max_cpus: cpus = {run.cpus} is over {config.max_cpus}"
    if config.max_memory is not None and run.memory is not None and run.memory > config.max_memory:
        yield f"docker.max_memory: memory = {run.memory} bytes is over {config.max_memory}"
    memory = run.memory if run.memory is not None else config.max_memory
    if memory is not None and run.shm_size is not None and run.shm_size > memory:
        yield f"docker.max_memory: shm_size = {run.shm_size} bytes is over the memory limit {memory}"
    for path, options in run.tmpfs.items():
        # A tmpfs is memory: with a maximum set, each states a size within the run's limit.
        size = _tmpfs_size(options)
        if memory is not None and (size is None or size > memory):
            yield f"docker.max_memory: tmpfs {path!r} needs size= within the memory limit {memory} ({options!r})"
    if run.mem_reservation is not None and memory is not None and run.mem_reservation > memory:
        yield f"docker.max_memory: mem_reservation = {run.mem_reservation} bytes is over the memory limit {memory}"
    if config.max_pids is not None and run.pids_limit is not None:
        if run.pids_limit <= 0:
            yield f"docker.max_pids: pids_limit = {run.pids_limit} is unlimited; at most {config.max_pids}"
        elif run.pids_limit > config.max_pids:
            yield f"docker.max_pids: pids_limit = {run.pids_limit} is over {config.max_pids}"
    # Swap is memory too: with a maximum set, no unlimited swap and at most as much again.
    swap, most = run.memory_swap, config.max_memory
    if swap is not None and most is not None and (swap == -1 or swap > 2 * most):
        yield f"docker.max_memory: memory_swap = {run.memory_swap} is over twice {config.max_memory}"


def _tmpfs_size(options: str) -> int | None:
    """The one size= of tmpfs options, in bytes; None when absent, repeated, not a size, or another
    option sizes it too (the daemon keeps the last size=, the kernel also reads nr_blocks=)."""
    pairs = [(key.strip(), value.strip()) for key, _, value in (o.partition("=") for o in options.split(","))]
    sizes = [value for key, value in pairs if key == "size"]
    if len(sizes) != 1 or any(key == "nr_blocks" for key, _ in pairs):
        return None
    try:
        return parse_bytes(sizes[0])
    except ValueError:
        return None


def check(config: DockerConfig, run: RunRequest, facts: HostFacts | None = None) -> None:
    """Raise PolicyError naming every rule the run breaks."""
    found = [f"run {run.id}: refused by {v}" for v in violations(config, run, facts)]
    if found:
        raise PolicyError(found)
