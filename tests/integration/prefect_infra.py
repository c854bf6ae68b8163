"""A real Prefect 3 server in its own venv, and a flow image that runs real flows, for integration tests.

Nothing here is imported by dagent: dagent has no `prefect` dependency. The venv and the images are
cached between runs (the venv under ~/.cache, the images in the Docker daemon, tagged by content).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.integration.infra import INSTALL, Missing, Unavailable, free_port, require

PREFECT = "3.8.8"
PREFECT_PINS = (f"prefect=={PREFECT}", "fastapi>=0.139,<0.148", "sqlalchemy<2.1")
PREFECT_DOCKER = "prefect-docker==0.7.4"
CACHE = Path(os.environ.get("DAGENT_TEST_CACHE", Path.home() / ".cache" / "dagent-test"))
FLOWS = Path(__file__).parent / "flows"


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


class PrefectServer:
    """`prefect server start` on a free port on 127.0.0.1, with its own PREFECT_HOME."""

    def __init__(self, venv: Path, root: Path) -> None:
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


def _debian_mirror() -> str:
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        with contextlib.suppress(OSError):
            text = path.read_text()
            match = re.search(r"(https?://\S*debian\.org/debian)/?\s", text + " ")
            if match:
                return match.group(1)
    return "http://deb.debian.org/debian"


def _docker(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


def prefect_base_image() -> str:
    """Debian bookworm (debootstrap, no registry) with Prefect in /opt/prefect; ~3 minutes, once."""
    tag = f"dagent-test/prefect-base:{PREFECT}"
    if _docker("image", "inspect", tag).returncode == 0:
        return tag
    require("debootstrap", "debootstrap")
    root = Path(tempfile.mkdtemp(prefix="prefect-rootfs-"))
    try:
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm",
             str(root), _debian_mirror()], capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode != 0:
            raise Unavailable(f"debootstrap failed: {result.stderr.strip()[-300:]}")
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
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "import", "--change", "ENV PATH=/opt/prefect/bin:/usr/local/bin:/usr/bin:/bin",
             "--change", "ENV PYTHONUNBUFFERED=1", "-", tag], stdin=tar.stdout, capture_output=True, text=True,
        )  # fmt: skip
        tar.wait()
        if imported.returncode != 0:
            raise Unavailable(f"docker import failed: {imported.stderr.strip()[-300:]}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return tag


def flow_image() -> str:
    """The base image plus this repo's test flows at /flows, tagged by the flows' content."""
    base = prefect_base_image()
    digest = hashlib.sha256((FLOWS / "flows.py").read_bytes()).hexdigest()[:12]
    tag = f"dagent-test/prefect-flows:{digest}"
    if _docker("image", "inspect", tag).returncode != 0:
        with tempfile.TemporaryDirectory() as context:
            shutil.copy(FLOWS / "flows.py", Path(context) / "flows.py")
            (Path(context) / "Dockerfile").write_text(f"FROM {base}\nCOPY flows.py /flows/flows.py\nWORKDIR /flows\n")
            built = _docker("build", "-q", "-t", tag, context, env={**os.environ, "DOCKER_BUILDKIT": "0"})
            if built.returncode != 0:
                raise Unavailable(f"docker build of the flow image failed: {built.stderr.strip()[-300:]}")
    return tag


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--install"]:
        sys.exit("usage: python -m tests.integration.prefect_infra --install")
    try:
        print(f"Prefect {PREFECT} venv: {install_prefect_venv()}")
    except Unavailable as e:
        sys.exit(f"error: {e}")
