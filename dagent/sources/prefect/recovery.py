"""A restart of the Prefect source: which runs of the pool are this agent's to resume (their container
is here, or they were claimed and never started), and which are CRASHED because their container is
gone from this host's daemon."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from dagent.contracts import Claim, ContainerInfo, owned_by
from dagent.errors import SourceError, SourceUnavailable, one_line
from dagent.sources.prefect.client import PrefectClient, path_id
from dagent.sources.prefect.decisions import recover_action
from dagent.sources.prefect.eventchains import WorkerEvents
from dagent.sources.prefect.flowruns import FlowRuns
from dagent.sources.prefect.runbook import RunBook

log = logging.getLogger("dagent.prefect")


class Recovery:
    """Called once, by the loop thread, at the agent's start."""

    def __init__(
        self, client: PrefectClient, runs: FlowRuns, book: RunBook, events: WorkerEvents, work_pool: str,
        worker: str, hostname: str, claim_note: str, prepare: Callable[[dict[str, Any]], Claim | None],
    ) -> None:  # fmt: skip
        self.client = client
        self.work_pool = work_pool
        self.worker = worker
        self.hostname = hostname
        self._runs = runs
        self._book = book
        self._events = events
        self._claim_note = claim_note
        self._prepare = prepare

    def recover(self, containers: Mapping[str, ContainerInfo], live: Collection[str]) -> list[Claim]:
        """Resume our runs that have a container or never started; crash those whose container is gone."""
        found = (
            self.client.call(
                "POST",
                "/flow_runs/filter",
                {
                    "work_pools": {"name": {"any_": [self.work_pool]}},
                    "flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING", "CANCELLING"]}}},
                    "limit": 200,
                },
            )
            or []
        )
        claims: list[Claim] = []
        for flow_run in found if isinstance(found, list) else []:
            if not isinstance(flow_run, dict):
                continue
            try:
                path_id(flow_run.get("id"), "flow run id")
                claim = self._recover_one(flow_run, containers, live)
            except SourceUnavailable:
                raise  # the agent's own trouble: the start fails and is tried again
            except SourceError as e:  # an answer about this run alone: it waits for the next start
                log.warning("flow run %s: cannot recover it (%s)", str(flow_run.get("id"))[:60], one_line(e))
                continue
            if claim is not None:
                claims.append(claim)
        return claims

    def _recover_one(
        self, flow_run: dict[str, Any], containers: Mapping[str, ContainerInfo], live: Collection[str]
    ) -> Claim | None:
        run_id = flow_run["id"]
        info = containers.get(run_id)
        facts = (flow_run, owned_by(info, self.worker), info is not None, self._claim_note, self.hostname, live)
        action = recover_action(*facts)
        if action == "ask_claim":
            state = flow_run.get("state") or {}
            action = recover_action(*facts, claim_stands=self._runs.claim_stands(run_id, state.get("id")))
        if action == "resume":
            return self._resume(flow_run)
        if action == "crash":
            container_id = str(flow_run.get("infrastructure_pid") or "").partition(":")[2]
            log.warning("flow run %s: its container %s is gone; marking it crashed", run_id, container_id[:12])
            self._runs.set_state(run_id, "CRASHED", "Crashed", "Crashed: the run's container is gone (agent restarted)")
        return None

    def _resume(self, flow_run: dict[str, Any]) -> Claim | None:
        # A run that cannot be resumed is CRASHED with why: never left PENDING to fail at every restart.
        claim = self._prepare(flow_run)
        if claim is not None:
            self._book.track(flow_run["id"], mine=True)
            self._events.adopted(flow_run["id"])
        return claim
