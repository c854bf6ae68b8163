"""The Prefect API over HTTP: auth, retries of transient faults, errors as one-line SourceErrors.

Safe to share between threads: each thread gets its own requests.Session (requests does not
promise a Session is thread-safe), all with the same headers and auth.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import requests
import requests.adapters

from dagent import __version__, retry
from dagent.config import AgentConfig
from dagent.daemon_faults import tls_failure
from dagent.errors import SourceError, SourceUnavailable, one_line

TRANSIENT_STATUS = frozenset({408, 429, 502, 503, 504})
# Answers that say the agent, not the request, is at fault: never one run's problem.
AGENT_FAULT_STATUS = frozenset({401, 408, 429})
# The largest answer read: far past any page of runs, short of what would exhaust the agent's memory.
MAX_ANSWER_BYTES = 32 << 20
_CHUNK = 64 << 10
# How many of the last answers' round trips tell how busy the server is now.
ROUND_TRIPS_KEPT = 32
# Prefect's ids are UUIDs; what goes into a path is held to their characters, so no `/`, `.`, `?` or
# `%` in an id from the server (or a job variable) can point a request at another endpoint.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def path_id(value: Any, what: str = "id") -> str:
    """A Prefect id fit for a URL path segment; SourceError otherwise, so `../x` never reaches a path."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise SourceError(f"Prefect API: {what} {str(value)[:60]!r} is not a UUID")
    return value


def decode(content: bytes, what: str) -> Any:
    """JSON from an answer; any failure (not JSON, nested past Python's recursion limit) is a SourceError."""
    try:
        return json.loads(content)
    except (ValueError, RecursionError) as e:
        raise SourceError(f"{what}: the answer is not usable JSON ({type(e).__name__})") from None


@dataclass(frozen=True)
class _Answer:
    status: int
    content: bytes


class _TooSlow(Exception):
    """An answer still arriving past its deadline (a server that drips bytes)."""


class _Transient(Exception):
    """A response worth retrying; carries Retry-After when the server sent one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _is_transient(error: BaseException) -> bool:
    if tls_failure(error):
        return False  # an untrusted certificate stays untrusted: said once, at once
    return isinstance(
        error,
        (
            _Transient,
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,  # an answer cut off mid-body
            _TooSlow,
        ),
    )


class PrefectClient:
    """A requests.Session for one API, with retries of transient faults and errors as SourceError."""

    def __init__(self, config: AgentConfig, transport: requests.adapters.BaseAdapter | None = None) -> None:
        if not config.api.url:
            raise SourceError(
                "api.url is not set: give it in agent.toml, DAGENT_API__URL, PREFECT_API_URL or --api-url"
            )
        self.url = config.api.url
        self.timeout = config.api.timeout
        self.retry = config.retry
        self.headers = {"User-Agent": f"dagent/{__version__}"}
        self.auth: tuple[str, str] | None = None
        if config.api.token is not None:
            self.headers["Authorization"] = f"Bearer {config.api.token.get_secret_value()}"
        elif config.api.auth_string is not None:
            user, _, password = config.api.auth_string.get_secret_value().partition(":")
            self.auth = (user, password)
        self._transport = transport  # a test's stand-in for the network, mounted on every session
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._requests = 0
        self._round_trips: collections.deque[float] = collections.deque(maxlen=ROUND_TRIPS_KEPT)

    @property
    def sent(self) -> int:
        """Requests sent so far, retries included (the benchmark's requests-per-run figure)."""
        with self._lock:
            return self._requests

    def round_trip(self) -> float:
        """The median time the server took to answer this agent's last requests, in seconds (0 before any)."""
        with self._lock:
            kept = sorted(self._round_trips)
        return kept[len(kept) // 2] if kept else 0.0

    @property
    def session(self) -> requests.Session:
        """This thread's session: one per thread, as requests does not promise sharing one is safe."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            if self._transport is not None:
                session.mount("http://", self._transport)
                session.mount("https://", self._transport)
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        session.headers.update(self.headers)
        session.auth = self.auth
        return session

    def call(
        self, method: str, path: str, body: Any = None, *, allow: Iterable[int] = (), tries: list[int] | None = None
    ) -> Any:
        """One API call; the decoded JSON (None for 204 or an allowed error status).

        `tries`, when given, gets one entry per attempt: more than one means an earlier attempt
        may have reached the server even though its answer was lost.
        """
        allowed = set(allow)
        session = self.session
        where = f"Prefect API {self.url}: {method} {path}"

        def once() -> _Answer:
            with self._lock:
                self._requests += 1
            if tries is not None:
                tries.append(1)
            sent = time.monotonic()
            response = session.request(method, self.url + path, json=body, timeout=self.timeout, stream=True)
            try:
                content = _read(response, sent + self.timeout, where)
            finally:
                response.close()
            with self._lock:
                self._round_trips.append(time.monotonic() - sent)
            if response.status_code in TRANSIENT_STATUS:
                raise _Transient(f"{method} {path} -> {response.status_code}", _retry_after(response))
            return _Answer(response.status_code, content)

        try:
            answer: _Answer = retry.call(self.retry, _is_transient, f"{method} {path}", once)
        except (_Transient, _TooSlow, requests.exceptions.RequestException) as e:
            raise SourceUnavailable(f"{where}: {one_line(e, 200)}") from None
        status = answer.status
        if status in allowed:
            return None
        if status in (401, 403):
            kind = SourceUnavailable if status in AGENT_FAULT_STATUS else SourceError
            raise kind(f"{where} -> {status}: not authorised (check api.token / api.auth_string)")
        if status >= 500:
            raise SourceUnavailable(f"{where} -> {status}: {_detail(answer.content)}")
        if status >= 400:
            raise SourceError(f"{where} -> {status}: {_detail(answer.content)}")
        if status == 204 or not answer.content:
            return None
        return decode(answer.content, where)

    def close(self) -> None:
        """Close every thread's connection pool."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _read(response: requests.Response, deadline: float, where: str) -> bytes:
    """The whole body, by its deadline and within MAX_ANSWER_BYTES; a slow drip is a timeout."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(_CHUNK):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise SourceError(f"{where}: the answer is over {MAX_ANSWER_BYTES >> 20} MiB")
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise _TooSlow("the whole answer took longer than api.timeout")
    return b"".join(chunks)


def _detail(content: bytes) -> str:
    try:
        answer = json.loads(content)
        detail = answer.get("detail", answer) if isinstance(answer, dict) else answer
    except (ValueError, RecursionError):
        detail = content[:400].decode("utf-8", "replace")
    text = str(detail).replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."
