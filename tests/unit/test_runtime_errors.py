"""Classification of daemon errors into transient (retried) and permanent (not retried)."""

from __future__ import annotations

import inspect

import docker.errors
import pytest
import requests

from dagent.daemon_faults import PERMANENT_DOCKER_ERRORS, STATUS_JUDGED_DOCKER_ERRORS, is_transient


def test_every_docker_error_class_is_classified() -> None:
    """A docker.errors class that is neither permanent nor judged by status fails this test."""
    classes = {
        name
        for name, cls in inspect.getmembers(docker.errors, inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__ == "docker.errors" and name != "DockerException"
    }
    assert classes <= PERMANENT_DOCKER_ERRORS | STATUS_JUDGED_DOCKER_ERRORS
    for name in PERMANENT_DOCKER_ERRORS:
        cls = getattr(docker.errors, name)
        assert not is_transient(cls.__new__(cls))  # constructors differ; the class is what counts


def _api_error(status: int, explanation: str = "boom") -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("x", response=response, explanation=explanation)


@pytest.mark.parametrize(("status", "transient"), [(500, True), (502, True), (503, True), (504, True), (408, True), (429, True),
                                                    (400, False), (401, False), (403, False), (404, False), (409, False)])  # fmt: skip
def test_api_errors_by_status(status: int, transient: bool) -> None:
    """5xx, 408 and 429 are retried; other 4xx never."""
    assert is_transient(_api_error(status)) is transient


@pytest.mark.parametrize(
    "explanation", ["no basic auth credentials", "manifest unknown", "pull access denied", "unauthorized: x"]
)
def test_registry_refusals_wrapped_in_500_are_permanent(explanation: str) -> None:
    """An old daemon's 500 around a registry refusal is not retried."""
    assert not is_transient(_api_error(500, explanation))


def test_connection_faults_are_transient() -> None:
    """Connection errors and timeouts are retried, also when docker-py wraps them at client creation."""
    assert is_transient(requests.exceptions.ConnectionError("reset"))
    assert is_transient(requests.exceptions.ReadTimeout("slow"))
    try:
        try:
            raise requests.exceptions.ConnectionError("refused")
        except requests.exceptions.ConnectionError as cause:
            raise docker.errors.DockerException("Error while fetching server API version") from cause
    except docker.errors.DockerException as wrapped:
        assert is_transient(wrapped)
    assert not is_transient(docker.errors.DockerException("bad config"))
    assert not is_transient(ValueError("not ours"))
