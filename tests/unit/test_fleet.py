"""Who of a fleet goes first for a run: turns at rest and under a slow server (pure)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from dagent.sources.prefect import fleet

FLEET = [f"agent-{i}" for i in range(40)]


def _places(run_id: str) -> dict[int, str]:
    return {fleet.position(agent, run_id, FLEET): agent for agent in FLEET}


def test_at_rest_each_worker_waits_turn_per_worker_before_it_and_spread_at_most() -> None:
    places = _places("run-1")
    assert fleet.turn(places[0], "run-1", FLEET) == 0.0
    assert [fleet.turn(places[k], "run-1", FLEET) for k in (1, 2, 3)] == [fleet.TURN, 2 * fleet.TURN, 3 * fleet.TURN]
    assert max(fleet.turn(agent, "run-1", FLEET) for agent in FLEET) == fleet.SPREAD


def test_a_slow_server_stretches_the_owners_head_start_and_every_step_after_it() -> None:
    """A claim takes round trips: no turn comes before the claims ahead of it can have landed."""
    places, trip = _places("run-2"), 2.0
    assert fleet.turn(places[0], "run-2", FLEET, trip) == 0.0
    assert fleet.turn(places[1], "run-2", FLEET, trip) == fleet.OWNER_TRIPS * trip
    assert fleet.turn(places[2], "run-2", FLEET, trip) == fleet.OWNER_TRIPS * trip + trip
    assert fleet.turn(places[39], "run-2", FLEET, trip) == fleet.OWNER_TRIPS * trip + 7 * trip


@given(st.text(min_size=1, max_size=20), st.floats(0, 30), st.floats(0, 30))
def test_turns_keep_their_order_and_only_grow_with_the_round_trip(run_id: str, slow: float, slower: float) -> None:
    slow, slower = sorted((slow, slower))
    by_place = sorted(FLEET, key=lambda agent: fleet.position(agent, run_id, FLEET))
    turns = [fleet.turn(agent, run_id, FLEET, slow) for agent in by_place]
    assert turns == sorted(turns) and turns[0] == 0.0 and turns[1] > 0.0
    assert all(fleet.turn(a, run_id, FLEET, slower) >= t for a, t in zip(by_place, turns, strict=True))
    # Never shorter than at rest.
    assert all(fleet.turn(a, run_id, FLEET, slow) >= fleet.turn(a, run_id, FLEET) for a in FLEET)


def test_a_trailing_stream_moves_when_a_run_counts_as_heard_not_when_it_is_due() -> None:
    made = datetime(2026, 1, 1, tzinfo=timezone.utc)
    run = {"created": made.isoformat(), "expected_start_time": made.isoformat()}
    assert fleet.claimable_since(run, 0.0) == made
    assert fleet.claimable_since(run, 0.0, stream_lag=20.0) == made + timedelta(seconds=20)
    # Due an hour after it was made: its owner heard of it long before, whatever the lag.
    later = {**run, "expected_start_time": (made + timedelta(hours=1)).isoformat()}
    assert fleet.claimable_since(later, 10.0, stream_lag=20.0) == made + timedelta(hours=1, seconds=-10)


def test_an_owner_slow_to_claim_stretches_the_head_start_as_far_as_its_queue_up_to_head_max() -> None:
    places = _places("run-3")
    assert fleet.turn(places[1], "run-3", FLEET, 0.5, reaction=9.0) == 9.5
    assert fleet.turn(places[2], "run-3", FLEET, 0.5, reaction=9.0) == 10.0
    # A saturating burst's queues: 86 s for one run in ten; a head start of 60 s at most let others
    # race the owners for 15 % of the runs.
    assert fleet.turn(places[1], "run-3", FLEET, 0.5, reaction=86.0) == 86.5
    assert fleet.turn(places[1], "run-3", FLEET, 0.5, reaction=6000.0) == fleet.HEAD_MAX
    assert fleet.turn(places[0], "run-3", FLEET, 0.5, reaction=9.0) == 0.0


def test_a_trailing_stream_stretches_every_step_after_the_head_up_to_steps_max() -> None:
    """Each agent after the owner waits to hear the claim before it: no list for a run already taken."""
    places = _places("run-4")
    assert fleet.turn(places[1], "run-4", FLEET, 0.5, stream_lag=10.0) == 1.5
    assert fleet.turn(places[2], "run-4", FLEET, 0.5, stream_lag=10.0) == 1.5 + 10.5
    assert fleet.turn(places[39], "run-4", FLEET, 0.5, stream_lag=30.0) == 1.5 + fleet.STEPS_MAX
    assert fleet.turn(places[39], "run-4", FLEET, 0.5, 6000.0, 30.0) == fleet.HEAD_MAX + fleet.STEPS_MAX
