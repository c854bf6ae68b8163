"""A real Prefect 3 server in its own venv, and a flow image that runs real flows, for integration tests.

Nothing here is imported by dagent: dagent has no `prefect` dependency. The venv and the images are
cached between runs (the venv under ~/.cache, the images in the Docker daemon, tagged by content).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.support import REPO
from tests.support.infra import INSTALL, Missing, Unavailable, debootstrap, free_port, import_rootfs

PREFECT = "3.8.8"
# asyncpg: the server's PostgreSQL driver (the Postgres backend of the tests, the bench and the chaos suite).
PREFECT_PINS = (f"prefect=={PREFECT}", "fastapi>=0.139,<0.148", "sqlalchemy<2.1", "asyncpg>=0.29")
BACKENDS = ("postgres", "sqlite")
PREFECT_DOCKER = "prefect-docker==0.7.4"
CACHE = Path(os.environ.get("DAGENT_TEST_CACHE", Path.home() / ".cache" / "dagent-test"))
FLOWS = REPO / "tests" / "integration" / "flows"  # the flows the test image carries


def prefect_venv() -> Path:
    """The venv with Prefect and prefect-docker that tests/install-components.sh made; Missing if it did not."""
    venv = CACHE / f"prefect-{PREFECT}"
    if not (venv / ".complete").exists():
        raise Missing(f"no Prefect {PREFECT} venv at {venv}: run `{INSTALL}`")
    return venv


def install_prefect_venv() -> Path:
    """Make the venv with Prefect (and prefect-docker, for the benchmark's baseline), once."""
    venv = CACHE / f"prefect-{PREFECT}"
    done = venv / ".complete"  # written last: a half-made venv is made again
    if done.exists():
        if subprocess.run([str(venv / "bin" / "python"), "-c", "import asyncpg"], capture_output=True).returncode:
            # A venv made before the Postgres backend: add its driver.
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", "-q", "asyncpg>=0.29"], check=True, capture_output=True
            )
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True, capture_output=True)
    result = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", *PREFECT_PINS, PREFECT_DOCKER], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise Unavailable(f"cannot install Prefect {PREFECT}: {result.stderr.strip()[-300:]}")
    done.touch()
    return venv


def default_backend() -> str:
    """The database behind test servers: DAGENT_TEST_BACKEND, else PostgreSQL (Prefect's production backend)."""
    backend = os.environ.get("DAGENT_TEST_BACKEND", "postgres")
    if backend not in BACKENDS:
        raise Unavailable(f"DAGENT_TEST_BACKEND={backend!r}: expected one of {', '.join(BACKENDS)}")
    return backend


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        raise Missing(f"PostgreSQL is not installed: run `{INSTALL}`")
    return found[-1].parent


class PostgresCluster:
    """A throwaway PostgreSQL cluster on 127.0.0.1 under a temp directory (initdb, pg_ctl; no system service)."""

    def __init__(self, root: Path, max_connections: int = 400) -> None:
        bin_dir = _postgres_bin()
        self.port = free_port()
        # Its own directory, readable by the postgres user (who owns the cluster when we are root).
        root.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="dagent-pg-", dir=root))
        self.dir.chmod(0o755)
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            for parent in self.dir.parents:  # the postgres user must be able to reach it
                if parent.stat().st_mode & 0o001 == 0:
                    parent.chmod(parent.stat().st_mode | 0o001)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._pg_ctl = [*self._as, str(bin_dir / "pg_ctl"), "-D", str(self.data)]
        self._run(
            [*self._as, str(bin_dir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"]
        )
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections={max_connections}"
                   " -c fsync=off -c synchronous_commit=off -c shared_buffers=128MB")  # fmt: skip
        self._run([*self._pg_ctl, "-l", str(self.log_path), "-w", "-t", "60", "-o", options, "start"])
        createdb = [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "prefect"]
        try:
            self._run([*self._as, *createdb])
        except Unavailable:
            self.stop()  # not a running cluster left behind
            raise
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/prefect"

    def _run(self, argv: list[str]) -> None:
        result = subprocess.run(argv, capture_output=True, text=True, cwd=self.dir)
        if result.returncode != 0:
            raise Unavailable(
                f"{Path(argv[len(self._as)]).name} failed: {(result.stderr or result.stdout).strip()[-300:]}"
            )

    def pids(self) -> list[int]:
        """The postmaster and its backends: what the database costs, for the bench."""
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
        return [postmaster, *map(int, children)]

    def stop(self) -> None:
        """Stop the cluster and delete it (once)."""
        if not self.dir.exists():
            return
        subprocess.run([*self._pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True, cwd=self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)


class PrefectServer:
    """`prefect server start` on a free port on 127.0.0.1, with its own PREFECT_HOME, on SQLite or PostgreSQL."""

    def __init__(self, venv: Path, root: Path, backend: str | None = None) -> None:
        self.backend = backend or default_backend()
        self.postgres = PostgresCluster(root) if self.backend == "postgres" else None
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.home = root / "prefect-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path = root / "prefect-server.log"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_API_URL": self.api_url,
        }
        if self.postgres is not None:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.postgres.url
            # Many agents at once: the default pool (5 + 10 overflow) queues them behind each other.
            env["PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE"] = "20"
            env["PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW"] = "40"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [str(venv / "bin" / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r:
                if r.status == 200:
                    break
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise Unavailable(f"prefect server did not start: {self.log_path.read_text()[-500:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server and everything it started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 15)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()
        self._log.close()
        if self.postgres is not None:
            self.postgres.stop()


def _docker(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


def prefect_base_image() -> str:
    """Debian bookworm (debootstrap, no registry) with Prefect in /opt/prefect; ~3 minutes, once."""
    pins = hashlib.sha256(" ".join(PREFECT_PINS).encode()).hexdigest()[:8]
    tag = f"dagent-test/prefect-base:{PREFECT}-{pins}"
    if _docker("image", "inspect", tag).returncode == 0:
        return tag
    root = Path(tempfile.mkdtemp(prefix="prefect-rootfs-"))
    try:
        debootstrap(root, "python3,python3-venv,ca-certificates")
        shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", root / "tmp" / "host-ca.crt")
        subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
        try:
            chroot = ["chroot", str(root), "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "HOME=/root",
                      "PIP_CERT=/tmp/host-ca.crt", "PIP_NO_CACHE_DIR=1"]  # fmt: skip
            subprocess.run([*chroot, "python3", "-m", "venv", "/opt/prefect"], check=True, capture_output=True)
            result = subprocess.run(
                [*chroot, "/opt/prefect/bin/pip", "install", "-q", *PREFECT_PINS], capture_output=True, text=True
            )
            if result.returncode != 0:
                raise Unavailable(f"pip in the image failed: {result.stderr.strip()[-300:]}")
        finally:
            subprocess.run(["umount", str(root / "proc")], check=False)
        (root / "tmp" / "host-ca.crt").unlink()
        (root / "etc" / "resolv.conf").write_text("")
        import_rootfs(root, tag, "ENV PATH=/opt/prefect/bin:/usr/local/bin:/usr/bin:/bin", "ENV PYTHONUNBUFFERED=1")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return tag


def flow_image() -> str:
    """The base image plus this repo's test flows (and the engine's stand-in) at /flows, tagged by their content."""
    base = prefect_base_image()
    files = ("flows.py", "standin.py")
    content = base.encode() + b"".join((FLOWS / name).read_bytes() for name in files)
    digest = hashlib.sha256(content).hexdigest()[:12]
    tag = f"dagent-test/prefect-flows:{digest}"
    if _docker("image", "inspect", tag).returncode != 0:
        with tempfile.TemporaryDirectory() as context:
            for name in files:
                shutil.copy(FLOWS / name, Path(context) / name)
            (Path(context) / "Dockerfile").write_text(f"FROM {base}\nCOPY {' '.join(files)} /flows/\nWORKDIR /flows\n")
            built = _docker("build", "-q", "-t", tag, context, env={**os.environ, "DOCKER_BUILDKIT": "0"})
            if built.returncode != 0:
                raise Unavailable(f"docker build of the flow image failed: {built.stderr.strip()[-300:]}")
    return tag


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--install"]:
        sys.exit("usage: python -m tests.support.prefect_infra --install")
    try:
        print(f"Prefect {PREFECT} venv: {install_prefect_venv()}")
    except Unavailable as e:
        sys.exit(f"error: {e}")
