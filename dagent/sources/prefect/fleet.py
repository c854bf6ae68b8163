"""Who of a pool's workers goes first for a run (pure): rendezvous ranks, turns, and READY slots.

Every worker of the fleet has a rank for every run (a hash of its name and the run's id); a run's
owner is the worker that ranks it first, and every other worker's turn comes TURN seconds per
worker ranked before it, SPREAD at most, after the run became claimable; longer while the server is
slow to answer (see turn()), and counted from when its owner can have heard of it (see claimable_since()).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from dagent.sources.prefect.claims import EPOCH, start_time, when

# A run waits this long for each worker that ranks it before this agent (long enough to hear the
# claim of the one before), and at most SPREAD: past it, the agents still waiting are few enough
# to rarely meet. When the server is slow to answer, a turn is never shorter than the round trips a
# claim takes: OWNER_TRIPS for the owner (list, fetch, claim), one for each worker after it.
TURN = 0.5
SPREAD = 4.0
OWNER_TRIPS = 3
# However slow the fleet: a run whose owner is gone or full waits no longer than HEAD_MAX for the
# next, and the steps after it take STEPS_MAX in all at most.
HEAD_MAX = 300.0
STEPS_MAX = 120.0


def rank(agent: str, run_id: str) -> float:
    """An agent's place in the queue for a run, uniform in [0, 1): the lowest goes first."""
    digest = hashlib.blake2b(f"{agent}\0{run_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def position(agent: str, run_id: str, fleet: Sequence[str]) -> int:
    """How many workers of the fleet rank the run before this agent: 0 for its owner."""
    mine = rank(agent, run_id)
    return sum(1 for other in fleet if other != agent and rank(other, run_id) < mine)


def turn(
    agent: str,
    run_id: str,
    fleet: Sequence[str],
    round_trip: float = 0.0,
    reaction: float = 0.0,
    stream_lag: float = 0.0,
) -> float:
    """Seconds from when a run became claimable to this agent's turn at it, given how long the server now
    takes to answer a request (`round_trip`), the fleet to claim a run once it was heard of (`reaction`)
    and the event stream to tell of a claim (`stream_lag`)."""
    place = position(agent, run_id, fleet)
    if place == 0:
        return 0.0
    # At rest, TURN per worker ranked before this agent, SPREAD at most; under a slow server, the
    # owner's head start and each step after it stretch to the round trips they take, or the agents
    # whose turn comes claim the run before the owner's claim has landed (a steady 0.5 runs/s at
    # N = 20 met a slow spell of the server so: up to five claims of one run, 0.45 refused per run).
    # A loaded owner takes longer than its round trips to get to its claim (a burst at N = 40: 9 s
    # after hearing of its run, 20 s for one in ten): the head start covers that too. Capped at 60 s,
    # it was shorter than a saturating burst's queues (30 s after hearing, 86 s for one in ten). Timed
    # on an agent's own few claims, it was too short at large N: others took 15 % of the runs, each
    # one a race with an owner about to claim it; timed on the whole fleet's claims, 7 % (see pace).
    # Each step after it waits for the claim before to be heard, or every agent whose turn comes lists
    # the pool for a run already taken (a burst at N = 40: 3.7 such lists per run, most of the
    # server's load).
    head = min(HEAD_MAX, max(TURN, OWNER_TRIPS * round_trip, reaction + round_trip))
    step = max(TURN, round_trip + stream_lag)
    return head + min((min(place, round(SPREAD / TURN)) - 1) * step, STEPS_MAX)


def claimable_since(flow_run: Mapping[str, Any], prefetch: float, stream_lag: float = 0.0) -> datetime:
    """When its owner can have claimed it: since it was made and heard of on an event stream that trails by
    `stream_lag` seconds, or since `prefetch` before it is due if that is later; EPOCH for a run that says neither.
    """
    made = when({"timestamp": flow_run.get("created")})
    due = start_time(flow_run)
    # A turn counted from the run's making alone comes before its owner has heard of it when the
    # stream trails: a burst at N = 40 had it 20 s behind, and 0.35 refused claims per run.
    heard = made + timedelta(seconds=stream_lag) if made != EPOCH else EPOCH
    return max(heard, due - timedelta(seconds=prefetch) if due else EPOCH)


def slot_owner(slot: int, fleet: Sequence[str]) -> str:
    """The worker whose turn it is to list in a READY slot (the fleet in name order)."""
    return fleet[slot % len(fleet)]
