"""Who of a pool's workers goes first for a run (pure): rendezvous ranks, turns, READY slots, and steals.

Every worker of the fleet has a rank for every run (a hash of its name and the run's id); a run's
owner is the worker that ranks it first, and every other worker's turn comes TURN seconds per
worker ranked before it, SPREAD at most, after the run became claimable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from dagent.sources.prefect.claims import EPOCH, start_time, when

# A run waits this long for each worker that ranks it before this agent (long enough to hear the
# claim of the one before), and at most SPREAD: past it, the agents still waiting are few enough
# to rarely meet.
TURN = 0.5
SPREAD = 4.0
# A run its owner has not taken this long after it was announced waits on a busy owner: from then
# on another worker may steal it (see `steals`).
STEAL_AFTER = SPREAD
# How long a run is left to an owner heard to have a slot free, before the others' turns count: it
# takes its runs at once, so one not taken by then is one it will not take (labels, a WAIT, gone).
OWNER_GRACE = 10.0


def rank(agent: str, run_id: str) -> float:
    """An agent's place in the queue for a run, uniform in [0, 1): the lowest goes first."""
    digest = hashlib.blake2b(f"{agent}\0{run_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def owner(run_id: str, fleet: Sequence[str]) -> str:
    """The worker of the fleet that ranks a run first."""
    return min(fleet, key=lambda agent: rank(agent, run_id))


def position(agent: str, run_id: str, fleet: Sequence[str]) -> int:
    """How many workers of the fleet rank the run before this agent: 0 for its owner."""
    mine = rank(agent, run_id)
    return sum(1 for other in fleet if other != agent and rank(other, run_id) < mine)


def turn(agent: str, run_id: str, fleet: Sequence[str]) -> float:
    """Seconds from when a run became claimable to this agent's turn at it."""
    return min(SPREAD, TURN * position(agent, run_id, fleet))


def claimable_since(flow_run: Mapping[str, Any], prefetch: float) -> datetime:
    """Since it was made, or since `prefetch` before it is due if that is later; EPOCH for a run that says neither."""
    made = when({"timestamp": flow_run.get("created")})
    due = start_time(flow_run)
    return max(made, due - timedelta(seconds=prefetch) if due else EPOCH)


def slot_owner(slot: int, fleet: Sequence[str]) -> str:
    """The worker whose turn it is to list in a READY slot (the fleet in name order)."""
    return fleet[slot % len(fleet)]


def steals(
    heard: Mapping[str, tuple[str, int, float]], ripe_by: float, full: Collection[str]
) -> tuple[list[str], float | None]:
    """Others' waiting runs worth stealing, best first, from `heard` (run → its owner, this agent's place
    for it, when it was heard of): those of the owners in `full` (running as many runs as they may)
    heard of by `ripe_by`; the runs this agent ranks best first, then the newest, and each owner's
    oldest, its next once a slot frees, last. Also when the next one ripens.

    An owner with a slot free takes its next run at once, so a thief going for it meets the owner;
    and across all the waiting runs, each thief's best places fall on other runs.
    """
    by_owner: dict[str, list[tuple[float, str]]] = {}
    for run_id, (who, _, at) in heard.items():
        if who in full:
            by_owner.setdefault(who, []).append((at, run_id))
    picks: list[tuple[bool, int, float, str]] = []
    later: list[float] = []
    for runs in by_owner.values():
        runs.sort()
        for i, (at, run_id) in enumerate(runs):
            if at <= ripe_by:
                picks.append((i == 0, heard[run_id][1], -at, run_id))
            else:
                later.append(at)
    return [run_id for *_, run_id in sorted(picks)], min(later, default=None)
