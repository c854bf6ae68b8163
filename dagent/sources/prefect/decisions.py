"""What the Prefect source decides at a run's end and at its own restart, as pure functions of what it
knows; `reporting.Reporter` and `recovery.Recovery` ask Prefect what these need and carry out the answer.
Tested by tables (tests/unit/test_decisions.py)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dagent.contracts import RunResult
from dagent.sources.prefect.claims import FINAL_STATES, claimer

ENGINE_ENDS = FINAL_STATES | {"PAUSED"}  # the engine's last word: it ended or suspended the run


@dataclass(frozen=True)
class EndAction:
    """What to tell Prefect of a run's end.

    `cancel`: CANCELLED (the run is not final yet); `crash`: CRASHED with `message` (first the worker's
    labels when `label`: the container never started); `put_back`: another agent's claim since, by
    `other`, may have revived the ended run (its end is put back if so); `leave`: nothing to say.
    """

    kind: Literal["cancel", "crash", "put_back", "leave"]
    message: str = ""
    label: bool = False
    other: str = ""


def end_by_result(result: RunResult) -> EndAction | None:
    """What to do at a run's end when the result says it all; None when the run's state decides (end_by_state)."""
    if result.outcome == "timed-out":
        message = f"dagent stopped the container after its timeout ({result.error}); exit code {result.exit_code}"
        return EndAction("crash", message)
    if result.outcome == "cancelled":
        return None
    if result.exit_code is None:
        # The labels are set after the container started (one request less on the way to it), so
        # they are set here, as the worker's say on a run whose container would not start.
        return EndAction("crash", f"dagent could not run the container: {result.error}", label=True)
    if result.exit_code != 0:
        message = f"the container {result.why or f'exited with code {result.exit_code}'}"
        if result.tail:
            message += f"; its last line: {result.tail[-1][:300]}"
        return EndAction("crash", message)
    return None


def end_by_state(result: RunResult, state: Mapping[str, Any], worker: str) -> EndAction:
    """What to do at the end of a run cancelled or exited 0, by its state in Prefect (`{}`: none)."""
    kind = state.get("type")
    if result.outcome == "cancelled":
        return EndAction("leave") if kind in FINAL_STATES else EndAction("cancel")
    if kind in ENGINE_ENDS:
        return EndAction("leave")  # the engine reported the run itself, or suspended it to resume later
    other = claimer(str(state.get("message") or "")) if kind == "PENDING" else None
    if other is not None and other != worker:
        # Of a retry (then it is theirs), or a stale claim that revived the ended run.
        return EndAction("put_back", other=other)
    return EndAction("crash", f"the container exited with code 0 but the flow run is {kind or 'not final'}")


RecoverAction = Literal["resume", "ask_claim", "crash", "leave"]


def recover_action(
    flow_run: Mapping[str, Any],
    owned: bool,
    has_container: bool,
    claim_note: str,
    hostname: str,
    live: Collection[str],
    claim_stands: bool | None = None,
) -> RecoverAction:
    """At a restart, what to do with a PENDING, RUNNING or CANCELLING run of the pool.

    `owned`: this agent's container of the run is on the daemon; `has_container`: any container of
    the run is; `live`: the ids of the daemon's containers. `ask_claim` asks for `claim_stands` (whether
    our PENDING claim still stands, or stepped back from a run that had ended) and a second call.
    """
    if owned:
        return "resume"  # adopt the container (running, or finished and unreported)
    state = flow_run.get("state") or {}
    host, _, container_id = str(flow_run.get("infrastructure_pid") or "").partition(":")
    ours_pending = state.get("type") == "PENDING" and state.get("message") == claim_note
    if not has_container and ours_pending:
        if claim_stands is None:
            return "ask_claim"
        if not claim_stands:
            return "leave"  # our claim revived an ended run and we died before its check: stepped back now
        if not container_id:
            return "resume"  # claimed, never started: run it now
    if host == hostname and container_id and not any(c.startswith(container_id) for c in live):
        return "crash"  # whoever started it, its container is gone from this host's daemon
    return "leave"
