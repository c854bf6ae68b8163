"""Classification of daemon errors into transient (retried) and permanent (not retried)."""

from __future__ import annotations

import inspect

import docker.errors
import pytest
import requests

from dagent.daemon_faults import PERMANENT_DOCKER_ERRORS, STATUS_JUDGED_DOCKER_ERRORS, is_transient, reason


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


# What urllib3 says when a TLS 1.3 daemon drops a handshake that came without a client certificate
# before its alert is read (the race seen in CI), and when the alert did arrive.
_EOF = "HTTPSConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: /version (Caused by SSLError(SSLEOFError(8, '[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol (_ssl.c:1006)')))"
_ALERT = "HTTPSConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: /version (Caused by SSLError(SSLError(1, '[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required (_ssl.c:2580)')))"


@pytest.mark.parametrize("text", [_EOF, _ALERT])
def test_a_refused_handshake_without_a_client_certificate_names_the_key(text: str) -> None:
    error = requests.exceptions.SSLError(text)
    assert reason(error, sent_no_client_cert=True).endswith(
        "the daemon wants a client certificate (docker.tls.client_cert)"
    )


def test_an_eof_with_a_client_certificate_sent_does_not_claim_one_is_missing() -> None:
    said = reason(requests.exceptions.SSLError(_EOF), sent_no_client_cert=False)
    assert "wants a client certificate" not in said and "docker.tls.client_cert" in said


def test_a_certificate_the_client_does_not_trust_is_not_retried() -> None:
    """Attack first (issue 27): requests' SSLError is a ConnectionError, so a wrong CA was retried four times."""
    verify = "HTTPSConnectionPool(host='127.0.0.1', port=1): Max retries exceeded (Caused by SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate (_ssl.c:1006)')))"
    assert not is_transient(requests.exceptions.SSLError(verify))
    wrapped = docker.errors.DockerException("Error while fetching server API version")
    wrapped.__cause__ = requests.exceptions.SSLError(verify)
    assert not is_transient(wrapped)
    assert is_transient(requests.exceptions.SSLError(_EOF))  # a handshake cut short may be a restart
