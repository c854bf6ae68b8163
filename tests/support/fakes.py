"""Fakes at dagent's I/O seams, so the agent loop's branches run as unit tests in milliseconds.

They record what they were asked and can be told to fail at a given call; they never pretend to be
Docker or Prefect in a test that claims to test those (the integration tests use the real ones).
"""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters

from dagent.contracts import Claim, ContainerInfo, DaemonFacts, RunHandle, RunResult, utc_now
from dagent.policy import VolumeFacts
from dagent.runs import RunRequest
from dagent.spec import ContainerSpec, Origin


@dataclass
class FakeContainer:
    id: str
    name: str
    short_id: str = ""


@dataclass
class FakeRuntime:
    """A runtime whose containers end as `exit_codes` says (default 0); `fail` raises at named calls."""

    exit_codes: dict[str, int] = field(default_factory=dict)
    fail: dict[str, list[BaseException]] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    launched: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    containers: list[ContainerInfo] = field(default_factory=list)
    block: threading.Event | None = None  # when set, watch() waits for it (a long run)
    config: Any = None  # the last configuration a reload gave it
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        errors = self.fail.get(name)
        if errors:
            raise errors.pop(0)

    def verify(self) -> dict[str, Any]:
        self._call("verify")
        return {"Version": "fake"}

    def ping(self) -> bool:
        return True

    def daemon_facts(self) -> DaemonFacts:
        self._call("daemon_facts")
        return DaemonFacts("/var/lib/docker", "/var/run/docker.sock", None)

    def network_driver(self, name: str) -> str | None:
        return None

    def volume(self, name: str) -> VolumeFacts | None:
        return None

    def image_names(self, reference: str) -> tuple[str, ...] | None:
        return None

    def managed(self, agent: str | None = None, run_id: str | None = None) -> list[ContainerInfo]:
        self._call("managed")
        return [c for c in self.containers if (agent is None or c.labels.get("dagent.agent") == agent)
                and (run_id is None or c.run_id == run_id)]  # fmt: skip

    def container_ids(self) -> frozenset[str]:
        return frozenset(c.id for c in self.containers)

    def prepare(self, spec: ContainerSpec) -> None:
        self._call("prepare")

    def launch(self, spec: ContainerSpec) -> Any:
        self._call("launch")
        self.launched.append(spec.run_id)
        n = next(self._ids)
        return FakeContainer(id=f"c{n:04d}", name=spec.name, short_id=f"c{n:04d}")

    def watch(
        self, spec: ContainerSpec, container: Any, handle: RunHandle | None = None, on_line: Any = None
    ) -> RunResult:
        self._call("watch")
        if self.block is not None:
            while not self.block.wait(0.01):
                if handle is not None and handle.cancel.is_set():
                    return RunResult.ended(spec.run_id, "cancelled", 143, container.id, utc_now())
        code = self.exit_codes.get(spec.run_id, 0)
        return RunResult.ended(spec.run_id, "succeeded" if code == 0 else "failed", code, container.id, utc_now())

    def finish(self, spec: ContainerSpec, result: RunResult) -> None:
        self._call("finish")

    def stop(self, container: Any, grace: float) -> None:
        self._call("stop")

    def stop_id(self, container_id: str, grace: float) -> None:
        self._call("stop_id")
        self.stopped.append(container_id)

    def remove_id(self, container_id: str) -> None:
        self._call("remove_id")
        self.removed.append(container_id)

    def reconfigure(self, config: Any) -> None:
        self.config = config

    def gc(self, agent: str, older_than: float, busy: Any = ()) -> list[ContainerInfo]:
        self._call("gc")
        gone = [c for c in self.managed(agent) if c.state == "exited" and c.run_id not in busy]
        for c in gone:
            self.containers.remove(c)
            self.removed.append(c.id)
        return gone


@dataclass
class FakeSource:
    """A source that hands out `queue`d runs and records reports, refusals and log lines."""

    name: str = "fake"
    queue: list[RunRequest] = field(default_factory=list)
    reports: list[RunResult] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    cancel: set[str] = field(default_factory=set)
    recovered: list[Claim] = field(default_factory=list)
    fail: dict[str, list[BaseException]] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    config: Any = None  # the last configuration a reload gave it

    def _call(self, name: str) -> None:
        with self.lock:
            self.calls[name] += 1
            errors = self.fail.get(name)
            if errors:
                raise errors.pop(0)

    def reconfigure(self, config: Any) -> None:
        self.config = config

    def connect(self) -> None:
        self._call("connect")

    def recover(self, containers: Mapping[str, ContainerInfo], live: Collection[str]) -> Sequence[Claim]:
        self._call("recover")
        return list(self.recovered)

    def poll(self, limit: int) -> Sequence[Claim]:
        self._call("poll")
        with self.lock:
            taken, self.queue = self.queue[:limit], self.queue[limit:]
        return [Claim(run, Origin(self.name), run.id) for run in taken]

    def starting(self, claim: Claim) -> bool:
        self._call("starting")
        return claim.run.id not in self.cancel

    def started(self, claim: Claim, container_id: str) -> None:
        self._call("started")

    def report(self, claim: Claim, result: RunResult) -> None:
        self._call("report")
        with self.lock:
            self.reports.append(result)

    def refuse(self, claim: Claim, reason: str) -> None:
        self._call("refuse")
        with self.lock:
            self.refused.append((claim.run.id, reason))

    def cancellations(self, run_ids: Sequence[str]) -> Sequence[str]:
        return [r for r in run_ids if r in self.cancel]

    def watch(self, wake: Callable[[], None]) -> None:
        pass

    def heartbeat(self) -> None:
        self._call("heartbeat")

    def log(self, claim: Claim, level: str, message: str) -> None:
        pass

    def close(self) -> None:
        pass


class RoutingTransport(requests.adapters.BaseAdapter):
    """A requests transport that answers from a handler instead of the network (like httpx's MockTransport).

    `handler(method, path, body)` returns (status, json) or raises (a lost answer: requests'
    ConnectionError). Every request is recorded in `seen`. Many sessions (threads) may mount one.
    """

    def __init__(self, handler: Callable[[str, str, Any], tuple[int, Any]]) -> None:
        super().__init__()
        self.handler = handler
        self.seen: list[tuple[str, str, Any]] = []
        self.lock = threading.Lock()

    def send(self, request: Any, **kwargs: Any) -> requests.Response:
        parts = urlsplit(request.url)
        path = parts.path.removeprefix("/api") + (f"?{parts.query}" if parts.query else "")
        body = json.loads(request.body) if request.body else None
        with self.lock:
            self.seen.append((request.method, path, body))
        status, answer = self.handler(request.method, path, body)
        response = requests.Response()
        response.status_code = status
        response.raw = io.BytesIO(b"" if answer is None else json.dumps(answer).encode())  # read as a stream
        response.headers["Content-Type"] = "application/json"
        response.request = request
        response.url = request.url
        return response

    def close(self) -> None:
        pass


class FakeClock:
    """A `dagent.clock.Clock` that moves only when told: `advance` fires the timers it passes, in order,
    in the caller's thread (so a test needs no sleep and no wait)."""

    def __init__(self, wall: float | None = None) -> None:
        self._monotonic = 1000.0
        self._wall = time.time() if wall is None else wall  # runs a test makes carry the host's times
        self._timers: list[_FakeTimer] = []

    def monotonic(self) -> float:
        return self._monotonic

    def time(self) -> float:
        return self._wall

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._wall, timezone.utc)

    def call_later(self, delay: float, fn: Callable[[], None]) -> _FakeTimer:
        timer = _FakeTimer(self._monotonic + max(0.0, delay), fn)
        self._timers.append(timer)
        return timer

    def set_wall(self, wall: float) -> None:
        """Set the wall clock alone (a host whose clock was changed)."""
        self._wall = wall

    def advance(self, seconds: float) -> None:
        """Move both clocks on, firing each timer that falls due on the way at its own time."""
        end = self._monotonic + seconds
        while True:
            due = [t for t in self._timers if t.is_alive() and t.at <= end]
            if not due:
                break
            timer = min(due, key=lambda t: t.at)
            self._step_to(timer.at)
            timer.fire()
        self._step_to(end)
        self._timers = [t for t in self._timers if t.is_alive()]

    def _step_to(self, at: float) -> None:
        if at > self._monotonic:
            self._wall += at - self._monotonic
            self._monotonic = at


class _FakeTimer:
    def __init__(self, at: float, fn: Callable[[], None]) -> None:
        self.at = at
        self._fn: Callable[[], None] | None = fn

    def cancel(self) -> None:
        self._fn = None

    def is_alive(self) -> bool:
        return self._fn is not None

    def fire(self) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            fn()
