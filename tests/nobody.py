"""Running dagent as an unprivileged user (`runuser -u nobody`), as the shipped systemd unit does."""

from __future__ import annotations

import functools
import os
import shutil
import site
import subprocess
import sys

from tests.conftest import REPO

RUNUSER = shutil.which("runuser") or ""


def _path() -> str:
    # The venv's interpreter may live under /root (pyenv), which nobody cannot enter; a system
    # Python of the same version can import the venv's packages instead.
    return os.pathsep.join([str(REPO), *site.getsitepackages()])


@functools.cache
def python() -> str | None:
    """An interpreter `nobody` can run that imports dagent and its dependencies; None if none."""
    if os.geteuid() != 0 or not RUNUSER:
        return None
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (
        sys.executable,
        os.path.realpath(sys.executable),
        f"/usr/bin/{version}",
        f"/usr/local/bin/{version}",
    ):
        if not os.path.exists(candidate):
            continue
        probe = subprocess.run(
            [RUNUSER, "-u", "nobody", "--", candidate, "-c", "import pydantic, docker, dagent.cli"],
            capture_output=True, env={"PYTHONPATH": _path()}, timeout=60,
        )  # fmt: skip
        if probe.returncode == 0:
            return candidate
    return None


def run(
    args: list[str],
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = 120,
    group: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python ARGS...` as nobody (in `group`, e.g. docker) with dagent importable.

    The caller skips when python() is None.
    """
    interpreter = python()
    assert interpreter is not None
    as_group = ["-g", group] if group else []
    return subprocess.run(
        [RUNUSER, "-u", "nobody", *as_group, "--", interpreter, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": _path(), **(env or {})},
    )
