"""The agent image: built by examples/image/build.sh from a local Debian base (debootstrap, no registry),
run as an operator runs it against the host's daemon, with the socket mounted."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.support import infra
from tests.support.helpers import REPO, drop, results, wait_for
from tests.support.infra import not_here

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def agent_image(engine: docker.DockerClient) -> str:
    try:
        base = infra.debian_python_image()
    except infra.Unavailable as e:
        not_here(e, "no Debian base image can be made here")
    tag = f"dagent-test/agent:{uuid.uuid4().hex[:8]}"
    built = subprocess.run(["bash", str(REPO / "examples/image/build.sh"), "--base", base, "--tag", tag],
                           capture_output=True, text=True, timeout=900)  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    yield tag
    engine.images.remove(tag, force=True)


@pytest.fixture
def shared_inbox(tmp_path: Path) -> Iterator[Path]:
    """An inbox the image's user (uid 10001) can write, at the same path inside as outside."""
    inbox = tmp_path / "inbox"
    (inbox / "new").mkdir(parents=True)
    for path in (tmp_path, inbox, inbox / "new"):
        path.chmod(0o777)
    yield inbox
    # Files the agent made belong to uid 10001; pytest's clean-up can remove them as root.


def test_the_image_runs_runs_as_a_non_root_user_reports_healthy_and_drains(
    engine: docker.DockerClient, agent_image: str, image: str, shared_inbox: Path
) -> None:
    name = f"it-image-{uuid.uuid4().hex[:6]}"
    socket_gid = os.stat("/var/run/docker.sock").st_gid
    agent = engine.containers.run(
        agent_image, detach=True, name=name, group_add=[str(socket_gid)],
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
                 str(shared_inbox): {"bind": str(shared_inbox), "mode": "rw"}},
        environment={"DAGENT_SOURCE": "inbox", "DAGENT_NAME": name, "DAGENT_INBOX__PATH": str(shared_inbox),
                     "DAGENT_POLL_INTERVAL": "0.2", "DAGENT_DOCKER__KEEP_CONTAINERS": "never",
                     "DAGENT_HEALTH__ADDRESS": "0.0.0.0:8080"},
        healthcheck={"test": ["CMD", "dagent", "health"], "interval": 1_000_000_000, "timeout": 5_000_000_000,
                     "retries": 3, "start_period": 1_000_000_000},
    )  # fmt: skip
    try:
        drop(shared_inbox, "from-image", image=image, command=["sh", "-c", "echo hi; sleep 3"])
        wait_for(lambda: _running_runs(engine, name) == 1, 60, "the run's container, started by the agent in the image")

        def health() -> str:
            agent.reload()
            return str(agent.attrs["State"].get("Health", {}).get("Status"))

        wait_for(lambda: health() == "healthy", 60, "HEALTHCHECK healthy")
        assert agent.attrs["Config"]["User"] == "10001:10001"
        agent.kill(signal="SIGQUIT")  # drain: the run in flight finishes first
        assert agent.wait(timeout=60)["StatusCode"] == 0, agent.logs().decode()[-2000:]
        assert results(shared_inbox)["from-image"]["outcome"] == "succeeded"
        assert _running_runs(engine, name) == 0
    finally:
        logs = agent.logs().decode()
        agent.remove(force=True)
        for c in engine.containers.list(all=True, filters={"label": f"dagent.agent={name}"}):
            c.remove(force=True)
    assert "drained" in logs, logs[-2000:]


def _running_runs(engine: docker.DockerClient, agent: str) -> int:
    return len(engine.containers.list(filters={"label": f"dagent.agent={agent}"}))


def test_host_paths_are_refused_when_the_agent_cannot_see_the_hosts(
    engine: docker.DockerClient, agent_image: str, image: str, shared_inbox: Path, tmp_path: Path
) -> None:
    """In its own mount namespace the agent cannot vouch for host paths: a run's bind is refused, not guessed."""
    name = f"it-image-{uuid.uuid4().hex[:6]}"
    data = tmp_path / "data"
    data.mkdir()
    agent = engine.containers.run(
        agent_image, detach=True, name=name, group_add=[str(os.stat("/var/run/docker.sock").st_gid)],
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
                 str(shared_inbox): {"bind": str(shared_inbox), "mode": "rw"}},
        environment={"DAGENT_SOURCE": "inbox", "DAGENT_NAME": name, "DAGENT_INBOX__PATH": str(shared_inbox),
                     "DAGENT_POLL_INTERVAL": "0.2", "DAGENT_DOCKER__ALLOWED_HOST_PATHS": str(data)},
    )  # fmt: skip
    try:
        drop(shared_inbox, "bind", image=image, command=["true"], volumes=[f"{data}:/data"])
        wait_for(lambda: (shared_inbox / "failed" / "bind.toml").exists(), 60, "the run refused")
        time.sleep(0.5)
        logs = agent.logs().decode()
        assert "in a container, bind each allowed host path at the same path inside" in logs, logs[-1500:]
    finally:
        agent.remove(force=True)
