"""How fast the fleet's claims go: the event stream's lag, from this agent's claims, and the time to a claim, from all."""

from __future__ import annotations

import pytest

from dagent.sources.prefect import fleet
from dagent.sources.prefect import pace as pace_module
from dagent.sources.prefect.pace import Pace
from dagent.stats import quantile
from tests.support.fakes import FakeClock


def test_the_stream_lag_is_how_late_this_agent_hears_its_own_accepted_claims() -> None:
    clock = FakeClock()
    pace = Pace(clock)
    assert pace.lag() == 0.0
    pace.sent("r1")
    clock.advance(0.3)
    pace.heard("r1", round_trip=0.1)
    assert pace.lag() == pytest.approx(0.2)
    pace.sent("r2")
    pace.dropped("r2")  # refused: no event comes for it
    pace.heard("r2", round_trip=0.0)
    pace.heard("r3", round_trip=0.0)  # another's claim: never sent by this agent
    assert len(pace._lags) == 1


def test_the_fleets_pace_is_from_hearing_of_a_run_to_hearing_its_claim_by_anyone() -> None:
    """Every agent hears every run of the pool scheduled and claimed: each times the whole fleet."""
    clock = FakeClock()
    pace = Pace(clock)
    pace.claimed("r0")  # never heard scheduled: nothing to time
    assert pace.reaction() == 0.0
    pace.scheduled("r1")
    pace.scheduled("r2")
    pace.scheduled("r3")
    clock.advance(0.2)
    pace.claimed("r1")  # its owner's claim, or another's that took it from a slow owner: both count
    assert pace.reaction() == pytest.approx(0.2)
    pace.left("r2")  # cancelled: says nothing of the fleet's pace
    pace.claimed("r2")
    pace.not_due("r3")  # due in an hour: claimed then
    pace.claimed("r3")
    assert len(pace._claims) == 1 and not pace._scheduled


def test_a_run_marked_late_counts_from_when_it_was_first_heard_of() -> None:
    clock = FakeClock()
    pace = Pace(clock)
    pace.scheduled("r1")
    clock.advance(0.2)
    pace.scheduled("r1")  # Late: a SCHEDULED state 15 s past its time
    pace.claimed("r1")
    assert pace.reaction() == pytest.approx(0.2)


def test_a_claim_long_after_its_run_was_heard_of_was_of_a_run_due_later(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pace_module, "HORIZON", 0.1)
    clock = FakeClock()
    pace = Pace(clock)
    pace.scheduled("r1")
    clock.advance(0.2)
    pace.claimed("r1")
    assert pace.reaction() == 0.0


def test_old_samples_no_longer_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst's pace is not a quiet hour's."""
    clock = FakeClock()
    pace = Pace(clock)
    pace.scheduled("r1")
    pace.claimed("r1")
    pace.sent("r1")
    pace.heard("r1", 0.0)
    monkeypatch.setattr(pace_module, "RECENT", 0.0)
    clock.advance(0.01)
    assert pace.lag() == 0.0 and pace.reaction() == 0.0


def test_runs_never_heard_back_do_not_pile_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pace_module, "PENDING", 3)
    clock = FakeClock()
    pace = Pace(clock)
    for i in range(10):
        pace.scheduled(f"r{i}")
        pace.sent(f"s{i}")
    assert len(pace._scheduled) == 3 and len(pace._sent) == 3


def _fleet_of_two_queues(hours: float) -> float:
    """Agents serving different queues of one pool: half the runs are owned by an agent that does not serve
    their queue, so the next agent takes each once its turn comes (the head start: the pace, plus a round
    trip); the others are claimed by their owners in 1.5 s. The pace after `hours`."""
    import heapq
    import random

    clock = FakeClock()
    pace, rng = Pace(clock), random.Random(1)
    start = clock.monotonic()
    events: list[tuple[float, int, str, str]] = []
    t, i = 0.0, 0
    while t < hours * 3600:
        t += rng.expovariate(0.1)
        i += 1
        heapq.heappush(events, (t, i, "scheduled", f"r{i}"))
    while events:
        at, i, what, run_id = heapq.heappop(events)
        clock.advance(start + at - clock.monotonic())
        if what == "scheduled":
            pace.scheduled(run_id)
            if i % 2:
                heapq.heappush(events, (at + 1.5, i, "owner", run_id))
            else:  # its owner serves another queue: the other agent's turn, then its claim heard 1.5 s later
                taker = max(("a", "b"), key=lambda name: fleet.rank(name, run_id))
                head = fleet.turn(taker, run_id, ["a", "b"], round_trip=0.2, reaction=pace.reaction())
                heapq.heappush(events, (at + head + 1.5, i, "next", run_id))
        else:
            pace.claimed(run_id, took_turn=what == "next")
    return pace.reaction()


def test_runs_taken_at_a_turn_do_not_push_the_pace_up_for_ever() -> None:
    """The attack: each run taken at its turn was heard of a head start ago, so counted in full it set the
    next head start longer still (0 → 15 → 42 → 68 s over an hour, towards HEAD_MAX), while the agents that
    could take the runs sat idle. Counted no slower than the owners' own claims are now, it stays put."""
    assert _fleet_of_two_queues(2.0) < 5.0


def test_runs_taken_from_owners_that_are_slow_themselves_do_count() -> None:
    """Under a burst the runs taken from a busy owner are its slowest: left out, the head start would shrink,
    others take more, and shrink it again. They count as far as the owners' own claims are slow."""
    clock = FakeClock()
    pace = Pace(clock)
    start = clock.monotonic()
    for i in range(40):
        pace.scheduled(f"r{i}")
    for i in range(40):  # owners busy: their own claims 0.5 s apart; the ten slowest runs taken at a turn
        clock.advance(start + (0.5 * (i + 1) if i < 30 else 16.0 + (i - 30)) - clock.monotonic())
        pace.claimed(f"r{i}", took_turn=i >= 30)
    owners_p90 = quantile((0.5 * (i + 1) for i in range(30)), 0.9)
    assert pace.reaction() == pytest.approx(pace_module.TAKEN_CAP * owners_p90)  # counted, and capped
