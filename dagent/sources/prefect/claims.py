"""Prefect's state machine, read: whose claim a run is, and when a run is due (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from dagent.units import parse_time

FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})
_NOTE = "Claimed by dagent agent "


def claim_note(agent: str) -> str:
    """The message of an agent's PENDING proposal: how it knows its own claims, and others know it."""
    return f"{_NOTE}{agent!r}"


def claimer(message: str) -> str | None:
    """The dagent agent a PENDING message names, or None (Prefect's own worker leaves none)."""
    if message.startswith(_NOTE + "'") and message.endswith("'") and len(message) > len(_NOTE) + 2:
        return message[len(_NOTE) + 1 : -1]
    return None


EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def taken_since_scheduled(history: Iterable[Any], pending_id: Any, note: str | None = None) -> list[dict[str, Any]]:
    """States other than ours since the run was last scheduled, oldest first: empty when the claim is ours.

    Ours are the claim `pending_id` and, given the agent's `note`, every PENDING state that carries it
    (the claim's `Submitting` step, or the claim itself when the check runs after it)."""
    states = sorted((h for h in history if isinstance(h, dict) and isinstance(h.get("type"), str)), key=when)
    since = max((when(h) for h in states if h.get("type") == "SCHEDULED"), default=EPOCH)

    def ours(h: dict[str, Any]) -> bool:
        if h.get("id") == pending_id:
            return True
        return note is not None and h.get("type") == "PENDING" and h.get("message") == note

    return [h for h in states if not ours(h) and h.get("type") != "SCHEDULED" and when(h) >= since]


def start_time(flow_run: Mapping[str, Any]) -> datetime | None:
    """When a scheduled run is due, or None if it does not say."""
    for key in ("next_scheduled_start_time", "expected_start_time"):
        if flow_run.get(key):
            due = when({"timestamp": flow_run[key]})
            if due != EPOCH:
                return due
    return None


def when(state: Mapping[str, Any]) -> datetime:
    """A state's timestamp; the epoch when it has none or cannot be read."""
    return parse_time(state.get("timestamp")) or EPOCH


def retried_in_process(flow_run: dict[str, Any]) -> bool:
    """AwaitingRetry while its engine sleeps and runs it again itself: not a run to claim."""
    policy = flow_run.get("empirical_policy")
    return isinstance(policy, dict) and policy.get("retry_type") == "in_process"
