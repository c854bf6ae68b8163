"""Host facts for pure tests: paths taken as written, as if every one resolved to itself."""

from __future__ import annotations

import posixpath
from typing import Any

from dagent.config import DockerConfig
from dagent.hostview import DAEMON_PATHS
from dagent.policy import SENSITIVE_PATHS, HostFacts, device_host, run_host_paths
from dagent.runs import RunRequest


def lexical_facts(docker: DockerConfig, run: RunRequest, **overrides: Any) -> HostFacts:
    """The facts of a host with no symbolic links, where the agent shares the daemon's view."""
    paths = [*run_host_paths(run), *(device_host(d) for d in docker.allowed_devices)]
    facts: dict[str, Any] = {
        "resolved": {p: posixpath.normpath(p) for p in paths},
        "allowed_roots": tuple(posixpath.normpath(r) for r in docker.allowed_host_paths),
        "protected": (*SENSITIVE_PATHS, *DAEMON_PATHS),
        "view_error": None,
    }
    return HostFacts(**{**facts, **overrides})


def docker_request(kwargs: dict[str, Any], version: str = "1.41") -> dict[str, Any]:
    """The create-container body docker-py builds from `containers.create` kwargs, built by docker-py itself."""
    from docker.models.containers import _create_container_args
    from docker.types import ContainerConfig

    args = _create_container_args({**kwargs, "version": version})
    args.pop("name", None)
    args.setdefault("command", None)
    return dict(ContainerConfig(version, **args))
