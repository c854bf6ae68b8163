"""What a run may ask for, judged against the agent's docker settings (pure: no I/O)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from dagent.config import DockerConfig
from dagent.errors import PolicyError
from dagent.images import parse_image
from dagent.runs import RunRequest

# Host paths that give a container the host itself. Mounting one, inside one, or a parent of one
# needs an allowed root at or inside it: allowing "/" does not grant them.
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
)


def _under(path: str, root: str) -> bool:
    root = posixpath.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def image_may_be_pulled(config: DockerConfig, image: str) -> bool:
    """False when the image's registry is outside the allow-list.

    An image that names no registry (so Docker Hub) outside the allow-list may still run if it is
    already present (Prefect 1's rule); an image that names a registry outside it is refused.
    """
    ref = parse_image(image)
    allow = config.registry_allow_list
    return allow is None or ref.registry in allow


def violations(config: DockerConfig, run: RunRequest) -> Iterator[str]:
    """Each thing the run asks for that the config does not allow, as `rule: value`."""
    ref = parse_image(run.image)
    allow = config.registry_allow_list
    if allow is not None and ref.explicit_registry and ref.registry not in allow:
        yield f"docker.registry_allow_list: image {run.image!r} is from {ref.registry}, not in {allow}"
    for mount in run.volumes:
        if not mount.is_bind:
            if not config.allow_named_volumes:
                yield f"docker.allow_named_volumes: volume {mount.source!r} (named volumes are off)"
            continue
        source = posixpath.normpath(mount.source)
        if not any(_under(source, root) for root in config.allowed_host_paths):
            yield f"docker.allowed_host_paths: host path {source!r} is not under {config.allowed_host_paths}"
            continue
        for sensitive in SENSITIVE_PATHS:
            touches = _under(source, sensitive) or _under(sensitive, source)
            granted = any(_under(posixpath.normpath(root), sensitive) for root in config.allowed_host_paths)
            if touches and not granted:
                yield f"docker.allowed_host_paths: host path {source!r} exposes {sensitive}"
                break
    if run.privileged and not config.allow_privileged:
        yield "docker.allow_privileged: privileged = true"
    allowed_caps = set(config.allowed_capabilities)
    for cap in run.cap_add:
        name = cap.upper().removeprefix("CAP_")
        if name not in allowed_caps:
            yield f"docker.allowed_capabilities: cap_add {cap!r}"
    allowed_devices = {posixpath.normpath(d.split(":")[0]) for d in config.allowed_devices}
    for device in run.devices:
        if posixpath.normpath(device.split(":")[0]) not in allowed_devices:
            yield f"docker.allowed_devices: device {device!r}"
    if not config.allow_host_network:
        if run.network == "host" or (run.network or "").startswith("container:"):
            yield f"docker.allow_host_network: network = {run.network!r}"
        if run.pid == "host":
            yield "docker.allow_host_network: pid = 'host'"
        if run.ipc == "host":
            yield "docker.allow_host_network: ipc = 'host'"
    if run.gpus is not None and not config.allow_gpus:
        yield f"docker.allow_gpus: gpus = {run.gpus!r}"
    if run.ports and not config.allow_ports:
        yield f"docker.allow_ports: ports = {list(run.ports)}"
    if config.max_cpus is not None and run.cpus is not None and run.cpus > config.max_cpus:
        yield f"docker.max_cpus: cpus = {run.cpus} is over {config.max_cpus}"
    if config.max_memory is not None and run.memory is not None and run.memory > config.max_memory:
        yield f"docker.max_memory: memory = {run.memory} bytes is over {config.max_memory}"


def check(config: DockerConfig, run: RunRequest) -> None:
    """Raise PolicyError naming every rule the run breaks."""
    found = [f"run {run.id}: refused by {v}" for v in violations(config, run)]
    if found:
        raise PolicyError(found)
