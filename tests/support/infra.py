"""Real components for integration tests: the Docker engine, local images, a registry, fault proxies.

Everything binds 127.0.0.1 and every helper stops what it started.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

DOCKER_SOCKET = "/var/run/docker.sock"
BUSYBOX_APPLETS = ("sh", "echo", "sleep", "cat", "env", "true", "false", "ls", "id", "printf", "kill", "wc", "grep")


class Unavailable(Exception):
    """A real component cannot run on this machine; the reason is the message."""


def _run(*cmd: str, check: bool = True, timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload, no-any-return]


INSTALL = "bash tests/install-components.sh"


class Missing(Unavailable):
    """A component that should have been installed is not: the message names the command that installs it."""


def require(command: str, package: str) -> str:
    """The path of `command`, or Missing naming the package and the install script."""
    found = shutil.which(command)
    if found is None:
        raise Missing(f"{command} is not installed (Debian's {package}): run `{INSTALL}`")
    return found


def docker_answers() -> bool:
    """True when `docker info` succeeds."""
    return shutil.which("docker") is not None and _run("docker", "info", check=False, timeout=30).returncode == 0


@contextlib.contextmanager
def docker_engine() -> Iterator[None]:
    """A running Docker engine: the one already there, or dockerd started (and stopped) here."""
    if docker_answers():
        yield
        return
    require("dockerd", "docker.io")
    log = tempfile.NamedTemporaryFile(prefix="dockerd-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not docker_answers():
            if process.poll() is not None or time.monotonic() > deadline:
                tail = Path(log.name).read_text(errors="replace")[-500:]
                raise Unavailable(f"dockerd did not start: {tail}")
            time.sleep(0.5)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def busybox_image() -> str:
    """A tiny image made with `docker import` from Debian's busybox-static, cached by content hash."""
    busybox = require("busybox", "busybox-static")
    digest = hashlib.sha256(Path(busybox).read_bytes()).hexdigest()[:12]
    tag = f"dagent-test/busybox:{digest}"
    if _run("docker", "image", "inspect", tag, check=False).returncode != 0:
        with tempfile.TemporaryDirectory() as root:
            (Path(root) / "bin").mkdir()
            (Path(root) / "tmp").mkdir()
            shutil.copy2(busybox, Path(root) / "bin" / "busybox")
            for applet in BUSYBOX_APPLETS:
                os.symlink("busybox", Path(root) / "bin" / applet)
            import_rootfs(Path(root), tag, "ENV PATH=/bin")
    return tag


def import_rootfs(root: Path, tag: str, *changes: str) -> None:
    """`docker import` of a directory tree as image `tag`, with Dockerfile `changes` (ENV, ENTRYPOINT)."""
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    flags = [arg for change in changes for arg in ("--change", change)]
    imported = subprocess.run(["docker", "import", *flags, "-", tag], stdin=tar.stdout, capture_output=True, text=True)
    tar.wait()
    if imported.returncode != 0:
        raise Unavailable(f"docker import failed: {imported.stderr.strip()[-300:]}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    """Debian's docker-registry on 127.0.0.1, storing under a temp dir; its log records every request."""

    def __init__(self, root: Path, credentials: tuple[str, str] | None = None) -> None:
        require("docker-registry", "docker-registry")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = root / "registry.log"
        self.credentials = credentials
        # The docker CLI keeps its login here, not in the user's ~/.docker.
        self.docker_config = root / "docker-config"
        self.docker_config.mkdir()
        auth = ""
        if credentials:
            import bcrypt

            user, password = credentials
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
            (root / "htpasswd").write_text(f"{user}:{hashed}\n")
            auth = f"auth:\n  htpasswd:\n    realm: dagent-test\n    path: {root / 'htpasswd'}\n"
        config = root / "registry.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.address}\n{auth}"
        )
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise Unavailable(f"docker-registry did not start: {self.log_path.read_text()[-500:]}")
            time.sleep(0.2)

    def push(self, local: str, name: str) -> str:
        """Tag a local image into this registry and push it; returns the registry reference."""
        remote = f"{self.address}/{name}"
        cli = ("docker", "--config", str(self.docker_config))
        if self.credentials:
            user, password = self.credentials
            _run(*cli, "login", "-u", user, "--password-stdin", self.address, input=password)
        _run(*cli, "tag", local, remote)
        _run(*cli, "push", remote)
        return remote

    def manifest_gets(self, name: str) -> int:
        """How many times a client asked for a manifest of `name` (GET, or HEAD when it has the image)."""
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return sum(text.count(f"{method} /v2/{name}/manifests/") for method in ("GET", "HEAD"))

    def stop(self) -> None:
        """Stop the registry."""
        self.process.terminate()
        self.process.wait(timeout=10)
        self._log.close()


class FaultProxy:
    """A TCP listener on 127.0.0.1 that forwards to a unix socket, dropping the first `drop` connections.

    With `drop_rate`, that share of the other connections is refused at once. With `lifetime`, every
    connection let through is cut at a random moment within that many seconds, mid-request or between
    requests: a client keeps its connections open, so refusing new ones alone would seldom hit it.
    """

    def __init__(
        self,
        target: str = DOCKER_SOCKET,
        drop: int = 0,
        drop_rate: float = 0.0,
        seed: int = 7,
        lifetime: float | None = None,
    ) -> None:
        self.target = target
        self.drop = drop
        self.drop_rate = drop_rate
        self.lifetime = lifetime
        self.random = random.Random(seed)
        self.dropped = 0
        self.cut = 0
        self.forwarded = 0
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = int(self._server.getsockname()[1])
        self.url = f"tcp://127.0.0.1:{self.port}"
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.dropped < self.drop or self.random.random() < self.drop_rate:
                self.dropped += 1
                client.close()
                continue
            self.forwarded += 1
            threading.Thread(target=self._pipe_pair, args=(client,), daemon=True).start()

    def _pipe_pair(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX)
        try:
            upstream.connect(self.target)
        except OSError:
            client.close()
            return
        if self.lifetime:
            self.cut += 1
            timer = threading.Timer(self.random.uniform(0.05, self.lifetime), _cut, args=(client, upstream))
            timer.daemon = True
            timer.start()
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)

    def stop(self) -> None:
        """Stop accepting; open pipes end with their peers."""
        self._stopped.set()
        self._server.close()


def _cut(*sockets: socket.socket) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


def pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes from source to sink until either ends, then close both."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class PrivateEngine:
    """A second dockerd of our own (own socket, roots and network namespace) to stop and start at will."""

    def __init__(self) -> None:
        require("dockerd", "docker.io")
        # Unix socket paths are short-lived and must stay under 108 bytes: keep the root short.
        self.root = Path(tempfile.mkdtemp(prefix="dg", dir="/tmp"))
        self.socket = self.root / "d.sock"
        self.url = f"unix://{self.socket}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        """Start dockerd and wait until it answers."""
        log = (self.root / "dockerd.log").open("ab")
        # Its own network namespace: a second dockerd with --bridge none in the host's namespace
        # deletes the host daemon's docker0 bridge.
        self.process = subprocess.Popen(
            ["unshare", "--net", "dockerd", "--host", self.url, "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "x"),
             "--pidfile", str(self.root / "pid"), "--bridge", "none", "--iptables=false", "--ip-masq=false"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while _run("docker", "-H", self.url, "info", check=False, timeout=30).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise Unavailable(f"private dockerd did not start: {(self.root / 'dockerd.log').read_text()[-400:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        """Stop dockerd (SIGTERM, as systemd would)."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def close(self) -> None:
        """Stop and delete everything."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _debian_mirror() -> str:
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        with contextlib.suppress(OSError):
            text = path.read_text()
            match = re.search(r"(https?://\S*debian\.org/debian)/?\s", text + " ")
            if match:
                return match.group(1)
    return "http://deb.debian.org/debian"


def debootstrap(root: Path, include: str) -> None:
    """A minimal Debian bookworm at root (no registry needed), with the packages in `include`."""
    require("debootstrap", "debootstrap")
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={include}", "bookworm", str(root), _debian_mirror()],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise Unavailable(f"debootstrap failed: {result.stderr.strip()[-300:]}")


def debian_python_image() -> str:
    """A Debian bookworm image with python3 (debootstrap + docker import): the agent image's test base."""
    tag = "dagent-test/debian-python:bookworm"
    if _run("docker", "image", "inspect", tag, check=False).returncode == 0:
        return tag
    root = Path(tempfile.mkdtemp(prefix="debian-rootfs-"))
    try:
        debootstrap(root, "python3")
        (root / "etc" / "resolv.conf").write_text("")
        import_rootfs(root, tag, "ENV PATH=/usr/local/bin:/usr/bin:/bin")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return tag


def not_here(error: BaseException, what: str) -> NoReturn:
    """A component missing is a broken setup (fail, naming the install command); one that cannot run here is a skip."""
    import pytest  # bench imports this module too, and has no pytest to need

    if isinstance(error, Missing):
        pytest.fail(str(error), pytrace=False)
    pytest.skip(f"{what}: {error}")
