"""How fast this agent's claims go: the event stream's lag and an owner's reaction, from its own claims."""

from __future__ import annotations

import time

import pytest

from dagent.sources.prefect import pace as pace_module
from dagent.sources.prefect.pace import Pace


def test_the_stream_lag_is_how_late_this_agent_hears_its_own_accepted_claims() -> None:
    pace = Pace()
    assert pace.lag() == 0.0
    pace.sent("r1")
    time.sleep(0.3)
    pace.heard("r1", round_trip=0.1)
    assert 0.15 <= pace.lag() < 0.4
    pace.sent("r2")
    pace.dropped("r2")  # refused: no event comes for it
    pace.heard("r2", round_trip=0.0)
    pace.heard("r3", round_trip=0.0)  # another's claim: never sent by this agent
    assert len(pace._lags) == 1


def test_the_reaction_is_from_hearing_of_an_own_run_to_sending_its_claim() -> None:
    pace = Pace()
    pace.sent("r0")  # found in a list, never announced: no reaction
    assert pace.reaction() == 0.0
    pace.announced("r1")
    time.sleep(0.2)
    pace.sent("r1")
    assert 0.15 <= pace.reaction() < 0.5
    pace.announced("r2")
    pace.not_due("r2")  # due in an hour: claimed then, which says nothing of the owner's pace
    pace.sent("r2")
    assert len(pace._reactions) == 1


def test_old_samples_no_longer_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst's pace is not a quiet hour's."""
    pace = Pace()
    pace.announced("r1")
    pace.sent("r1")
    pace.heard("r1", 0.0)
    monkeypatch.setattr(pace_module, "RECENT", 0.0)
    time.sleep(0.01)
    assert pace.lag() == 0.0 and pace.reaction() == 0.0


def test_runs_never_heard_back_do_not_pile_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pace_module, "PENDING", 3)
    pace = Pace()
    for i in range(10):
        pace.announced(f"r{i}")
        pace.sent(f"s{i}")
    assert len(pace._announced) == 3 and len(pace._sent) == 3
