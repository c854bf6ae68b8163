"""The host as the Docker daemon sees it: host paths resolved in full, the daemon's own files (I/O).

The policy is pure and judges `HostFacts`; this module gathers them, just before a run is judged
and again just before its container is created, so the check-then-use window is as short as the
daemon allows.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import socket
import stat
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dagent.config import AgentConfig
from dagent.contracts import DaemonFacts
from dagent.policy import SENSITIVE_PATHS, HostFacts, VolumeFacts, device_host, run_host_paths, volume_bind
from dagent.runs import RunRequest

# The kernel's own limit on symbolic links followed in one lookup (MAXSYMLINKS).
MAX_LINKS = 40
# The daemon's sockets and state besides the one named by docker.base_url (containerd's, the
# daemon's exec root) and the data root Docker uses when it is not asked.
DAEMON_PATHS = ("/run/containerd", "/var/run/containerd", "/run/docker", "/var/run/docker", "/var/lib/docker")


class Unresolvable(Exception):
    """A host path that cannot be resolved in full; the message says which component and why."""


def resolve(path: str) -> str:
    """The real path of an absolute host path, each component resolved, or Unresolvable.

    Unlike os.path.realpath, which quietly stops at a component it cannot lstat (a directory the
    agent may not search, where the daemon, as root, would follow a link), any component that
    cannot be looked at refuses the whole path. A component that does not exist ends the lookup:
    the daemon creates a missing bind source as a directory, so the rest is taken as written, and
    `..` after it is refused (the kernel would fail there; Docker might clean it away).
    """
    if "\0" in path:
        raise Unresolvable("the path holds a NUL byte")
    _utf8(path)
    if not path.startswith("/"):
        raise Unresolvable("the path is not absolute")
    pending = list(reversed(path.split("/")))
    resolved = "/"
    links = 0
    missing = False
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if missing:
                raise Unresolvable(f"'..' follows {resolved}, which does not exist")
            resolved = posixpath.dirname(resolved)
            continue
        candidate = posixpath.join(resolved, part)
        if missing:
            resolved = candidate
            continue
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            missing, resolved = True, candidate
            continue
        except OSError as e:
            raise Unresolvable(f"cannot look at {candidate}: {_strerror(e)}") from None
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise Unresolvable(f"more than {MAX_LINKS} symbolic links")
            try:
                target = os.readlink(candidate)
            except OSError as e:
                raise Unresolvable(f"cannot read the link {candidate}: {_strerror(e)}") from None
            _utf8(target)
            if target.startswith("/"):
                resolved = "/"
            pending.extend(reversed(target.split("/")))
            continue
        if any(p not in ("", ".") for p in pending) and not stat.S_ISDIR(info.st_mode):
            raise Unresolvable(f"{candidate} is not a directory")
        resolved = candidate
    return resolved


def _utf8(text: str) -> None:
    """Refuse what is not UTF-8: the daemon reads paths as JSON text, and an undecodable byte
    (Python's surrogate escape) arrives there as U+FFFD, another name than the one checked."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Unresolvable(f"{text.encode('utf-8', 'backslashreplace').decode()!r} is not UTF-8") from None


def _strerror(error: OSError) -> str:
    return error.strerror or errno.errorcode.get(error.errno or 0, type(error).__name__)


def resolve_or_keep(path: str) -> str:
    """The resolved path, or the path as written (normalised) when it cannot be resolved."""
    try:
        return resolve(path)
    except Unresolvable:
        return posixpath.normpath(path)


# --- the daemon ----------------------------------------------------------------------------------


def socket_path(base_url: str) -> str | None:
    """The filesystem path of a unix:// daemon URL."""
    if base_url.startswith("unix://"):
        return "/" + base_url.removeprefix("unix://").lstrip("/")
    return None


def peer_pid(path: str) -> int | None:
    """The pid of the process listening on a unix socket (SO_PEERCRED), or None."""
    peercred = getattr(socket, "SO_PEERCRED", None)
    if peercred is None:
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(path)
            pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i")))
    except OSError:
        return None
    return pid or None


def _root_mount_id(pid: int | str) -> str | None:
    """The mount id of `/` in a process's mount namespace; a copied namespace has new ids."""
    try:
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/":
            return fields[0]
    return None


def view_error(base_url: str, verify: bool) -> str | None:
    """None when the agent is in the daemon's mount namespace (so a path means the same to both)."""
    if not verify:
        return None
    path = socket_path(base_url)
    if path is None:
        return (
            f"the daemon at {base_url} may see another filesystem (host paths are checked only for a "
            "unix:// daemon; set docker.verify_host_view = false if its paths are this host's)"
        )
    pid = peer_pid(path)
    if pid is None:
        return f"cannot tell which process serves {path}, so not that it sees this filesystem{_in_container()}"
    ours, theirs = _root_mount_id("self"), _root_mount_id(pid)
    if ours is None or theirs is None:
        return f"cannot read the mount table of the daemon (pid {pid}) to compare it with the agent's"
    if ours != theirs:
        return (
            f"the agent and the daemon (pid {pid}) are in different mount namespaces "
            f"(e.g. systemd PrivateTmp or ProtectSystem), so a path may not mean the same to both{_in_container()}"
        )
    return None


def _in_container() -> str:
    """What an agent in a container does about it (Docker marks its containers with /.dockerenv)."""
    if not os.path.exists("/.dockerenv"):
        return ""
    return (
        "; in a container, bind each allowed host path at the same path inside and set docker.verify_host_view = false"
    )


# --- gathering the facts -------------------------------------------------------------------------


class HostView:
    """Gathers the HostFacts a run is judged by; `daemon` is asked once and kept."""

    def __init__(
        self,
        config: AgentConfig,
        daemon: Callable[[], DaemonFacts] | DaemonFacts,
        own_files: Iterable[Path | str] = (),
        network_driver: Callable[[str], str | None] = lambda _name: None,
        volume: Callable[[str], VolumeFacts | None] = lambda _name: None,
        image_names: Callable[[str], tuple[str, ...] | None] = lambda _reference: None,
    ) -> None:
        self.config = config
        self._daemon = daemon
        self.own_files = tuple(os.path.abspath(str(p)) for p in own_files)
        self._network_driver = network_driver
        self._volume = volume
        self._image_names = image_names

    @classmethod
    def of(cls, config: AgentConfig, runtime: Any, own_files: Iterable[Path | str] = ()) -> HostView:
        """The view of the host a runtime's daemon has (its facts, network, volume and image lookups)."""
        return cls(config, runtime.daemon_facts, own_files, runtime.network_driver, runtime.volume, runtime.image_names)

    @property
    def daemon(self) -> DaemonFacts:
        """The daemon's facts, asked for on first use."""
        if callable(self._daemon):
            self._daemon = self._daemon()
        return self._daemon

    def protected(self) -> tuple[str, ...]:
        """Paths no run may mount, touch or expose unless an allowed root lies at or inside them."""
        docker = self.config.docker
        daemon = self.daemon
        paths: list[str] = [*SENSITIVE_PATHS, *DAEMON_PATHS, *self.own_files]
        paths += [p for p in (daemon.data_root, daemon.socket_path) if p]
        # The agent's own Docker credentials and TLS keys (docker-py reads them).
        # ~/.docker even where DOCKER_CONFIG points elsewhere: TLS falls back to its ca/cert/key.pem.
        paths += [p for p in (os.environ.get("DOCKER_CONFIG"), os.path.expanduser("~/.docker")) if p]
        paths += [p for p in (os.environ.get("DOCKER_CERT_PATH"),) if p]
        tls = docker.tls
        paths += [str(p) for p in (tls.cert_path, tls.ca_cert, tls.client_cert, tls.client_key) if p is not None]
        paths.append(str(self.config.inbox.path))
        if self.config.api.token_file is not None:
            paths.append(str(self.config.api.token_file))
        paths += [str(a.password_file) for a in docker.registry_auth if a.password_file is not None]
        # Both spellings: a protected path reached through a link (/var/run → /run) is the same file.
        found: dict[str, None] = {}
        for path in paths:
            found.setdefault(posixpath.normpath(path))
            found.setdefault(resolve_or_keep(path))
        return tuple(found)

    def facts(self, run: RunRequest) -> HostFacts:
        """Everything the policy needs to judge `run` on this host, looked up now."""
        docker = self.config.docker
        volumes: dict[str, VolumeFacts | None] = {}
        if docker.allow_named_volumes:  # else the policy refuses them unseen
            for mount in run.volumes:
                if not mount.is_bind:
                    volumes[mount.source] = self._volume(mount.source)
        binds = [device for volume in volumes.values() if volume and (device := volume_bind(volume))]
        # Asked of the daemon, not read from the spelling: Docker takes a name first, an ID second.
        image_names = self._image_names(run.image) if docker.registry_allow_list is not None else None
        if not run_host_paths(run) and not binds:
            # Nothing of the host's filesystem is asked for: no path lookups, no daemon question.
            return HostFacts(network_drivers=self._networks(run), volumes=volumes, image_names=image_names)
        wanted = [*run_host_paths(run), *binds, *(device_host(d) for d in docker.allowed_devices)]
        resolved: dict[str, str] = {}
        unresolved: dict[str, str] = {}
        for path in wanted:
            try:
                resolved[path] = resolve(path)
            except Unresolvable as e:
                unresolved[path] = str(e)
        roots = []
        for root in docker.allowed_host_paths:
            with contextlib.suppress(Unresolvable):  # a root that cannot be resolved grants nothing
                roots.append(resolve(root))
        return HostFacts(
            resolved=resolved,
            unresolved=unresolved,
            allowed_roots=tuple(roots),
            protected=self.protected(),
            view_error=self.daemon.view_error,
            network_drivers=self._networks(run),
            volumes=volumes,
            image_names=image_names,
        )

    def _networks(self, run: RunRequest) -> dict[str, str]:
        """The driver behind each of the run's networks as the daemon resolves it (a name, an id, a prefix)."""
        found = {}
        for name in dict.fromkeys([*([run.network] if run.network else []), *run.networks]):
            driver = self._network_driver(name)
            if driver is not None:
                found[name] = driver
        return found


def mount_options(path: str, mountinfo: str | None = None) -> frozenset[str] | None:
    """The options of the mount a resolved path lies on (per-mount and superblock), from mountinfo; None if unknown."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    best: tuple[int, frozenset[str]] | None = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 6:
            continue
        point = fields[4].replace("\\040", " ")
        if path == point or path.startswith(point.rstrip("/") + "/"):
            dash = fields.index("-")
            options = frozenset(fields[5].split(",")) | frozenset(
                fields[dash + 3].split(",") if len(fields) > dash + 3 else ()
            )
            if best is None or len(point) >= best[0]:
                best = (len(point), options)
    return None if best is None else best[1]


def exposed_roots(config: AgentConfig, mountinfo: str | None = None) -> list[str]:
    """docker.allowed_host_paths on a mount without nosuid or nodev: a run, root in its container by
    default, can leave a set-uid binary or a device node there for the host's users to use."""
    found = []
    for root in config.docker.allowed_host_paths:
        real = resolve_or_keep(str(root))
        options = mount_options(real, mountinfo)
        if options is not None and not {"nosuid", "nodev"} <= options:
            found.append(real)
    return found


_CONTAINER_HOSTNAME_RE = re.compile(r"/containers/([0-9a-f]{64})/hostname\s")


def hostname_is_container_id(mountinfo: str | None = None) -> bool:
    """True inside a Docker container whose host name is its own id: a name that changes when it is re-created."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return False
    match = _CONTAINER_HOSTNAME_RE.search(mountinfo)
    host = socket.gethostname()
    # Docker's default host name is the id's first 12 characters; a name chosen by --hostname is not.
    return match is not None and len(host) == 12 and match.group(1).startswith(host)
