"""How fast claims go for this agent now: how far the event stream trails the server, and how long an
owner takes from hearing of its run to claiming it. A fleet's turns are measured by both (see fleet)."""

from __future__ import annotations

import threading
import time
from collections import deque

# The last KEPT samples of the last RECENT seconds count (a burst's pace is not a quiet hour's); at
# most PENDING runs wait for their second half of a sample (a claim never heard, say).
KEPT = 32
RECENT = 300.0
PENDING = 256


class Pace:
    """This agent's own claims, timed: each agent takes its own pace as the fleet's, as they share one server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._announced: dict[str, float] = {}  # its own runs heard of on the stream → when (monotonic)
        self._sent: dict[str, float] = {}  # claims sent, not yet heard back → when (monotonic)
        self._lags: deque[tuple[float, float]] = deque(maxlen=KEPT)  # (when, seconds)
        self._reactions: deque[tuple[float, float]] = deque(maxlen=KEPT)

    def announced(self, run_id: str) -> None:
        """A run this agent owns was heard of on the event stream."""
        with self._lock:
            _put(self._announced, run_id)

    def not_due(self, run_id: str) -> None:
        """An announced run of its own turned out to be due later: its claim will not time a reaction."""
        with self._lock:
            self._announced.pop(run_id, None)

    def sent(self, run_id: str) -> None:
        """A claim of the run is about to be sent."""
        now = time.monotonic()
        with self._lock:
            heard = self._announced.pop(run_id, None)
            if heard is not None:
                self._reactions.append((now, now - heard))
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
        """How long an owner takes now from hearing of its run to sending its claim, in seconds: the 90th
        percentile, as the runs others took first are missing from the samples (0 with nothing recent)."""
        return self._quantile(self._reactions, 0.9)

    def _quantile(self, samples: deque[tuple[float, float]], q: float) -> float:
        now = time.monotonic()
        with self._lock:
            recent = sorted(value for at, value in samples if now - at <= RECENT)
        return recent[min(len(recent) - 1, int(q * len(recent)))] if recent else 0.0


def _put(pending: dict[str, float], run_id: str) -> None:
    if len(pending) >= PENDING:
        del pending[next(iter(pending))]  # the oldest: its second half never came
    pending[run_id] = time.monotonic()
