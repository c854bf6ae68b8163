"""The host view as another process sees it: an agent that is not root (`runuser -u nobody`) and an agent
in a mount namespace of its own (`unshare`). Each needs root and those commands; skipped without them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dagent.config import AgentConfig, load_config
from dagent.contracts import DaemonFacts
from dagent.errors import PolicyError
from dagent.hostview import HostView, resolve, view_error
from dagent.runs import RunRequest, parse_run
from dagent.spec import build
from tests.support import REPO
from tests.support.helpers import nobody_python, run_as_nobody

SHARED = DaemonFacts(data_root="/var/lib/docker", socket_path="/var/run/docker.sock", view_error=None)


def _config(**docker: Any) -> AgentConfig:
    return load_config({"name": "a1", "docker": docker}, environ={}).config


def _run(**fields: Any) -> RunRequest:
    return parse_run({"id": "r1", "image": "busybox", **fields}, "run.toml")


def _refused(config: AgentConfig, run: RunRequest, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        build(config, run, facts=HostView(config, SHARED).facts(run))


def _as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    return run_as_nobody(["-c", code])


@pytest.fixture
def hidden_link(tmp_path: Path) -> Iterator[Path]:
    """ALLOWED/a/p/l: `a/p` is root's and 0700, `l` links to the Docker socket."""
    if nobody_python() is None:
        pytest.skip("needs root, runuser and a Python that nobody can run to play a non-root agent")
    tmp_path.chmod(0o755)
    allowed = tmp_path / "allowed"
    (allowed / "a" / "p").mkdir(parents=True)
    (allowed / "a" / "p" / "l").symlink_to("/var/run/docker.sock")
    for d in (tmp_path.parent, allowed, allowed / "a"):
        d.chmod(0o755)
    (allowed / "a" / "p").chmod(0o700)
    yield allowed / "a" / "p" / "l"


def test_realpath_stops_quietly_where_a_non_root_agent_cannot_look(hidden_link: Path) -> None:
    """The attack: os.path.realpath as `nobody` returns the link itself, which looks allowed."""
    out = _as_nobody(f"import os; print(os.path.realpath({str(hidden_link)!r}))")
    assert out.stdout.strip() == str(hidden_link), out.stderr


def test_unresolvable_component_refuses_the_path(hidden_link: Path) -> None:
    """The fix: as `nobody`, resolving the path fails and names the component it could not see."""
    code = (
        "from dagent.hostview import resolve, Unresolvable\n"
        f"try:\n    print('RESOLVED', resolve({str(hidden_link)!r}))\n"
        "except Unresolvable as e:\n    print('REFUSED', e)\n"
    )
    out = _as_nobody(code)
    assert out.stdout.startswith("REFUSED cannot look at"), out.stdout + out.stderr
    assert "Permission denied" in out.stdout
    # As root it resolves in full, to the socket, and the socket is refused for what it is.
    assert resolve(str(hidden_link)) == os.path.realpath("/var/run/docker.sock")
    allowed = hidden_link.parent.parent.parent
    _refused(_config(allowed_host_paths=[str(allowed)]), _run(volumes=[f"{hidden_link}:/s"]), "docker.sock")


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[str]:
    """A process-local unix socket server (this process stands in for the daemon)."""
    path = str(tmp_path / "d.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join()
    server.close()


def test_same_mount_namespace_is_verified(unix_server: str) -> None:
    """An agent in the daemon's mount namespace may judge host paths."""
    assert view_error(f"unix://{unix_server}", verify=True) is None


def test_private_mount_namespace_is_detected(unix_server: str) -> None:
    """The attack is systemd's PrivateTmp: the agent in a mount namespace of its own is caught."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to make a private mount namespace")
    code = f"from dagent.hostview import view_error; print(view_error('unix://{unix_server}', True))"
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", code],
        capture_output=True, text=True, env={"PYTHONPATH": str(REPO)}, timeout=60,
    )  # fmt: skip
    assert "different mount namespaces" in out.stdout, out.stdout + out.stderr
