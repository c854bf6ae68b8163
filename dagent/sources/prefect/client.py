"""The Prefect API over HTTP: auth, retries of transient faults, errors as one-line SourceErrors.

Safe to share between threads: each thread gets its own requests.Session (requests does not
promise a Session is thread-safe), all with the same headers and auth.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterable
from typing import Any

import requests
import requests.adapters

from dagent import __version__, retry
from dagent.config import AgentConfig
from dagent.errors import SourceError, one_line

TRANSIENT_STATUS = frozenset({408, 429, 502, 503, 504})
# How many of the last answers' round trips tell how busy the server is now.
ROUND_TRIPS_KEPT = 32


class _Transient(Exception):
    """A response worth retrying; carries Retry-After when the server sent one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _is_transient(error: BaseException) -> bool:
    return isinstance(
        error,
        (
            _Transient,
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,  # an answer cut off mid-body
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

        def once() -> requests.Response:
            with self._lock:
                self._requests += 1
            if tries is not None:
                tries.append(1)
            sent = time.monotonic()
            response = session.request(method, self.url + path, json=body, timeout=self.timeout)
            with self._lock:
                self._round_trips.append(time.monotonic() - sent)
            if response.status_code in TRANSIENT_STATUS:
                raise _Transient(f"{method} {path} -> {response.status_code}", _retry_after(response))
            return response

        try:
            response: requests.Response = retry.call(self.retry, _is_transient, f"{method} {path}", once)
        except (_Transient, requests.exceptions.RequestException) as e:
            raise SourceError(f"Prefect API {self.url}: {method} {path}: {one_line(e, 200)}") from None
        if response.status_code in allowed:
            return None
        if response.status_code in (401, 403):
            raise SourceError(
                f"Prefect API {self.url}: {method} {path} -> {response.status_code}: "
                "not authorised (check api.token / api.auth_string)"
            )
        if response.status_code >= 400:
            raise SourceError(f"Prefect API {self.url}: {method} {path} -> {response.status_code}: {_detail(response)}")
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise SourceError(f"Prefect API {self.url}: {method} {path}: the answer is not JSON") from None

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


def _detail(response: requests.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    text = str(detail).replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."
