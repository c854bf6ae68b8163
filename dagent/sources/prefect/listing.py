"""Which scheduled runs are worth trying now: one list of the pool serves several polls (the backlog),
lists are asked for only when something may have changed, and runs due later arm a wake-up.

Prefect marks a pool's queues NOT_READY when nobody lists them for 60 s: the agents of a pool share
that duty by slots (see roster.py, which also says who is in the fleet).

Agents of one pool spread their claims by rendezvous hashing: every worker of the fleet has a rank
for every run (a hash of its name and the run's id), and a run's owner is the worker that ranks it
first. A run announced on the event stream is its owner's at once: with its list of the pool, the
owner fetches the announced runs it owns by id (still SCHEDULED, oldest first), so under a burst
the agents do not all meet at the pool's oldest runs. The list still decides what may be taken:
Prefect's leaves out paused pools and queues, queues at their concurrency limit and runs retried
in-process, so only fetched runs of the queues it shows are taken, and no more runs than it listed.
Every other agent's turn comes TURN seconds per worker ranked before it after the run became
claimable (longer while the server is slow to answer: a turn never comes before the round trips of
the claims ahead of it, nor before the fleet gets to nine claims in ten, nor before another's
run waited as long as this agent's own runs wait; and for a run found in a list, counted from when its
owner heard of it on a stream that trails, see pace), whether
it heard of the run on the stream or found it in a list: if the
owner had no room, the next takes it a moment later, and the others hear it taken before their turn. A run
costs one list (and fetch) and one claim, not one per agent.

Within a list of the pool, an agent tries the runs it owns first, oldest first, then those it ranks
second, and so on; the page grows with the fleet (OWNED_PER_PAGE runs per free slot per worker, up
to FLEET_PAGE workers). In a fleet a list is trusted for FLEET_FRESH seconds only, even within a
poll: under a burst the event stream trails the claims by seconds, and a claim of another's run
from an older list is mostly refused (or, for a run that has already ended, accepted and then
stepped back from: three requests and a state the user sees). A poll going down a stale page, claim
after refused claim, once sent claims a minute after their runs were taken. The runs of its own a
list names stay good for OWNED_FRESH: within their pages, the others try their own runs before them.

The loop thread lists and takes; the event stream and the wake-up timer mark a list due or a run
taken. Shared fields are guarded by one lock, never held across the request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from dagent.clock import SYSTEM, Clock
from dagent.errors import SourceError
from dagent.sources.prefect.claims import EPOCH, start_time
from dagent.sources.prefect.client import PrefectClient
from dagent.sources.prefect.fleet import claimable_since, position, rank, slot_owner, turn
from dagent.sources.prefect.flowruns import fetch_scheduled
from dagent.sources.prefect.pace import Pace
from dagent.sources.prefect.roster import Roster, WakeTimer

__all__ = ["ScheduledRuns", "position", "rank"]

log = logging.getLogger("dagent.prefect")

# While the event stream is up, the longest time between two lists of scheduled runs (it only
# covers an event lost in a reconnect); each list also looks this far ahead, so a run scheduled for
# later is woken for on time.
SAFETY_LIST = 300.0
# In a fleet, how long a list is good for claims of others' runs, and of this agent's own (see the
# module's docstring).
FLEET_FRESH = 1.0
OWNED_FRESH = 10.0
# The most runs one list asks for; in a fleet, the runs it asks for per free slot per worker, and
# the most workers a page grows for (a page is used for FLEET_FRESH only, and costs the server
# by the runs it answers).
PAGE_MAX = 200
OWNED_PER_PAGE = 2
FLEET_PAGE = 4
# The most of its own announced runs an agent fetches by id at once (two per free slot).
OWN_FETCH_MAX = 50
# One agent of the fleet lists once per slot: under Prefect's 60 s, with room for the request.
READY_SLOT = 50.0


class ScheduledRuns:
    """The pool's scheduled runs as this agent last saw them, and when to look again."""

    def __init__(
        self,
        client: PrefectClient,
        agent: str,
        work_pool: str,
        work_queues: list[str],
        prefetch: float,
        poll_interval: float,
        streaming: Callable[[], bool],
        wake: Callable[[], None],
        pace: Pace | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.clock = clock
        self.client = client
        self.agent = agent
        self.work_pool = work_pool
        self.work_queues = work_queues
        self.prefetch = prefetch
        self.poll_interval = poll_interval
        self.streaming = streaming
        self.wake = wake
        self.pace = pace or Pace(clock)  # how far the event stream trails, how long the fleet takes to claim
        self.roster = Roster(client, agent, work_pool, clock)
        self.timer = WakeTimer(self._rung, clock)
        # The loop thread's own.
        self._backlog: list[dict[str, Any]] = []  # runs listed scheduled and not yet tried, oldest first
        self.listed_at = 0.0  # when the last list was asked for (monotonic)
        self._answered_at = 0.0  # when its answer came (monotonic)
        self._may_list = True  # this poll has not listed yet
        self._relisted = False  # this poll has listed again, its first list gone stale
        self._first_seen: dict[str, datetime] = {}  # runs of the last list → when this agent first saw them
        self._own: frozenset[str] = frozenset()  # runs of the last list this agent owns
        # Shared with the event stream and the timers.
        self._lock = threading.Lock()
        self._due = True  # something may have changed since the last list
        self._listed: frozenset[str] = frozenset()  # ids of the last list
        self._taken: set[str] = set()  # of those, runs heard to have left SCHEDULED
        self._own_heard: dict[str, float] = {}  # announced runs this agent owns → not before (monotonic)
        self._ready_slot = -1  # the last slot this agent listed in (the loop thread's own)

    def mark_due(self) -> None:
        """Something changed (a run was scheduled, a wake-up fell due): list at the next poll."""
        with self._lock:
            self._due = True

    def heard_taken(self, run_id: str, by_peer: bool = False, peer_name: str | None = None) -> None:
        """The event stream says a run left SCHEDULED (`by_peer`: claimed by another agent, a dagent one
        if `peer_name`): not worth a claim."""
        self.timer.withdraw(run_id)
        with self._lock:
            self._own_heard.pop(run_id, None)
            if run_id in self._listed:
                self._taken.add(run_id)
        self.roster.heard_claim(by_peer, peer_name)

    def fleet(self) -> list[str]:
        """The pool's workers in order, this agent included (see Roster)."""
        return self.roster.fleet()

    def announced(self, run_id: str) -> None:
        """The event stream says a run was scheduled: list now when alone or when this agent owns it (and
        then fetch it with the list); otherwise list at this agent's turn. A run heard of again (Prefect
        marks a run Late, a SCHEDULED state, 15 s past its time) keeps its place and its turn."""
        turn = self._turn(run_id)
        now = self.clock.monotonic()
        alone = self.roster.alone()
        # Taken as new, a Late run went behind the owner's newer runs and others' turns at it
        # started again: under a burst, most runs are marked Late before they are claimed.
        if not alone and turn == 0:
            with self._lock:
                self._own_heard[run_id] = min(now, self._own_heard.get(run_id, now))
        elif not alone:
            self.timer.offer(run_id, now + turn)
        if alone or turn == 0:
            self.mark_due()
            self.wake()

    def _turn(self, run_id: str) -> float:
        """Seconds before this agent's turn at a run: TURN for each worker of the fleet ranked before it, or
        longer while the server is slow or the fleet loaded (see fleet.turn)."""
        lag = self.pace.lag() if self.streaming() else 0.0
        now = self.clock.monotonic()
        with self._lock:
            # Its own runs waiting now: at a burst's start, before claims time the fleet's pace, and a
            # fair queue after it: another's run is not taken before it waited as long as its own wait.
            waiting = max((now - at for at in self._own_heard.values() if at <= now), default=0.0)
        reaction = max(self.pace.reaction(), waiting)
        return turn(self.agent, run_id, self.fleet(), self.client.round_trip(), reaction, lag)

    def begin(self) -> None:
        """Start of a poll: drop a backlog too old to trust, and allow one list."""
        # While events flow, a backlog entry another agent takes is heard of and dropped, so the
        # backlog stays good for longer.
        streaming = self.streaming()
        keep = SAFETY_LIST if streaming else self.poll_interval
        if self._backlog and self.clock.monotonic() - self.listed_at > keep:
            self._backlog.clear()
            self.mark_due()
        self._may_list, self._relisted = True, False
        if streaming:
            self.roster.refresh()

    def next(self, limit: int) -> dict[str, Any] | None:
        """The next run worth a claim, its own first, oldest first; None when none is left (lists once a poll,
        fetching its announced runs with the list; in a fleet, once more when the first list went stale)."""
        while True:
            if self._backlog and self._stale():
                # Others' runs are not tried from a stale list (see the module's docstring); this
                # agent's own are, while they keep.
                own = self.clock.monotonic() - self._answered_at <= OWNED_FRESH
                kept = [r for r in self._backlog if own and r["id"] in self._own]
                if len(kept) < len(self._backlog):
                    self.mark_due()
                    if not self._relisted:
                        # Once more within a poll: its claims take seconds on a busy server. Not
                        # more: a server slow to answer would otherwise keep the poll listing.
                        self._may_list, self._relisted = True, True
                    else:
                        # The poll ends with runs it did not try: the next one, a moment later.
                        self.wake_at(self.clock.now() + timedelta(seconds=FLEET_FRESH))
                self._backlog = kept
            if not self._backlog:
                if not self._may_list or not self._should_list():
                    return None
                self._may_list = False
                self.listed_at = self.clock.monotonic()  # when the list was asked for
                self._backlog = self._list(limit)
                self._answered_at = self.clock.monotonic()
                if self.streaming():
                    self._next_ready_slot()
                continue
            flow_run = self._backlog.pop(0)
            with self._lock:
                gone = flow_run["id"] in self._taken
                # Tried now: if it is not claimed (labels, a WAIT), the others take it at their turn.
                self._own_heard.pop(flow_run["id"], None)
            if not gone:
                return flow_run

    def _fetch_own(self, limit: int, listed: list[dict[str, Any]], due_by: datetime) -> list[dict[str, Any]]:
        """This agent's own announced runs that are still scheduled and due, fetched by id, oldest first.

        Only what the pool's list just showed open: Prefect's list leaves out paused pools and
        queues, queues at their concurrency limit and runs the engine retries in-process, and a
        fetch by id knows none of that. So the fetched runs are those of the queues `listed` has
        runs of, and the caller takes no more runs than it listed.
        """
        queues = {r.get("work_queue_id") for r in listed}
        now = self.clock.monotonic()
        with self._lock:
            heard = sorted((at, run_id) for run_id, at in self._own_heard.items() if at <= now)
        seen = {r["id"] for r in listed}
        ids = [run_id for _, run_id in heard if run_id not in seen][: min(OWN_FETCH_MAX, 2 * limit)]
        if not ids:
            return []
        try:
            runs, later = fetch_scheduled(self.client, self.work_pool, ids, queues, due_by)
        except SourceError as e:
            log.debug("could not fetch this agent's own runs (%s); the list serves", e)
            return []
        with self._lock:
            for run_id in set(ids) - {r["id"] for r in runs} - set(later):
                self._own_heard.pop(run_id, None)  # taken or gone, or for the list to show: no longer to fetch
            for run_id, start in later.items():
                self._own_heard[run_id] = now + (start - due_by).total_seconds()
                self.pace.not_due(run_id)
        if later:
            self.wake_at(min(later.values()) - timedelta(seconds=self.prefetch))
        return runs

    def _stale(self) -> bool:
        """In a fleet, a list answered more than FLEET_FRESH ago: others may have taken its runs, unheard yet."""
        return self.clock.monotonic() - self._answered_at > FLEET_FRESH and len(self.fleet()) > 1

    def _should_list(self) -> bool:
        """Without the event stream, every poll lists; with it, only when something may have changed."""
        if not self.streaming():
            return True
        with self._lock:
            due = self._due
        slot = int(self.clock.time() // READY_SLOT)
        mine = slot != self._ready_slot and slot_owner(slot, self.fleet()) == self.agent
        return due or mine

    def _next_ready_slot(self) -> None:
        """This list covers the slot it fell in; arm a wake-up for this agent's next slot."""
        fleet = self.fleet()
        slot = self._ready_slot = int(self.clock.time() // READY_SLOT)
        ahead = next(k for k in range(1, len(fleet) + 1) if slot_owner(slot + k, fleet) == self.agent)
        start = datetime.fromtimestamp((slot + ahead) * READY_SLOT, timezone.utc)
        self.wake_at(start + timedelta(seconds=0.2))

    def _list(self, limit: int) -> list[dict[str, Any]]:
        """The runs due within `prefetch`; while streaming, arm a wake-up for runs due before the next list."""
        now = self.clock.now()
        due_by = now + timedelta(seconds=self.prefetch)
        runs = self._due_now(self._ask(limit, due_by), due_by)
        listed, fleet = runs, self.fleet()
        if not listed:
            with self._lock:
                # Nothing of its queues is due: its announced runs heard before this list are none it
                # may take now (another queue's, a paused one's), and no longer wait for it.
                for run_id in [r for r, at in self._own_heard.items() if at <= self.listed_at]:
                    del self._own_heard[run_id]
        fetched = self._fetch_own(limit, listed, due_by) if len(fleet) > 1 and listed and self.streaming() else []
        runs = self._in_turn(runs, now)
        # The page holds the pool's oldest runs; within it, each agent starts with the runs it owns
        # (and those it fetched), oldest first (stable sorts), and takes no more than were listed.
        places = {r["id"]: position(self.agent, r["id"], fleet) for r in runs}
        runs.sort(key=lambda r: places[r["id"]])
        own = sorted([r for r in runs if places[r["id"]] == 0] + fetched, key=lambda r: start_time(r) or EPOCH)
        runs = (own + [r for r in runs if places[r["id"]] > 0])[: len(listed)]
        self._own = frozenset(r["id"] for r in own)
        with self._lock:
            self._taken = set()
            self._listed = frozenset(r["id"] for r in runs)
        return runs

    def _ask(self, limit: int, due_by: datetime) -> list[Any]:
        """One page of the pool's scheduled runs from Prefect (a full page marks the list due again)."""
        ahead = SAFETY_LIST if self.streaming() else 0.0
        # More than we can take: some need labels we lack, or go to others. With a fleet, a page wide
        # enough to hold some runs this agent owns; not wider, as a fleet's list is good for
        # FLEET_FRESH only and the server's cost of a list grows with the runs it answers.
        requested = min(PAGE_MAX, max(limit * OWNED_PER_PAGE * min(len(self.fleet()), FLEET_PAGE), 10))
        body: dict[str, Any] = {"scheduled_before": (due_by + timedelta(seconds=ahead)).isoformat(), "limit": requested}
        if self.work_queues:
            body["work_queue_names"] = list(self.work_queues)
        # Cleared before asking, so an event that comes while the answer is on its way still counts.
        with self._lock:
            self._due = False
        try:
            items = self.client.call("POST", f"/work_pools/{self.work_pool}/get_scheduled_flow_runs", body) or []
            if not isinstance(items, list):
                raise SourceError("Prefect API: get_scheduled_flow_runs: expected a list")
        except SourceError:
            self.mark_due()
            raise
        if len(items) >= requested:
            self.mark_due()  # a full page: more may be waiting
        return items

    def _due_now(self, items: list[Any], due_by: datetime) -> list[dict[str, Any]]:
        """The flow runs of a page that are due by `due_by`; a wake-up is armed for the first of the rest."""
        runs: list[dict[str, Any]] = []
        later: list[tuple[datetime, str]] = []
        for item in items:
            flow_run = item.get("flow_run") if isinstance(item, dict) else None
            if not isinstance(flow_run, dict) or not isinstance(flow_run.get("id"), str):
                log.warning("skipping a malformed item from get_scheduled_flow_runs")
                continue
            start = start_time(flow_run)
            if start is not None and start > due_by:
                later.append((start, flow_run["id"]))
                self.pace.not_due(flow_run["id"])
            else:
                runs.append(flow_run)
        if later:
            start, run_id = min(later)
            # Each wakes at its own turn for the run, as for an announced one.
            self.wake_at(start - timedelta(seconds=self.prefetch - self._turn(run_id)))
        return runs

    def _in_turn(self, runs: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
        """The runs whose turn has come for this agent; the others are offered at their turn, as announced runs are."""
        if len(self.fleet()) < 2:
            return runs
        ready, turns = [], []
        self._first_seen = {r["id"]: self._first_seen.get(r["id"], now) for r in runs}
        # Its owner hears of a run on the stream, this agent found it in a list: the turns count from
        # when the owner can have heard of it.
        lag = timedelta(seconds=self.pace.lag() if self.streaming() else 0.0)
        for flow_run in runs:
            # Claimable since its owner heard of it, or since `prefetch` before it is due if that is
            # later (a run that says neither is claimable now); and at the latest since this agent
            # first saw it (and the owner heard of it), so a host whose clock lags the server's waits
            # no longer than its turn.
            since = min(
                claimable_since(flow_run, self.prefetch, lag.total_seconds()), self._first_seen[flow_run["id"]] + lag
            )
            wait = self._turn(flow_run["id"])
            comes = since + timedelta(seconds=wait)
            if wait == 0 or since == EPOCH or comes <= now:
                ready.append(flow_run)
            else:
                turns.append((flow_run["id"], self.clock.monotonic() + (comes - now).total_seconds()))
        for run_id, at in turns:
            # A run heard taken before then is withdrawn from the offers: no list for it.
            self.timer.offer(run_id, at)
        return ready

    def wake_at(self, when: datetime) -> None:
        """List again (and wake the loop) at `when`; an earlier wake-up already armed covers it."""
        self.timer.list_at(self.clock.monotonic() + max(0.0, (when - self.clock.now()).total_seconds()))

    def _rung(self, list_due: bool, ripe: list[str]) -> None:
        """The wake-up timer fired: a list fell due, or this agent's turn came at offered runs."""
        self.mark_due()
        self.wake()

    def list_age(self) -> float:
        """Seconds since the last list was asked for."""
        return self.clock.monotonic() - self.listed_at

    @property
    def wake_armed(self) -> bool:
        """True while a wake-up timer is pending."""
        return self.timer.armed

    def close(self) -> None:
        """Disarm the wake-up."""
        self.timer.close()
