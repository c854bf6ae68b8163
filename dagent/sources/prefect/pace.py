"""How fast claims go in the fleet now, as this agent hears it on the event stream: how far the stream
trails the server, and how long after a run is heard of its claim is heard. A fleet's turns are measured
by both (see fleet)."""

from __future__ import annotations

import threading
from collections import deque

from dagent.clock import SYSTEM, Clock
from dagent.stats import quantile

# The last KEPT samples of the last RECENT seconds count (a burst's pace is not a quiet hour's); at
# most PENDING runs wait for their second half of a sample (a claim never heard, say). A run claimed
# more than HORIZON after it was heard of was due later, or held in a paused queue: its wait says
# nothing of the fleet's pace. (One held less long still counts, and lifts the head start for RECENT
# at most: a run is not told due later by its event, only by a list that shows it.)
KEPT = 64
RECENT = 300.0
PENDING = 4096
HORIZON = 300.0
# A run another agent took at its turn had waited out a head start the pace itself set: counted in
# full, each such run set the next head start longer still (a pool whose agents serve different
# queues: half its runs owned by an agent that cannot take them, and the head start climbing 1 s a
# minute towards fleet.HEAD_MAX). Left out, the runs taken from a busy owner, its slowest, go missing
# and the head start shrinks under a burst. So they count, as slow as the owners' own claims are now
# at most: TAKEN_CAP times their 90th percentile.
TAKEN_CAP = 1.5


class Pace:
    """The fleet's claims, timed by this agent: it hears every run of the pool scheduled and claimed, by
    whichever agent, so each agent measures the whole fleet, and all of them nearly the same (a run an
    agent's own list shows due later is left out by that agent only)."""

    def __init__(self, clock: Clock = SYSTEM) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._scheduled: dict[str, float] = {}  # runs heard of on the stream, not yet claimed → when (monotonic)
        self._sent: dict[str, float] = {}  # its own claims sent, not yet heard back → when (monotonic)
        self._lags: deque[tuple[float, float]] = deque(maxlen=KEPT)  # (when, seconds)
        # (when, seconds, taken at a turn): by the run's owner or a Prefect worker, or another agent at its turn
        self._claims: deque[tuple[float, float, bool]] = deque(maxlen=KEPT)

    def scheduled(self, run_id: str) -> None:
        """A run of the pool was heard of on the event stream (once more when it is marked Late: it counts
        from the first)."""
        with self._lock:
            if run_id not in self._scheduled:
                _put(self._scheduled, run_id, self._clock.monotonic())

    def not_due(self, run_id: str) -> None:
        """A run heard of turned out to be due later: its claim will not time the fleet's pace."""
        with self._lock:
            self._scheduled.pop(run_id, None)

    def claimed(self, run_id: str, took_turn: bool = False) -> None:
        """A run was heard claimed: by its owner or one of Prefect's workers, or (`took_turn`) by another
        dagent agent whose turn at it had come."""
        now = self._clock.monotonic()
        with self._lock:
            heard = self._scheduled.pop(run_id, None)
            if heard is not None and now - heard <= HORIZON:
                self._claims.append((now, now - heard, took_turn))

    def left(self, run_id: str) -> None:
        """A run left SCHEDULED otherwise than claimed (cancelled, say): nothing to time. (A deleted run tells
        nothing on the stream: it stays among the PENDING runs waiting here until the oldest are pushed out.)"""
        with self._lock:
            self._scheduled.pop(run_id, None)

    def sent(self, run_id: str) -> None:
        """This agent is about to send a claim of the run."""
        with self._lock:
            _put(self._sent, run_id, self._clock.monotonic())

    def dropped(self, run_id: str) -> None:
        """The claim was not accepted: it will not be heard back."""
        with self._lock:
            self._sent.pop(run_id, None)

    def heard(self, run_id: str, round_trip: float) -> None:
        """This agent's accepted claim of the run came back on the stream; less the claim's own `round_trip`."""
        now = self._clock.monotonic()
        with self._lock:
            sent = self._sent.pop(run_id, None)
            if sent is not None:
                self._lags.append((now, max(0.0, now - sent - round_trip)))

    def lag(self) -> float:
        """How far the event stream trails the server now, in seconds: the median (0 with nothing recent)."""
        now = self._clock.monotonic()
        with self._lock:
            recent = [value for at, value in self._lags if now - at <= RECENT]
        return quantile(recent, 0.5)

    def reaction(self) -> float:
        """How long after a run is heard of its claim is heard now, in seconds: the 90th percentile of the
        fleet's claims, those taken at a turn counted no slower than TAKEN_CAP times the owners' (0 with
        nothing recent)."""
        now = self._clock.monotonic()
        with self._lock:
            recent = [(value, taken) for at, value, taken in self._claims if now - at <= RECENT]
        # No owner claiming lately (all gone, or none serving the runs' queues): a head start waits for nobody.
        cap = TAKEN_CAP * quantile((value for value, taken in recent if not taken), 0.9)
        return quantile((min(value, cap) if taken else value for value, taken in recent), 0.9)


def _put(pending: dict[str, float], run_id: str, now: float) -> None:
    if len(pending) >= PENDING:
        del pending[next(iter(pending))]  # the oldest: its second half never came
    pending[run_id] = now
