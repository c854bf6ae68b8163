"""Integration fixtures: a real Docker engine, a local image and registry, a Prefect server, and `dagent` as a
user runs it."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from tests.support import infra, prefect_infra
from tests.support.helpers import Dagent
from tests.support.infra import not_here
from tests.support.prefect_api import PrefectAPI

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def engine() -> Iterator[docker.DockerClient]:
    """A Docker engine that answers; installed and started here if needed, skipped only if impossible."""
    try:
        with infra.docker_engine():
            client = docker.from_env()
            yield client
            client.close()
    except infra.Unavailable as e:
        not_here(e, "no Docker engine can run here")


@pytest.fixture(scope="session")
def image(engine: docker.DockerClient) -> str:
    """A local busybox image (no registry pull), cached by content hash."""
    try:
        return infra.busybox_image()
    except infra.Unavailable as e:
        not_here(e, "cannot build the busybox test image")


@pytest.fixture(scope="session")
def registry(engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[infra.Registry]:
    """Debian's docker-registry on 127.0.0.1."""
    try:
        reg = infra.Registry(tmp_path_factory.mktemp("registry"))
    except infra.Unavailable as e:
        not_here(e, "no local registry can run here")
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def auth_registry(engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[infra.Registry]:
    """A second local registry that wants a user name and password (htpasswd)."""
    try:
        reg = infra.Registry(tmp_path_factory.mktemp("auth-registry"), credentials=("ci", "pa55-word"))
    except infra.Unavailable as e:
        not_here(e, "no local registry can run here")
    yield reg
    reg.stop()


@pytest.fixture
def dagent(engine: docker.DockerClient, tmp_path: Path) -> Iterator[Dagent]:
    """A uniquely named agent; its containers are removed after the test."""
    agent = Dagent(name=f"it-{uuid.uuid4().hex[:8]}", workdir=tmp_path, client=engine)
    yield agent
    for container in agent.containers():
        container.remove(force=True)


@pytest.fixture
def inbox(dagent: Dagent) -> Path:
    """An inbox directory with new/ ready."""
    path = dagent.workdir / "inbox"
    (path / "new").mkdir(parents=True)
    return path


@pytest.fixture
def docker_network(engine: docker.DockerClient) -> Iterator[str]:
    """A user-defined bridge network for one test."""
    name = f"dagent-it-{uuid.uuid4().hex[:8]}"
    network = engine.networks.create(name, driver="bridge")
    yield name
    network.remove()


RunDagent = Callable[..., subprocess.CompletedProcess[str]]


# --- a Prefect server, shared by every module that needs one ----------------------------------------


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[prefect_infra.PrefectServer]:
    """Prefect 3.8.8 in its own venv, serving on 127.0.0.1."""
    try:
        server = prefect_infra.PrefectServer(prefect_infra.prefect_venv(), tmp_path_factory.mktemp("prefect"))
    except (prefect_infra.Unavailable, subprocess.CalledProcessError) as e:
        not_here(e, "no Prefect server can run here")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def flow_image(engine: docker.DockerClient) -> str:
    """An image that runs this repo's test flows with `prefect flow-run execute` (built once, cached)."""
    try:
        return prefect_infra.flow_image()
    except prefect_infra.Unavailable as e:
        not_here(e, "cannot build the flow image")


@pytest.fixture
def api(prefect_server: prefect_infra.PrefectServer) -> PrefectAPI:
    return PrefectAPI(prefect_server.api_url)


@pytest.fixture
def pool() -> str:
    return f"pool-{uuid.uuid4().hex[:8]}"


# --- in CI, a skip is a failure ----------------------------------------------------------------------
# CI installs every component these tests need, so a test that skips there has lost what it tests and
# would pass unseen. A test that may skip in CI is listed here, by node id, with why.
ALLOWED_SKIPS: dict[str, str] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    in_ci = os.environ.get("CI") == "true"
    if in_ci and report.skipped and not hasattr(report, "wasxfail") and item.nodeid not in ALLOWED_SKIPS:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"skipped in CI ({reason}): CI installs every component, so a skip hides a test that did not run "
            "(tests/integration/conftest.py ALLOWED_SKIPS lists the exceptions)"
        )
