"""Registry names and image references, parsed by Docker's reference grammar, and a pull's progress (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

DOCKER_HUB = "docker.io"
# Docker Hub answers to several names; one canonical name keeps allow-lists honest.
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})

_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_HOST_RE = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-f:]+\])(?::[0-9]{{1,5}})?")


def normalize_registry(name: str) -> str:
    """Return the canonical form of a registry name (`host[:port]`), or raise ValueError."""
    value = name.strip(" ").lower()
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"registry {name!r} is not a valid host[:port]")
    if "://" in value:
        raise ValueError(f"registry {name!r} must be host[:port], not a URL")
    value = value.rstrip("/")
    if not value or not _HOST_RE.fullmatch(value):
        raise ValueError(f"registry {name!r} is not a valid host[:port]")
    port = value.rsplit(":", 1)[1] if re.search(r":[0-9]+\Z", value) else None
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"registry {name!r} has port {port} out of range")
    return DOCKER_HUB if value in _HUB_ALIASES else value


_NAME_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}")


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed image reference: registry (canonical), repository path, tag and digest."""

    registry: str
    path: str
    tag: str | None
    digest: str | None
    explicit_registry: bool

    @property
    def repository(self) -> str:
        """What `docker pull` takes before the tag: registry-qualified unless it is Docker Hub."""
        return (
            self.path if self.registry == DOCKER_HUB and not self.explicit_registry else f"{self.registry}/{self.path}"
        )


def parse_image(reference: str) -> ImageRef:
    """Parse an image reference as Docker does, or raise ValueError.

    The first path component is a registry only if it holds `.` or `:` or is `localhost`;
    otherwise the image is on Docker Hub. So `registry.example.com.evil.net/x` is on
    `registry.example.com.evil.net` and `evil.net/registry.example.com/x` on `evil.net`.
    """
    if not reference or reference != reference.strip() or len(reference) > 512:
        raise ValueError(f"image {reference!r} is not a valid reference")
    rest, digest = reference, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST_RE.fullmatch(digest):
            raise ValueError(f"image {reference!r} has an invalid digest")
    tag = None
    last_slash = rest.rfind("/")
    if ":" in rest[last_slash + 1 :]:
        rest, tag = rest.rsplit(":", 1)
        if not _TAG_RE.fullmatch(tag):
            raise ValueError(f"image {reference!r} has an invalid tag")
    first, sep, remainder = rest.partition("/")
    explicit = bool(sep) and ("." in first or ":" in first or first == "localhost")
    if explicit:
        registry, path = normalize_registry(first), remainder
    else:
        registry, path = DOCKER_HUB, rest
    if not _PATH_RE.fullmatch(path):
        raise ValueError(f"image {reference!r}: repository {path!r} is not a valid name")
    return ImageRef(registry=registry, path=path, tag=tag, digest=digest, explicit_registry=explicit)


def _repository_key(ref: ImageRef) -> tuple[str, str]:
    path = ref.path.removeprefix("library/") if ref.registry == DOCKER_HUB else ref.path
    return ref.registry, path


def names_reference(names: list[str] | tuple[str, ...], reference: str) -> bool:
    """True when `reference`, read as an image name, is one of `names` (an image's tags and digests)."""
    try:
        ref = parse_image(reference)
    except ValueError:
        return False
    for name in names:
        try:
            other = parse_image(name)
        except ValueError:
            continue
        if _repository_key(other) != _repository_key(ref):
            continue
        if ref.digest is not None:
            if other.digest == ref.digest:
                return True
        elif other.digest is None and (other.tag or "latest") == (ref.tag or "latest"):
            return True
    return False


class PullProgress:
    """A pull's progress over all its layers, from the daemon's stream of per-layer events."""

    def __init__(self) -> None:
        self.layers: dict[str, str] = {}  # layer id → its latest status
        self.current: dict[str, int] = {}  # layer id → bytes downloaded
        self.total: dict[str, int] = {}  # layer id → its size, once known

    def add(self, event: dict[str, Any]) -> None:
        """Take one event of the pull's stream."""
        layer, status = event.get("id"), str(event.get("status") or "")
        if not isinstance(layer, str) or not status or status.startswith(("Pulling from", "Digest", "Status")):
            return
        self.layers[layer] = status
        detail = event.get("progressDetail") or {}
        if status == "Downloading" and isinstance(detail, dict):
            if isinstance(detail.get("current"), int):
                self.current[layer] = detail["current"]
            if isinstance(detail.get("total"), int):
                self.total[layer] = detail["total"]
        elif status in ("Download complete", "Pull complete", "Already exists") and layer in self.total:
            self.current[layer] = self.total[layer]

    def __str__(self) -> str:
        done = sum(1 for s in self.layers.values() if s in ("Pull complete", "Already exists"))
        text = f"{done}/{len(self.layers)} layers"
        if self.total:
            text += f", {_mb(sum(self.current.values()))} of {_mb(sum(self.total.values()))} MB downloaded"
        return text


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}"
