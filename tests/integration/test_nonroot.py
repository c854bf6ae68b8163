"""A non-root agent (as the shipped systemd unit runs it): `dagent plan` and `dagent start` as nobody.

The attack: ALLOWED/a/p/l, where `a/p` is root's and 0700 and `l` links to the Docker socket. A
non-root agent cannot see through `a/p`; the daemon, as root, would follow the link.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from tests.support.helpers import nobody_python, run_as_nobody

pytestmark = pytest.mark.integration


@dataclass
class Host:
    root: Path
    allowed: Path
    hidden_link: Path
    data: Path
    config: Path


@pytest.fixture
def host(engine: docker.DockerClient, image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """A world-readable work tree for nobody, an allowed root holding the hidden link and a plain directory."""
    if nobody_python() is None:
        pytest.skip("needs root, runuser and a Python that nobody can run to play a non-root agent")
    try:
        grp.getgrnam("docker")
    except KeyError:
        pytest.skip("no docker group to give the non-root agent the daemon's socket")
    root = Path(tmp_path_factory.mktemp("nonroot"))
    for d in (root, *root.parents):
        if d != Path("/"):
            d.chmod(d.stat().st_mode | 0o005)  # nobody must reach its own work tree
    allowed = root / "allowed"
    (allowed / "a" / "p").mkdir(parents=True)
    (allowed / "a" / "p" / "l").symlink_to("/var/run/docker.sock")
    (allowed / "a" / "p").chmod(0o700)
    data = allowed / "data"
    data.mkdir()
    data.chmod(0o777)
    inbox = root / "inbox"
    inbox.mkdir()
    shutil.chown(inbox, "nobody")
    config = root / "agent.toml"
    config.write_text(
        f'name = "nonroot-{os.getpid()}"\npoll_interval = 0.2\nmax_polls = 15\n'
        f'[inbox]\npath = "{inbox}"\n'
        f'[docker]\nallowed_host_paths = ["{allowed}"]\nkeep_containers = "never"\n'
    )
    (root / "hidden.toml").write_text(f'image = "{image}"\nvolumes = ["{allowed}/a/p/l:/s"]\ncommand = ["true"]\n')
    (root / "plain.toml").write_text(
        f'image = "{image}"\nvolumes = ["{data}:/d"]\ncommand = ["sh", "-c", "echo ok > /d/out"]\n'
    )
    yield Host(root, allowed, allowed / "a" / "p" / "l", data, config)
    for container in engine.containers.list(all=True, filters={"label": f"dagent.agent=nonroot-{os.getpid()}"}):
        container.remove(force=True)
    shutil.rmtree(root, ignore_errors=True)


def _dagent(host: Host, *args: str) -> tuple[int, str, str]:
    out = run_as_nobody(["-m", "dagent", *args, "--config", str(host.config)], cwd=str(host.root), group="docker")
    return out.returncode, out.stdout, out.stderr


def test_plan_as_nobody_refuses_a_path_it_cannot_resolve(host: Host) -> None:
    """`dagent plan` as nobody: the hidden link is refused (exit 2, one line naming the component)."""
    code, _, err = _dagent(host, "plan", str(host.root / "hidden.toml"))
    assert code == 2, err
    assert "cannot be resolved in full" in err and f"{host.allowed}/a/p" in err and "Traceback" not in err
    code, out, err = _dagent(host, "plan", str(host.root / "plain.toml"))
    assert code == 0, err
    assert json.loads(out)["spec"]["mounts"] == [f"{host.data}:/d"]  # as written: no mode given


def test_start_as_nobody_runs_the_good_run_and_refuses_the_hidden_link(host: Host) -> None:
    """`dagent start` as nobody: the plain run succeeds, the hidden link goes to failed/ with why."""
    inbox = host.root / "inbox"
    (inbox / "new").mkdir(exist_ok=True)
    shutil.chown(inbox / "new", "nobody")
    for name in ("hidden", "plain"):
        target = inbox / "new" / f"{name}.toml"
        shutil.copy(host.root / f"{name}.toml", target)
        shutil.chown(target, "nobody")
    code, _, err = _dagent(host, "start")
    assert code == 0, err
    done = json.loads((inbox / "done" / "plain.json").read_text())
    assert done["outcome"] == "succeeded", done
    assert (host.data / "out").read_text() == "ok\n"
    reason = (inbox / "failed" / "hidden.toml.error").read_text()
    assert "cannot be resolved in full" in reason and "Permission denied" in reason
