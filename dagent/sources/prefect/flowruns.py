"""The flow-run endpoints this worker uses, and the claim protocol on top of Prefect's state machine."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dagent.errors import SourceError
from dagent.sources.prefect.claims import FINAL_STATES, retried_in_process, start_time, taken_since_scheduled
from dagent.sources.prefect.client import PrefectClient, path_id

log = logging.getLogger("dagent.prefect")

# A claim accepted within this many seconds of asking for the list that named the run needs no
# history check: a run cannot be claimed, started, ended and reported by another agent that fast.
FRESH_LIST = 0.1


@dataclass(frozen=True)
class ClaimAnswer:
    """Whether a claim made the run ours; `wait` is Prefect's WAIT delay in seconds (None: not asked to wait)."""

    ours: bool
    wait: float | None = None


class FlowRuns:
    """Reads and proposes flow-run states; `note` marks this agent's PENDING claims."""

    def __init__(self, client: PrefectClient, note: str) -> None:
        self.client = client
        self.note = note

    def state(self, run_id: str) -> dict[str, Any] | None:
        """The run's current state, or None when the run or its state is not there."""
        flow_run = self.client.call("GET", f"/flow_runs/{path_id(run_id)}", allow=(404,))
        state = (flow_run or {}).get("state")
        return state if isinstance(state, dict) else None

    def set_state(
        self, run_id: str, kind: str, name: str, message: str, force: bool = False, quiet: bool = False
    ) -> bool:
        """Propose a state; True when accepted. A refusal is logged, not raised (Prefect's state machine
        has the last word)."""
        answer = self.client.call(
            "POST",
            f"/flow_runs/{path_id(run_id)}/set_state",
            {"state": {"type": kind, "name": name, "message": message, "state_details": {}}, "force": force},
            allow=(404,),
        )
        status = (answer or {}).get("status")
        if status != "ACCEPT":
            log.log(
                logging.DEBUG if quiet else logging.INFO, "flow run %s: %s proposal answered %s", run_id, kind, status
            )
        return status == "ACCEPT"

    def claim(self, run_id: str, list_age: Callable[[], float]) -> ClaimAnswer:
        """Propose PENDING; ours when Prefect's state machine says so (and nobody ran it meanwhile).
        `list_age` is the seconds since the list that showed the run was asked for."""
        tries: list[int] = []
        answer = self.client.call(
            "POST",
            f"/flow_runs/{path_id(run_id)}/set_state",
            {
                "state": {"type": "PENDING", "name": "Pending", "message": self.note, "state_details": {}},
                "force": False,
            },
            allow=(404,),
            tries=tries,
        )
        status = (answer or {}).get("status")
        if status == "ACCEPT":
            # Another agent's whole claim-run-report cycle cannot fit between a list and our
            # accepted claim that close together, so only a slower claim needs the history.
            fresh = list_age() < FRESH_LIST and len(tries) == 1
            pending_id = ((answer or {}).get("state") or {}).get("id")
            return ClaimAnswer(fresh or self.claim_stands(run_id, pending_id))
        if status in ("ABORT", "REJECT") and len(tries) > 1:
            # Ours anyway if an earlier try of this very proposal went through and its answer was lost.
            state = self.state(run_id)
            if state and state.get("type") == "PENDING" and state.get("message") == self.note:
                return ClaimAnswer(True)
        if status in ("ABORT", "REJECT"):
            log.debug("flow run %s: %s (%s)", run_id, status, ((answer or {}).get("details") or {}).get("reason"))
            return ClaimAnswer(False)
        if status == "WAIT":
            # Prefect says when to come back (a concurrency limit, say).
            delay = ((answer or {}).get("details") or {}).get("delay_seconds")
            return ClaimAnswer(False, float(delay) if isinstance(delay, (int, float)) else 0.0)
        return ClaimAnswer(False)

    def submitting(self, run_id: str) -> bool:
        """Propose `Submitting` (PENDING under another name), as Prefect's worker does just before it starts
        a run's infrastructure; True when accepted. Prefect refuses it over anything but PENDING, so an
        acceptance also says the run was not cancelled meanwhile."""
        return self.set_state(run_id, "PENDING", "Submitting", self.note, quiet=True)

    def claim_stands(self, run_id: str, pending_id: Any) -> bool:
        """True when our accepted PENDING claimed the run as scheduled, not after someone ran it.

        Prefect refuses PENDING over PENDING or RUNNING but accepts it after a final state, so a
        stale poll list can revive a run another agent has already claimed and finished. The
        history's order cannot show which state came just before ours: timestamps are taken
        before the database's write lock, so they need not follow commit order. What can be
        trusted is what else happened since the run was last scheduled: anything besides our
        PENDING (another agent's claim, a run, a final state) means the run was taken. Then we
        step back and put its end back, since our PENDING replaced it.
        """
        try:
            others = self._since_scheduled(run_id, pending_id)
        except SourceError as e:
            # Our PENDING stands; leaving it would strand the run, so run it on the claim alone.
            log.warning("flow run %s: could not check the claim (%s); taking it", run_id, e)
            return True
        if not others:
            return True
        log.info(
            "flow run %s was taken by another agent before our claim (%s); leaving it", run_id, others[-1].get("type")
        )
        try:
            self._put_back_end(run_id, others)
        except SourceError as e:
            # The agent that ran it puts it back when it reports (see revived); a restart here does too.
            log.warning("flow run %s: could not put its end back (%s)", run_id, e)
        return False

    def revived(self, run_id: str, pending_id: Any) -> bool:
        """Put back the end of a run that another agent's stale PENDING (`pending_id`) revived; False if it had none."""
        return self._put_back_end(run_id, self._since_scheduled(run_id, pending_id))

    def _since_scheduled(self, run_id: str, pending_id: Any) -> list[dict[str, Any]]:
        history = self.client.call("GET", f"/flow_run_states/?flow_run_id={path_id(run_id)}")
        if not isinstance(history, list):
            raise SourceError(f"Prefect API: GET /flow_run_states/ for {run_id}: expected a list")
        log.debug(
            "flow run %s: claim check: %s",
            run_id,
            [(h.get("type"), h.get("timestamp")) for h in history if isinstance(h, dict)],
        )
        return taken_since_scheduled(history, pending_id, self.note)

    def _put_back_end(self, run_id: str, others: list[dict[str, Any]]) -> bool:
        """Force the run's first end since it was scheduled back over a stale PENDING; False if it had none."""
        final = [h for h in others if h.get("type") in FINAL_STATES]
        if not final:
            return False
        # The first end since it was scheduled is the engine's; a later one is another agent
        # reacting to the stale PENDING (a CRASHED "exited with code 0 but the flow run is PENDING").
        end = final[0]
        self.set_state(
            run_id, str(end.get("type")), str(end.get("name") or ""), str(end.get("message") or ""), force=True
        )
        return True


def fetch_scheduled(
    client: PrefectClient, work_pool: str, ids: list[str], queues: set[Any], due_by: datetime
) -> tuple[list[dict[str, Any]], dict[str, datetime]]:
    """The runs of `ids` still scheduled in the pool: those due by `due_by` in one of `queues` (oldest
    first, none the engine retries in-process), and when each of the others not yet due is due."""
    body: dict[str, Any] = {
        "flow_runs": {"id": {"any_": ids}, "state": {"type": {"any_": ["SCHEDULED"]}}},
        "work_pools": {"name": {"any_": [work_pool]}},
        "sort": "EXPECTED_START_TIME_ASC",
        "limit": len(ids),
    }
    items = client.call("POST", "/flow_runs/filter", body)
    if not isinstance(items, list):
        raise SourceError("Prefect API: /flow_runs/filter: expected a list")
    runs, later = [], {}
    for flow_run in items:
        if not isinstance(flow_run, dict) or flow_run.get("id") not in ids:
            continue
        start = start_time(flow_run)
        if start is not None and start > due_by:
            later[flow_run["id"]] = start
        elif flow_run.get("work_queue_id") in queues and not retried_in_process(flow_run):
            runs.append(flow_run)
    return runs, later
