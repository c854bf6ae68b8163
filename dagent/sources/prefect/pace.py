"""How fast claims go in the fleet now, as this agent hears it on the event stream: how far the stream
trails the server, and how long after a run is heard of its claim is heard. A fleet's turns are measured
by both (see fleet)."""

from __future__ import annotations

import threading
import time
from collections import deque

# The last KEPT samples of the last RECENT seconds count (a burst's pace is not a quiet hour's); at
# most PENDING runs wait for their second half of a sample (a claim never heard, say). A run claimed
# more than HORIZON after it was heard of was due later: its wait says nothing of the fleet's pace.
KEPT = 64
RECENT = 300.0
PENDING = 4096
HORIZON = 300.0


class Pace:
    """The fleet's claims, timed by this agent: it hears every run of the pool scheduled and claimed, by
    whichever agent, so each agent measures the whole fleet, and all of them measure the same."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scheduled: dict[str, float] = {}  # runs heard of on the stream, not yet claimed → when (monotonic)
        self._sent: dict[str, float] = {}  # its own claims sent, not yet heard back → when (monotonic)
        self._lags: deque[tuple[float, float]] = deque(maxlen=KEPT)  # (when, seconds)
        self._claims: deque[tuple[float, float]] = deque(maxlen=KEPT)

    def scheduled(self, run_id: str) -> None:
        """A run of the pool was heard of on the event stream (once more when it is marked Late: it counts
        from the first)."""
        with self._lock:
            if run_id not in self._scheduled:
                _put(self._scheduled, run_id)

    def not_due(self, run_id: str) -> None:
        """A run heard of turned out to be due later: its claim will not time the fleet's pace."""
        with self._lock:
            self._scheduled.pop(run_id, None)

    def claimed(self, run_id: str) -> None:
        """A run was heard claimed, by any agent or worker."""
        now = time.monotonic()
        with self._lock:
            heard = self._scheduled.pop(run_id, None)
            # Claims by others than its owner count too: left out, the runs taken from a slow owner
            # would be missing from the samples, always the slowest; the head start would shrink, others
            # would take more, and shrink it again.
            if heard is not None and now - heard <= HORIZON:
                self._claims.append((now, now - heard))

    def left(self, run_id: str) -> None:
        """A run left SCHEDULED otherwise than claimed (cancelled, deleted): nothing to time."""
        with self._lock:
            self._scheduled.pop(run_id, None)

    def sent(self, run_id: str) -> None:
        """This agent is about to send a claim of the run."""
        with self._lock:
            _put(self._sent, run_id)

    def dropped(self, run_id: str) -> None:
        """The claim was not accepted: it will not be heard back."""
        with self._lock:
            self._sent.pop(run_id, None)

    def heard(self, run_id: str, round_trip: float) -> None:
        """This agent's accepted claim of the run came back on the stream; less the claim's own `round_trip`."""
        now = time.monotonic()
        with self._lock:
            sent = self._sent.pop(run_id, None)
            if sent is not None:
                self._lags.append((now, max(0.0, now - sent - round_trip)))

    def lag(self) -> float:
        """How far the event stream trails the server now, in seconds: the median (0 with nothing recent)."""
        return self._quantile(self._lags, 0.5)

    def reaction(self) -> float:
        """How long after a run is heard of its claim is heard now, in seconds: the 90th percentile of the
        fleet's claims (0 with nothing recent)."""
        return self._quantile(self._claims, 0.9)

    def _quantile(self, samples: deque[tuple[float, float]], q: float) -> float:
        now = time.monotonic()
        with self._lock:
            recent = sorted(value for at, value in samples if now - at <= RECENT)
        return recent[min(len(recent) - 1, int(q * len(recent)))] if recent else 0.0


def _put(pending: dict[str, float], run_id: str) -> None:
    if len(pending) >= PENDING:
        del pending[next(iter(pending))]  # the oldest: its second half never came
    pending[run_id] = time.monotonic()
