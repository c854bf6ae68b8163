"""What the Prefect source tells Prefect of a run of its own: where it runs (infrastructure_pid), which
worker runs it (the worker's flow-run labels), how it ended when its engine could not say so itself
(CANCELLED, CRASHED with why and the end of its output), that it was refused, and the agent's own
lines about it. Called from the run's thread."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dagent.config import ApiConfig
from dagent.contracts import RunResult
from dagent.errors import SourceError, one_line
from dagent.sources.prefect.client import PrefectClient, path_id
from dagent.sources.prefect.decisions import ENGINE_ENDS, end_by_result, end_by_state
from dagent.sources.prefect.eventchains import WorkerEvents
from dagent.sources.prefect.flowruns import FlowRuns
from dagent.sources.prefect.logship import LogShipper
from dagent.sources.prefect.runbook import RunBook

log = logging.getLogger("dagent.prefect")

# How long a container that exited 0 waits for the engine's final state to be heard on the stream.
ENGINE_EVENT_WAIT = 2.0
_LOG_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}


class Reporter:
    """One pool's reports, as one worker of it."""

    def __init__(
        self, client: PrefectClient, runs: FlowRuns, book: RunBook, events: WorkerEvents, api: ApiConfig,
        worker: str, hostname: str, pool_id: Callable[[], str], streaming: Callable[[], bool],
    ) -> None:  # fmt: skip
        self.client = client
        self.api = api
        self.worker = worker
        self.hostname = hostname
        self.pool_id = pool_id
        self._runs = runs
        self._book = book
        self._events = events
        self._streaming = streaming
        self._logs = LogShipper(client) if api.send_agent_logs else None

    def started(self, run_id: str, container_id: str) -> None:
        """Record where the run is (`infrastructure_pid` = host:container) and, as Prefect's worker
        does, which worker runs it (`prefect.worker.*` and `prefect.work-pool.*` flow-run labels)."""
        run_path = f"/flow_runs/{path_id(run_id)}"
        self.client.call("PATCH", run_path, {"infrastructure_pid": f"{self.hostname}:{container_id}"})
        self._label(run_id)
        self._events.container_up(run_id, container_id)

    def _label(self, run_id: str) -> None:
        """The worker's flow-run labels, which Prefect's worker sets before it starts a run's container."""
        if not self.api.worker_labels:
            return
        labels = {"prefect.worker.name": self.worker, "prefect.worker.type": "docker",
                  "prefect.work-pool.name": self.api.work_pool, "prefect.work-pool.id": self.pool_id()}  # fmt: skip
        try:
            self.client.call("PATCH", f"/flow_runs/{path_id(run_id)}/labels", {k: v for k, v in labels.items() if v})
        except SourceError as e:  # a label is the UI's, never worth a running run
            log.warning("flow run %s: could not set the worker's labels (%s)", run_id, one_line(e))

    def report(self, run_id: str, result: RunResult) -> None:
        """Set CANCELLED or CRASHED when the flow engine in the container could not say it itself (see decisions)."""
        heard = self._engine_said(run_id) if result.outcome == "succeeded" else None
        self._book.track(run_id, mine=False)
        self._events.ended(run_id, result)
        if self._book.take_abandoned(run_id):  # cancelled before it started: nothing to say
            return
        state: dict[str, Any] = {}
        action = end_by_result(result)
        if action is None:
            state = {"type": heard} if heard else (self._runs.state(run_id) or {})
            action = end_by_state(result, state, self.worker)
        if action.kind == "cancel":
            self._runs.set_state(
                run_id, "CANCELLED", "Cancelled", "Cancelled: dagent stopped the container", force=True
            )
        elif action.kind == "put_back":
            try:
                if self._runs.revived(run_id, state.get("id")):
                    log.info("flow run %s ended; %s's stale claim revived it: its end is put back",
                             run_id, action.other)  # fmt: skip
            except SourceError as e:
                log.warning("flow run %s: could not check %s's claim on it (%s)", run_id, action.other, e)
        elif action.kind == "crash":
            if action.label:
                self._label(run_id)
            # Without force, Prefect refuses CRASHED over a final state: an engine's FAILED stands.
            if self._runs.set_state(run_id, "CRASHED", "Crashed", "Crashed: " + action.message, quiet=True):
                # Only when CRASHED stands: an engine that ended the run (FAILED) has logged its error itself.
                self._ship_tail(run_id, result)

    def _ship_tail(self, run_id: str, result: RunResult) -> None:
        """The end of a failed container's output to the run's logs, so Prefect's UI shows the error itself."""
        if self._logs is None or not result.tail:
            return
        self._logs.add(run_id, _LOG_LEVELS["ERROR"], f"dagent: the container {result.why}; its last output:")
        for line in result.tail:
            self._logs.add(run_id, _LOG_LEVELS["ERROR"], line)
        self._logs.flush()

    def _engine_said(self, run_id: str) -> str | None:
        """The final (or paused) state the engine set, as heard on the event stream; None if not heard.

        The event comes through Prefect's event pipeline, so it may trail the container's exit
        by a moment: waiting that moment is cheaper than a request per run.
        """
        return self._book.wait_heard(run_id, ENGINE_ENDS, ENGINE_EVENT_WAIT if self._streaming() else 0.0)

    def refuse(self, run_id: str, reason: str) -> None:
        """The run may not run here: mark it CRASHED with why, so users see it in Prefect."""
        self._book.track(run_id, mine=False)
        self._events.forget(run_id)
        log.error("flow run %s refused: %s", run_id, reason.replace("\n", "; "))
        self._runs.set_state(run_id, "CRASHED", "Crashed", f"Crashed: dagent refused this run: {reason}"[:2000])

    def log(self, run_id: str, level: str, message: str) -> None:
        """Queue the agent's own line about a run for Prefect (api.send_agent_logs); sent in batches."""
        if self._logs is not None:
            self._logs.add(run_id, _LOG_LEVELS.get(level, 20), message)

    def close(self) -> None:
        """Send the log lines still queued."""
        if self._logs is not None:
            self._logs.close()
