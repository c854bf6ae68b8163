"""Which Docker daemon faults are worth a retry, and how a daemon error reads in one line (pure)."""

from __future__ import annotations

from typing import Any

import requests

from dagent.errors import one_line

# docker.errors classes that are never worth a retry. APIError (and its NotFound, ImageNotFound
# subclasses) is judged by HTTP status instead; a test fails when a docker.errors class is in neither.
PERMANENT_DOCKER_ERRORS = frozenset(
    {
        "BuildError",
        "ContainerError",
        "ContextAlreadyExists",
        "ContextException",
        "ContextNotFound",
        "DeprecatedMethod",
        "ImageLoadError",
        "InvalidArgument",
        "InvalidConfigFile",
        "InvalidRepository",
        "InvalidVersion",
        "MissingContextParameter",
        "NullResource",
        "StreamParseError",
        "TLSParameterError",
    }
)
STATUS_JUDGED_DOCKER_ERRORS = frozenset({"APIError", "NotFound", "ImageNotFound"})
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
PERMANENT_MARKERS = ("no basic auth credentials", "unauthorized", "denied", "manifest unknown", "not found")


# A response cut off mid-body (a connection dropped while the daemon answered).
CUT_SHORT = requests.exceptions.ChunkedEncodingError


def is_transient(error: BaseException) -> bool:
    """True for faults worth retrying: connection errors, timeouts, 408/429/5xx from the daemon."""
    import docker.errors

    if tls_failure(error):
        return False  # a certificate the client does not trust stays untrusted: one line at once
    if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, CUT_SHORT)):
        return True
    if isinstance(error, docker.errors.APIError):
        # Older daemons wrap a registry's "no such image" and "unauthorized" in a 500.
        explanation = str(error.explanation or "").lower()
        if any(marker in explanation for marker in PERMANENT_MARKERS):
            return False
        return error.status_code in TRANSIENT_STATUS
    if isinstance(error, docker.errors.DockerException):
        # docker-py wraps "cannot connect" at client creation in a bare DockerException.
        cause = error.__cause__ or error.__context__
        return isinstance(cause, (requests.exceptions.ConnectionError, requests.exceptions.Timeout))
    return False


# What a TLS handshake says when a certificate (or the protocol) is wrong: no retry changes that. An
# EOF in the handshake is left transient, as a daemon restarting mid-handshake looks the same.
PERMANENT_TLS = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "unknown ca", "bad certificate",
                 "certificate required", "WRONG_VERSION_NUMBER", "wrong version number")  # fmt: skip


def tls_failure(error: BaseException) -> bool:
    """True for a TLS handshake that failed on a certificate (requests' SSLError is a ConnectionError)."""
    seen: BaseException | None = error
    for _ in range(5):  # docker-py wraps the requests error in a DockerException
        if seen is None:
            return False
        if isinstance(seen, requests.exceptions.SSLError):
            return any(marker in str(seen) for marker in PERMANENT_TLS)
        seen = seen.__cause__ or seen.__context__
    return False


def explain(error: Any) -> str:
    explanation = getattr(error, "explanation", None) or str(error)
    status = getattr(error, "status_code", None)
    text = one_line(str(explanation)) if explanation else type(error).__name__
    return f"{text} (HTTP {status})" if status else text


# TLS failures as OpenSSL words them, and what to look at.
_TLS_REASONS = (
    ("CERTIFICATE_VERIFY_FAILED", "TLS: the daemon's certificate is not signed by docker.tls.ca_cert"),
    ("certificate required", "TLS: the daemon wants a client certificate (docker.tls.client_cert)"),
    ("unknown ca", "TLS: the daemon does not trust docker.tls.client_cert"),
    ("bad certificate", "TLS: the daemon refused docker.tls.client_cert"),
    ("WRONG_VERSION_NUMBER", "TLS: the daemon does not speak TLS at this address"),
    ("wrong version number", "TLS: the daemon does not speak TLS at this address"),
)


# A TLS 1.3 server that wants a client certificate may close the socket before its alert is read;
# OpenSSL then reports an EOF in the handshake instead of "certificate required".
_TLS_EOF = ("EOF occurred in violation of protocol", "UNEXPECTED_EOF_WHILE_READING")


def reason(error: BaseException, *, sent_no_client_cert: bool = False) -> str:
    """What went wrong reaching the daemon, in a few words; TLS failures name the key to look at."""
    text = str(error)
    for marker, meaning in _TLS_REASONS:
        if marker in text:
            return meaning
    if any(marker in text for marker in _TLS_EOF):
        if sent_no_client_cert:
            return "TLS: handshake closed; the daemon wants a client certificate (docker.tls.client_cert)"
        return "TLS: the daemon closed the handshake (does it trust docker.tls.client_cert?)"
    for marker in ("Connection refused", "No such file or directory", "Name or service not known", "timed out"):
        if marker in text:
            return marker.lower()
    return one_line(error, 160)
