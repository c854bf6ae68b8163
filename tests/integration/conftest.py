"""Integration fixtures: a real Docker engine, a local image and registry, and `dagent` as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.conftest import REPO
from tests.integration import infra

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
        pytest.skip(f"no Docker engine can run here: {e}")


@pytest.fixture(scope="session")
def image(engine: docker.DockerClient) -> str:
    """A local busybox image (no registry pull), cached by content hash."""
    try:
        return infra.busybox_image()
    except infra.Unavailable as e:
        pytest.skip(f"cannot build the busybox test image: {e}")


@pytest.fixture(scope="session")
def registry(engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[infra.Registry]:
    """Debian's docker-registry on 127.0.0.1."""
    try:
        reg = infra.Registry(tmp_path_factory.mktemp("registry"))
    except infra.Unavailable as e:
        pytest.skip(f"no local registry can run here: {e}")
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def auth_registry(engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[infra.Registry]:
    """A second local registry that wants a user name and password (htpasswd)."""
    try:
        reg = infra.Registry(tmp_path_factory.mktemp("auth-registry"), credentials=("ci", "pa55-word"))
    except infra.Unavailable as e:
        pytest.skip(f"no local registry can run here: {e}")
    yield reg
    reg.stop()


@dataclass
class Dagent:
    """Runs `dagent` in a subprocess with its own agent name and config, as a user would."""

    name: str
    workdir: Path
    client: docker.DockerClient

    def config(self, text: str = "", **docker_keys: Any) -> Path:
        """Write agent.toml for this agent; keyword args go under [docker]."""
        lines = [f'name = "{self.name}"', text]
        if docker_keys:
            lines.append("[docker]")
            lines += [f"{k} = {_toml(v)}" for k, v in docker_keys.items()]
        path = self.workdir / "agent.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def run_file(self, run_id: str, **fields: Any) -> Path:
        """Write a run file."""
        path = self.workdir / f"{run_id}.toml"
        path.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in {"id": run_id, **fields}.items()))
        return path

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DAGENT_", "PREFECT_")) and k != "DOCKER_HOST"}
        return subprocess.run(
            [sys.executable, "-m", "dagent", *args],
            cwd=self.workdir,
            env={**base, "PYTHONPATH": str(REPO), "DAGENT_RETRY__BACKOFF_INITIAL": "0.1", **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def containers(self, run_id: str | None = None) -> list[Any]:
        """This agent's containers (all states)."""
        labels = [f"dagent.agent={self.name}"] + ([f"dagent.run-id={run_id}"] if run_id else [])
        for _ in range(10):
            try:
                return list(self.client.containers.list(all=True, filters={"label": labels}))
            except docker.errors.NotFound:
                continue  # removed between docker-py's list and its inspect of each: list again
        return list(self.client.containers.list(all=True, filters={"label": labels}))


def _toml(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


@pytest.fixture
def dagent(engine: docker.DockerClient, tmp_path: Path) -> Iterator[Dagent]:
    """A uniquely named agent; its containers are removed after the test."""
    agent = Dagent(name=f"it-{uuid.uuid4().hex[:8]}", workdir=tmp_path, client=engine)
    yield agent
    for container in agent.containers():
        container.remove(force=True)


@pytest.fixture
def docker_network(engine: docker.DockerClient) -> Iterator[str]:
    """A user-defined bridge network for one test."""
    name = f"dagent-it-{uuid.uuid4().hex[:8]}"
    network = engine.networks.create(name, driver="bridge")
    yield name
    network.remove()


RunDagent = Callable[..., subprocess.CompletedProcess[str]]
