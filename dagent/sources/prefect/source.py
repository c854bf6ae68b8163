"""dagent as a worker of a Prefect 3 `docker` work pool: poll, claim, report (no prefect package).

Threads: the agent's loop thread polls, claims, checks cancellations and beats the heart; each run's
thread calls starting/started/report/refuse/log; the event stream's thread and wake-up timers call
`_on_state`. What they share is an object's of its own, each with its own lock never held across a
request (`RunBook`: the runs claimed; `ScheduledRuns`, `Roster`, `WakeTimer`, `Pace`, `WorkerEvents`).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import timedelta
from typing import Any

from dagent.clock import SYSTEM, Clock
from dagent.config import AgentConfig
from dagent.contracts import Claim, ContainerInfo, RunResult
from dagent.errors import DagentError, SourceError, SourceUnavailable, one_line
from dagent.runs import RunRequest
from dagent.sources.prefect.cancels import CancelWatch
from dagent.sources.prefect.claims import claim_note, claimer
from dagent.sources.prefect.client import PrefectClient, path_id
from dagent.sources.prefect.eventchains import WorkerEvents
from dagent.sources.prefect.events import StateEventWatcher
from dagent.sources.prefect.fleet import position
from dagent.sources.prefect.flowruns import FlowRuns
from dagent.sources.prefect.jobvars import FlowRunContext, base_job_template
from dagent.sources.prefect.listing import ScheduledRuns
from dagent.sources.prefect.lookups import Lookups
from dagent.sources.prefect.pace import Pace
from dagent.sources.prefect.preparing import Pool, RunPreparer
from dagent.sources.prefect.recovery import Recovery
from dagent.sources.prefect.reporting import Reporter
from dagent.sources.prefect.runbook import RunBook
from dagent.sources.prefect.worker_events import run_related
from dagent.spec import Origin

log = logging.getLogger("dagent.prefect")


class PrefectSource:
    """Polls a work pool, claims runs with Prefect's state machine, reports crashes and cancellations."""

    name = "prefect"

    def __init__(self, config: AgentConfig, client: PrefectClient | None = None, clock: Clock = SYSTEM) -> None:
        self.config = config
        self.api = config.api
        self.client = client or PrefectClient(config)
        self.labels = frozenset(config.labels)
        self.hostname = socket.gethostname()
        self.worker = config.name
        self._claim_note = claim_note(config.name)
        self._runs = FlowRuns(self.client, self._claim_note)
        self._lookups = Lookups(self.client)
        self.prepare = RunPreparer(config, self.client, self._lookups)  # its pool is set by connect()
        self._watcher: StateEventWatcher | None = None
        self._wake: Callable[[], None] = lambda: None
        self._events = WorkerEvents(self.client, config.name, self.hostname, config.api.send_events)
        self._clock = clock
        self._pace = Pace(clock)
        self._scheduled = ScheduledRuns(
            self.client, config.name, self.api.work_pool, list(self.api.work_queues), self.api.prefetch,
            config.effective_poll_interval, self._streaming, lambda: self._wake(), self._pace, clock,
        )  # fmt: skip
        # Shared by the loop, the run threads and the event stream: the runs claimed, under its own lock.
        self._book = RunBook()
        streaming, interval = (lambda: self._streaming()), config.effective_poll_interval
        self._cancels = CancelWatch(self.client, self._runs, self._book, streaming, interval)
        self._reporter = Reporter(self.client, self._runs, self._book, self._events, self.api, self.worker,
                                  self.hostname, lambda: self.pool_id, streaming)  # fmt: skip
        # The loop thread's own: runs claimed whose claim could not be made for want of the API; tried first.
        self._unprepared: dict[str, dict[str, Any]] = {}

    @property
    def pool_id(self) -> str:
        """The work pool's id, once connected ("" before)."""
        return self.prepare.pool.id

    # --- start-up --------------------------------------------------------------------------------

    def reconfigure(self, config: AgentConfig) -> None:
        """A reload's live keys: labels and docker.* (api.* takes a restart)."""
        self.config = config
        self.prepare.config = config
        self.labels = frozenset(config.labels)
        self._scheduled.mark_due()  # runs left for want of a label are worth another look

    def connect(self) -> None:
        """Check the API answers and the credentials work; read (or create) the work pool."""
        version = self.client.call("GET", "/admin/version")
        pool_name = self.api.work_pool
        pool = self.client.call("GET", f"/work_pools/{pool_name}", allow=(404,))
        if pool is None:
            log.info("work pool %s does not exist; creating it (type docker)", pool_name)
            pool = self.client.call(
                "POST",
                "/work_pools/",
                {"name": pool_name, "type": "docker", "base_job_template": self.prepare.template_to_create()},
                allow=(409,),
            )
            if pool is None:  # another agent created it meanwhile
                pool = self.client.call("GET", f"/work_pools/{pool_name}")
        if not isinstance(pool, dict):
            raise SourceError(f"Prefect API: GET /work_pools/{pool_name}: unexpected answer")
        if pool.get("type") != "docker":
            raise SourceError(f"api.work_pool {pool_name!r} is a {pool.get('type')!r} pool; dagent serves docker pools")
        given = pool.get("base_job_template")
        self.prepare.pool = Pool(
            id=str(pool.get("id") or ""),
            template=given if isinstance(given, dict) and isinstance(given.get("job_configuration"), dict)
            else base_job_template(),
            server_version=str(version) if isinstance(version, str) else None,
        )  # fmt: skip
        log.info("connected to Prefect %s at %s; serving pool %s", version, self.client.url, pool_name)
        self._events.started(self.pool_id, pool_name)

    def watch(self, wake: Callable[[], None]) -> None:
        """Follow the pool's state changes on Prefect's event stream: wake the loop for new or cancelled runs.

        While the stream is up, it also answers what would otherwise cost requests: which runs
        are cancelling, and whether the flow engine reported a run's end itself.
        """
        if not self.api.event_stream or not self.pool_id:
            return
        api = self.api
        token = (
            api.token.get_secret_value()
            if api.token
            else api.auth_string.get_secret_value()
            if api.auth_string
            else None
        )
        self._wake = wake
        self._watcher = StateEventWatcher(
            self.client.url, self.pool_id, token, self._on_state, on_connected=self._on_stream_connected
        )
        self._watcher.start()

    def _on_state(self, state: str, run_id: str, message: str = "") -> None:
        if state == "SCHEDULED":
            self._pace.scheduled(run_id)
            self._scheduled.announced(run_id)
        else:
            # Claimed (or cancelled) since we listed it; a claim not in our words is another agent's.
            peer = state == "PENDING" and message != self._claim_note
            name = claimer(message) if state == "PENDING" else None
            if state == "PENDING":
                # A dagent agent other than the run's owner claims it only once its turn has come. (Judged
                # by this agent's view of the fleet, which may lag the claimer's by a roster read.)
                took_turn = name is not None and position(name, run_id, self._scheduled.fleet()) > 0
                self._pace.claimed(run_id, took_turn=took_turn)
                if not peer:
                    self._pace.heard(run_id, self.client.round_trip())
            else:
                self._pace.left(run_id)
            self._scheduled.heard_taken(run_id, by_peer=peer, peer_name=name if peer else None)
            self._book.hear(run_id, state)
        if state == "CANCELLING":
            self._wake()

    def _on_stream_connected(self) -> None:
        # Runs scheduled while the stream was down were announced to nobody: list at once.
        self._scheduled.mark_due()
        self._wake()

    def _streaming(self) -> bool:
        return self._watcher is not None and self._watcher.connected

    def heartbeat(self) -> None:
        """Mark this agent ONLINE as a worker of the pool."""
        self.client.call(
            "POST",
            f"/work_pools/{self.api.work_pool}/workers/heartbeat",
            {"name": self.worker, "heartbeat_interval_seconds": round(self.api.heartbeat_interval)},
        )

    # --- polling and claiming --------------------------------------------------------------------

    def poll(self, limit: int) -> Sequence[Claim]:
        """Claim up to `limit` scheduled runs of the pool whose required labels this agent has.

        One listing serves several polls (see ScheduledRuns): a burst costs one list request per
        page of runs, not one per freed slot. A stale entry costs nothing worse than a refused
        claim (or a claim check that steps back). Whatever goes wrong with one run's data ends that
        run; when the API itself fails, the runs claimed so far are still returned.
        """
        claims: list[Claim] = []
        try:
            for run_id, unprepared in list(self._unprepared.items()):
                if len(claims) >= limit:
                    return claims
                claim = self._prepare(unprepared)
                self._unprepared.pop(run_id, None)
                if claim is not None:
                    claims.append(claim)
            self._scheduled.begin()
            while len(claims) < limit:
                listed = self._scheduled.next(limit)
                if listed is None:
                    break
                claim = self._consider(listed)
                if claim is not None:
                    claims.append(claim)
        except SourceUnavailable as e:
            if not claims:
                raise
            log.warning("poll cut short (%s); starting the %d run(s) already claimed", one_line(e), len(claims))
        return claims

    def _consider(self, flow_run: dict[str, Any]) -> Claim | None:
        try:
            run_id = path_id(flow_run.get("id"), "flow run id")
        except SourceError as e:
            log.warning("leaving a listed flow run: %s", e)
            return None
        try:
            deployment = self._lookups.deployment(flow_run.get("deployment_id"))
            variables = self.prepare.job_variables(flow_run, deployment)
        except SourceUnavailable:
            raise  # the agent's own trouble: the run stays scheduled for whoever can reach the API
        except Exception as e:
            # Its job configuration cannot be made (a missing variable or block): whoever claims it says why.
            if self._claim_or_leave(run_id):
                try:
                    self._refuse_run(run_id, e)
                except SourceUnavailable:
                    self._unprepared[run_id] = flow_run  # ours: said CRASHED at the next poll
                    raise
            return None
        required = variables.get("required_labels") or []
        if not isinstance(required, list) or not set(map(str, required)) <= self.labels:
            log.debug("leaving flow run %s: needs labels %s", run_id, required)
            return None
        if not self._claim_or_leave(run_id):
            return None
        try:
            return self._to_claim(flow_run, deployment, variables)
        except SourceUnavailable:
            self._unprepared[run_id] = flow_run  # ours now: made into a claim at the next poll
            raise

    def _claim_or_leave(self, run_id: str) -> bool:
        """_claim, where an answer about this run alone (a 4xx) leaves the run instead of failing the poll."""
        try:
            return self._claim(run_id)
        except SourceUnavailable:
            raise
        except SourceError as e:
            log.warning("flow run %s: cannot claim it (%s); leaving it", run_id, one_line(e))
            return False

    def _prepare(self, flow_run: dict[str, Any]) -> Claim | None:
        """The Claim for a run already ours (resumed, or claimed while the API failed); a bad one is CRASHED."""
        try:
            deployment = self._lookups.deployment(flow_run.get("deployment_id"))
            variables = self.prepare.job_variables(flow_run, deployment)
        except SourceUnavailable:
            raise
        except Exception as e:
            self._refuse_run(flow_run["id"], e)
            return None
        return self._to_claim(flow_run, deployment, variables)

    def _to_claim(
        self, flow_run: dict[str, Any], deployment: dict[str, Any] | None, variables: Mapping[str, Any]
    ) -> Claim | None:
        """The Claim for a run that is ours; a run whose data cannot be made into one is CRASHED with why, once."""
        run_id = flow_run["id"]
        try:
            run = self.prepare.run_request(run_id, variables)
            flow = self._lookups.flow(flow_run.get("flow_id"))
            context = FlowRunContext(flow_run, deployment, flow.get("name") if flow else None)
            origin = self.prepare.origin(run_id, context, variables)
            related = run_related(flow_run, deployment, flow, self.pool_id, self.api.work_pool)
        except SourceUnavailable:
            raise
        except Exception as e:  # any type: one run's data never stops the poll, recover or the start
            self._refuse_run(run_id, e)
            return None
        self._events.begin(run_id, related, str(flow_run.get("name") or ""))
        return Claim(run, origin, run_id)

    def _refuse_run(self, run_id: str, error: BaseException) -> None:
        """End a claimed run whose data is bad: CRASHED with why (a bug's exception names its type)."""
        if not isinstance(error, DagentError):
            log.debug("flow run %s: preparing it raised", run_id, exc_info=error)
        reason = str(error) if isinstance(error, DagentError) else f"{type(error).__name__}: {one_line(error)}"
        claim = Claim(RunRequest.model_construct(id=run_id, image="invalid"), Origin(self.name), run_id)
        try:
            self.refuse(claim, reason)
        except SourceUnavailable:
            raise  # the API is away: the run is tried again (the next poll, or the next start)
        except SourceError as e:  # Prefect refused the CRASHED for this run alone: never the poll's end
            log.warning("flow run %s: could not set it CRASHED (%s)", run_id, one_line(e))

    def _claim(self, run_id: str) -> bool:
        """Propose PENDING; True when the run is ours (Prefect's state machine decides)."""
        self._pace.sent(run_id)
        answer = self._runs.claim(run_id, self._scheduled.list_age)
        if answer.ours:
            self._book.track(run_id, mine=True, fresh=True)
            log.info("claimed flow run %s", run_id)
            return True
        self._pace.dropped(run_id)  # not heard back: a refused claim makes no event
        if answer.wait is not None:
            delay = answer.wait or self.config.effective_poll_interval
            log.debug("flow run %s: WAIT; trying again in %.0f s", run_id, delay)
            self._scheduled.wake_at(self._clock.now() + timedelta(seconds=delay))
        return False

    # --- a run's life ----------------------------------------------------------------------------

    def starting(self, claim: Claim) -> bool:
        """False when the run must not start: cancelled while PENDING, or claimed by another since.

        As Prefect's worker does, the run goes to `Submitting` first. Prefect takes a PENDING proposal
        over PENDING (under a new name) but also over a final state, so it is proposed at once only
        for a run this process has just claimed (its state is our Pending); there the acceptance is
        the not-cancelled check. A resumed run's state is read first: its container may have ended
        it meanwhile, and `Submitting` over an engine's COMPLETED would revive it."""
        run_id = claim.handle
        if self._book.take_fresh(run_id) and self._runs.submitting(run_id):
            self._events.submitted(run_id)
            return True
        state = self._runs.state(run_id) or {}
        kind, message = state.get("type"), state.get("message")
        if kind in ("CANCELLING", "CANCELLED"):
            log.info("flow run %s was cancelled before it started", run_id)
            if kind == "CANCELLED":
                self._book.abandon(run_id)  # nothing left to report; CANCELLING still gets CANCELLED
            return False
        if kind == "PENDING" and message != self._claim_note:
            log.warning("flow run %s was claimed by another worker before it started; leaving it to them", run_id)
            self._book.abandon(run_id)  # theirs: nothing of ours to report
            return False
        if kind == "PENDING" and state.get("name") != "Submitting":
            self._runs.submitting(run_id)  # a resumed claim of ours takes the worker's next step too
        # Ours (Submitting already), or moved on by its container: the container decides, as before.
        self._events.submitted(run_id)
        return True

    def started(self, claim: Claim, container_id: str) -> None:
        """Tell Prefect where the run is and which worker runs it (see Reporter)."""
        self._reporter.started(claim.handle, container_id)

    def report(self, claim: Claim, result: RunResult) -> None:
        """Set CANCELLED or CRASHED when the flow engine in the container could not say it itself."""
        self._reporter.report(claim.handle, result)

    def refuse(self, claim: Claim, reason: str) -> None:
        """The run may not run here: mark it CRASHED with why, so users see it in Prefect."""
        self._reporter.refuse(claim.handle, reason)

    def cancellations(self, run_ids: Sequence[str]) -> Sequence[str]:
        """Runs of ours in CANCELLING (see CancelWatch)."""
        return self._cancels.cancelling(run_ids)

    def log(self, claim: Claim, level: str, message: str) -> None:
        """Queue the agent's own line about a run for Prefect (api.send_agent_logs); sent in batches."""
        self._reporter.log(claim.handle, level, message)

    # --- restart ---------------------------------------------------------------------------------

    def recover(self, containers: Mapping[str, ContainerInfo], live: Collection[str]) -> Sequence[Claim]:
        """Resume our runs that have a container or never started; crash those whose container is gone."""
        recovery = Recovery(self.client, self._runs, self._book, self._events, self.api.work_pool, self.worker,
                            self.hostname, self._claim_note, self._prepare)  # fmt: skip
        return recovery.recover(containers, live)

    def close(self) -> None:
        """Send queued log lines and events, stop the event stream and close the API connection pool."""
        if self._watcher is not None:
            self._watcher.stop()
        self._scheduled.close()
        self._reporter.close()
        self._events.close()
        self.client.close()
