"""Two small pieces of the Prefect fleet logic that listing.py's ScheduledRuns is built from.

`Roster`: who shares a pool's lists and claims (its ONLINE workers, read now and then, and the
dagent agents heard in claims since). `WakeTimer`: one timer for the earliest of a list due later
and the runs offered at this agent's turn. Each has its own lock, held only briefly and never across
a request or a callback.

Prefect marks a pool's work queues and deployments NOT_READY when nobody has asked for their
scheduled runs for 60 s. While the event stream does the waking, the agents of a pool share that
duty: time is cut into READY_SLOT slots, each slot belongs to one worker of the pool (its ONLINE
workers, read every ROSTER_EVERY seconds, and the dagent agents heard in claims since, in name
order), and an agent lists in its own slots only. A slot of one of Prefect's own workers is left to
it: that worker lists every 10 s anyway. The slot lists are also the safety net for an event lost in
a reconnect: a run it announced is found at the next slot, by whichever agent owns it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dagent.clock import SYSTEM, Clock, Timer
from dagent.errors import SourceError
from dagent.sources.prefect.client import PrefectClient

log = logging.getLogger("dagent.prefect")

# A dagent agent not heard of in claims for this long has left the fleet (seconds).
PEERS_FORGOTTEN = 600.0
# How often the pool's ONLINE workers are read while streaming; the first reads come sooner, while a
# fleet started together is still coming ONLINE (seconds).
ROSTER_EVERY = 300.0
ROSTER_FIRST = (60.0, 60.0)


class Roster:
    """The workers of one pool as this agent knows them."""

    def __init__(self, client: PrefectClient, agent: str, work_pool: str, clock: Clock = SYSTEM) -> None:
        self.client = client
        self._clock = clock
        self.agent = agent
        self.work_pool = work_pool
        self._lock = threading.Lock()
        self._peer_seen = -PEERS_FORGOTTEN  # when another agent last claimed a run of the pool (monotonic)
        self._peers: dict[str, float] = {}  # other dagent agents of the pool → when last heard (monotonic)
        self._online: frozenset[str] = frozenset()  # the pool's ONLINE workers, as last read
        self._read_at = -ROSTER_EVERY  # when (monotonic; the loop thread's own)
        self._reads = 0

    def heard_claim(self, by_peer: bool, peer_name: str | None) -> None:
        """A run of the pool was claimed: by another agent (`by_peer`), a dagent one if it signed (`peer_name`)."""
        with self._lock:
            if by_peer:
                self._peer_seen = self._clock.monotonic()
            if peer_name and peer_name != self.agent:
                self._peers[peer_name] = self._clock.monotonic()

    def fleet(self) -> list[str]:
        """The pool's workers in order, this agent included: its ONLINE roster, the dagent agents heard in claims."""
        now = self._clock.monotonic()
        with self._lock:
            for name in [n for n, seen in self._peers.items() if now - seen > PEERS_FORGOTTEN]:
                del self._peers[name]
            return sorted({self.agent, *self._peers, *self._online})

    def alone(self) -> bool:
        """No other claimer heard of for PEERS_FORGOTTEN, and none ONLINE: this agent lists for itself."""
        with self._lock:
            return self._clock.monotonic() - self._peer_seen > PEERS_FORGOTTEN and self._online <= {self.agent}

    def refresh(self) -> None:
        """Read the pool's ONLINE workers when it is time (the loop thread, while streaming)."""
        every = ROSTER_FIRST[self._reads - 1] if 0 < self._reads <= len(ROSTER_FIRST) else ROSTER_EVERY
        if self._clock.monotonic() - self._read_at >= every:
            self._read()

    def _read(self) -> None:
        """The pool's ONLINE workers: who shares the lists (a failed read keeps the last one)."""
        self._read_at = self._clock.monotonic()
        self._reads += 1
        try:
            workers = self.client.call("POST", f"/work_pools/{self.work_pool}/workers/filter", {"limit": 200}) or []
        except SourceError as e:
            log.debug("could not read the pool's workers: %s", e)
            return
        names = {
            str(w["name"]) for w in workers if isinstance(w, dict) and w.get("status") == "ONLINE" and w.get("name")
        }
        with self._lock:
            self._online = frozenset(names)


class WakeTimer:
    """One timer for the earliest wake-up: a list due at a time (`list_at`) or a run offered at a turn.

    When it fires, `ring(list_due, ripe_runs)` is called, outside the lock."""

    def __init__(self, ring: Callable[[bool, list[str]], None], clock: Clock = SYSTEM) -> None:
        self._ring = ring
        self._clock = clock
        self._lock = threading.Lock()
        self._timer: Timer | None = None
        self._timer_at = 0.0  # monotonic
        self._list_at: float | None = None  # a list due later (monotonic)
        self._offers: dict[str, float] = {}  # runs → when this agent's turn at them comes (monotonic)

    def list_at(self, at: float) -> None:
        """List again at `at` (monotonic); an earlier wake-up already armed covers it."""
        with self._lock:
            if self._list_at is None or at < self._list_at:
                self._list_at = at
            self._arm()

    def offer(self, run_id: str, at: float) -> None:
        """This agent's turn at a run comes at `at` (monotonic); an earlier turn stands."""
        with self._lock:
            self._offers[run_id] = min(at, self._offers.get(run_id, at))
            self._arm()

    def withdraw(self, run_id: str) -> None:
        """The run was taken: no wake-up for it."""
        with self._lock:
            self._offers.pop(run_id, None)

    @property
    def armed(self) -> bool:
        """True while a wake-up is pending."""
        with self._lock:
            return self._timer is not None and self._timer.is_alive()

    @property
    def armed_at(self) -> float:
        """When (monotonic) the pending wake-up fires."""
        with self._lock:
            return self._timer_at

    def close(self) -> None:
        """Disarm."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()

    def _arm(self) -> None:
        """(Under the lock) one timer for the earliest wake-up or offer."""
        times = [*self._offers.values(), *([self._list_at] if self._list_at is not None else [])]
        if not times:
            return
        at = min(times)
        if self._timer is not None and self._timer.is_alive():
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._clock.call_later(at - self._clock.monotonic(), self._fire)

    def _fire(self) -> None:
        now = self._clock.monotonic()
        with self._lock:
            self._timer = None
            due = self._list_at is not None and self._list_at <= now
            if due:
                self._list_at = None
            ripe = [run_id for run_id, at in self._offers.items() if at <= now]
            for run_id in ripe:
                del self._offers[run_id]
            self._arm()
        if due or ripe:
            self._ring(due, ripe)
