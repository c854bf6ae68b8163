"""Registry names and image references, parsed by Docker's reference grammar (pure)."""

from __future__ import annotations

import re

DOCKER_HUB = "docker.io"
# Docker Hub answers to several names; one canonical name keeps allow-lists honest.
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})

_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_HOST_RE = re.compile(rf"^(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-f:]+\])(?::[0-9]{{1,5}})?$")


def normalize_registry(name: str) -> str:
    """Return the canonical form of a registry name (`host[:port]`), or raise ValueError."""
    value = name.strip().lower()
    if "://" in value:
        raise ValueError(f"registry {name!r} must be host[:port], not a URL")
    value = value.rstrip("/")
    if not value or not _HOST_RE.match(value):
        raise ValueError(f"registry {name!r} is not a valid host[:port]")
    port = value.rsplit(":", 1)[1] if re.search(r":[0-9]+$", value) else None
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"registry {name!r} has port {port} out of range")
    return DOCKER_HUB if value in _HUB_ALIASES else value
