"""The claim check: was the run still scheduled when our PENDING was accepted? (pure; no API)"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dagent.sources.prefect import taken_since_scheduled


def state(id_: str, kind: str, second: float) -> dict[str, Any]:
    return {"id": id_, "type": kind, "timestamp": f"2026-11-23T01:00:{second:09.6f}Z"}


def test_fresh_run_is_ours() -> None:
    history = [state("s", "SCHEDULED", 1), state("ours", "PENDING", 2)]
    assert taken_since_scheduled(history, "ours") == []


def test_late_marking_does_not_count() -> None:
    history = [state("s", "SCHEDULED", 1), state("late", "SCHEDULED", 3), state("ours", "PENDING", 2)]
    assert taken_since_scheduled(history, "ours") == []


def test_revival_after_another_agent_ran_it_is_not_ours_even_when_timestamps_misorder() -> None:
    # Our PENDING's timestamp was taken before the other agent's states were written (the case
    # seen with SQLite): it sorts straight after SCHEDULED, yet the run was taken.
    history = [
        state("s", "SCHEDULED", 1),
        state("ours", "PENDING", 2),
        state("theirs", "PENDING", 3),
        state("crash", "CRASHED", 4),
    ]
    taken = taken_since_scheduled(history, "ours")
    assert [h["id"] for h in taken] == ["theirs", "crash"]


def test_a_rerun_counts_from_its_new_schedule() -> None:
    history = [
        state("s", "SCHEDULED", 1),
        state("p", "PENDING", 2),
        state("r", "RUNNING", 3),
        state("f", "FAILED", 4),
        state("retry", "SCHEDULED", 10),
        state("ours", "PENDING", 11),
    ]
    assert taken_since_scheduled(history, "ours") == []


def test_malformed_entries_are_ignored() -> None:
    history = [None, "x", {"type": "SCHEDULED"}, state("ours", "PENDING", 2), {"id": "bad", "timestamp": "soon"}]
    # Entries without a type are noise; one without a readable time sorts first.
    assert taken_since_scheduled(history, "ours") == []


@given(st.lists(st.sampled_from(["PENDING", "RUNNING", "COMPLETED", "CRASHED", "FAILED"]), min_size=1, max_size=6))
def test_any_foreign_state_after_the_schedule_takes_the_run(kinds: list[str]) -> None:
    history = [state("s", "SCHEDULED", 1), state("ours", "PENDING", 2)]
    history += [state(f"o{i}", kind, 3 + i) for i, kind in enumerate(kinds)]
    assert len(taken_since_scheduled(history, "ours")) == len(kinds)


NOTE = "Claimed by dagent agent 'a'"


def test_our_submitting_step_and_our_claim_are_both_ours() -> None:
    """A check made from the run's Submitting state (after a restart) must not read our own claim as a rival."""
    history = [
        state("s", "SCHEDULED", 1),
        {**state("claim", "PENDING", 2), "name": "Pending", "message": NOTE},
        {**state("sub", "PENDING", 3), "name": "Submitting", "message": NOTE},
    ]
    assert taken_since_scheduled(history, "sub", NOTE) == []
    assert [h["id"] for h in taken_since_scheduled(history, "sub")] == ["claim"]  # without the note: a rival


def test_another_agents_submitting_takes_the_run() -> None:
    history = [
        state("s", "SCHEDULED", 1),
        {**state("theirs", "PENDING", 2), "message": "Claimed by dagent agent 'b'"},
        {**state("sub", "PENDING", 3), "name": "Submitting", "message": "Claimed by dagent agent 'b'"},
        {**state("ours", "PENDING", 4), "message": NOTE},
    ]
    assert [h["id"] for h in taken_since_scheduled(history, "ours", NOTE)] == ["theirs", "sub"]
