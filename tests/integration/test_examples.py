"""The example run files do what their comments say, as a new user would try them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import docker
import pytest

from tests.support import REPO
from tests.support.helpers import Dagent

pytestmark = pytest.mark.integration
RUNS = REPO / "examples" / "runs"


@pytest.fixture
def example_image(engine: docker.DockerClient, image: str) -> Iterator[str]:
    """The examples' image name, local/busybox:latest, pointing at the test image."""
    engine.images.get(image).tag("local/busybox", "latest")
    yield "local/busybox:latest"


@pytest.mark.parametrize("name", ["hello", "exit-code", "limits", "needs-gpu"])
def test_plan_every_runnable_example(dagent: Dagent, name: str) -> None:
    """`dagent plan` accepts each example under the default policy."""
    result = dagent("plan", str(RUNS / f"{name}.toml"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["spec"]["name"] == f"dagent-{name}"


def test_refused_example(dagent: Dagent) -> None:
    """The policy example is refused with exit 2 and both reasons."""
    result = dagent("plan", str(RUNS / "refused-privileged.toml"))
    assert result.returncode == 2
    assert "docker.allow_privileged" in result.stderr and "docker.allow_host_network" in result.stderr


@pytest.mark.parametrize(
    ("name", "code", "output"),
    [("hello", 0, "hello from dagent"), ("exit-code", 3, "working"), ("limits", 0, "hi, cpu quota 50000")],
)
def test_run_examples(dagent: Dagent, example_image: str, name: str, code: int, output: str) -> None:
    """`dagent run` runs each example, prints its output with --logs and exits with its code."""
    config = dagent.config(keep_containers="never")
    result = dagent("run", str(RUNS / f"{name}.toml"), "-c", str(config), "--logs")
    assert result.returncode == code, result.stderr
    assert output in result.stdout
