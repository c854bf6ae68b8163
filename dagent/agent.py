"""The agent loop: poll, claim, submit up to `concurrency`, watch, report, heartbeat, shut down."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_not_exception_type,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential,
)

from dagent import reload
from dagent.cleanup import Cleanup
from dagent.config import AgentConfig
from dagent.contracts import Claim, RunHandle, RunResult, Runtime, Source, owned_by
from dagent.errors import DaemonError, DagentError, InputError, RunFileError, one_line
from dagent.hostview import HostView
from dagent.metrics import Metrics, null_metrics
from dagent.spec import ContainerSpec, build

log = logging.getLogger("dagent.agent")
flow_log = logging.getLogger("dagent.flow")

# Tries to see a run through when something unexpected (say a cut connection) breaks one.
EXECUTE_ATTEMPTS = 4
MAX_RETRY_DELAY = 30.0
MAX_BACKOFF = 60.0


@dataclass
class _InFlight:
    """One run in flight, and how far it got: a retry resumes from there, never repeats a step."""

    claim: Claim
    handle: RunHandle = field(default_factory=RunHandle)
    thread: threading.Thread | None = None
    spec: ContainerSpec | None = None
    counted_start: bool = False
    result: RunResult | None = None
    reported: bool = False
    # Seconds each step before the start took (judged, image, source, create+start): the start's log line says them.
    took: dict[str, float] = field(default_factory=dict)
    claimed_at: float = field(default_factory=time.monotonic)


class Agent:
    """Drives one Source and one Runtime; knows neither's protocol."""

    def __init__(
        self,
        config: AgentConfig,
        source: Source,
        runtime: Runtime,
        metrics: Metrics | None = None,
        host: HostView | None = None,
        flow_output: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.runtime = runtime
        self.metrics = metrics or null_metrics()
        self.host = host or HostView.of(config, runtime)
        self._judged_by = (self.config, self.host)  # swapped whole by a reload: a run is judged by one pair
        # (run id, line) for each line a container prints when show_flow_logs; the log by default.
        self.flow_output = flow_output or (
            lambda run_id, line: flow_log.info("[%s] %s", run_id, line, extra={"run_id": run_id})
        )
        self.stopping = threading.Event()
        self.draining = threading.Event()
        # What a signal handler asked for: plain attributes, as a handler runs on the loop thread
        # between two bytecodes and could find an Event's lock held by that very thread.
        self.signalled: str | None = None
        # Set by the CLI: loads the configuration again (SIGHUP); None where there is no file to read.
        self.reloader: Callable[[], AgentConfig] | None = None
        self._reload_asked = threading.Event()
        self._wake = threading.Event()
        self._poll_now = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: dict[str, _InFlight] = {}
        self.polls = 0
        self.last_poll_ok: float | None = None
        self._errors_in_a_row = 0
        self._last_heartbeat = 0.0
        self.cleanup = Cleanup(runtime, self.metrics)
        # Runs whose thread gave up before reporting: their containers wait for the next start.
        self._unreported: set[str] = set()
        self._daemon_up = True
        self.metrics.concurrency_limit.set(config.concurrency)

    # --- lifecycle -------------------------------------------------------------------------------

    def poll_soon(self) -> None:
        """Ask for a poll now (the source saw work arrive); safe from any thread."""
        self._poll_now.set()
        self._wake.set()

    def stop(self) -> None:
        """Stop polling and return soon; containers in flight keep running (adopted at restart)."""
        self.stopping.set()
        self._wake.set()

    def drain(self) -> None:
        """Take no more runs; return once the runs in flight have ended and are reported (SIGQUIT)."""
        self.draining.set()
        self._wake.set()

    def reload(self) -> None:
        """Read the configuration again at the next turn of the loop (SIGHUP)."""
        self._reload_asked.set()
        self._wake.set()

    def on_signal(self, what: str) -> None:
        """From a signal handler: "stop", "drain" or "reload", acted on by the loop within half a second."""
        self.signalled = what  # an assignment only: no lock is taken in a handler

    def _take_signal(self) -> None:
        what, self.signalled = self.signalled, None
        if what is not None:
            log.info("signal: %s", what)
            {"stop": self.stop, "drain": self.drain, "reload": self.reload}[what]()

    def run(self, connect: bool = True, reconcile: bool = True) -> None:
        """Start up, reconcile, then poll until stopped or max_polls (then wait for runs in flight).

        `connect=False` when the caller has already connected the source; `reconcile=False` for a
        one-shot run, which must not touch what a long-running agent of the same name left.
        """
        # The source first: its first request is what a control plane sees of a starting agent.
        if connect:
            self.source.connect()
        version = self.runtime.verify()
        self.source.watch(self.poll_soon)
        log.info(
            "agent %s started: source %s, Docker %s, concurrency %d, labels %s",
            self.config.name, self.source.name, version.get("Version", "?"), self.config.concurrency,
            sorted(self.config.labels),
        )  # fmt: skip
        if reconcile:
            self._reconcile()
        while not self.stopping.is_set() and not self.draining.is_set():
            self._cancel_requested()
            self._heartbeat()
            self.cleanup.exited_leftovers(self.config)
            with self._lock:
                busy = set(self._in_flight) | self._unreported
            self.cleanup.expire(self.config, busy)
            filled = self._poll()
            if self.config.max_polls is not None and self.polls >= self.config.max_polls:
                break
            interval = self.config.effective_poll_interval
            if filled:
                # Every free slot was filled, so more work may be waiting: look again as soon as
                # a slot frees rather than a whole interval later.
                self._wait_until(lambda: self._free_slots() > 0 or self.draining.is_set(), timeout=None)
            else:
                backoff = min(interval * 2**self._errors_in_a_row, MAX_BACKOFF) if self._errors_in_a_row else interval
                self._wait_until(lambda: self._poll_now.is_set() or self.draining.is_set(), timeout=backoff)
            self._poll_now.clear()
        if self.stopping.is_set():
            log.info("stopping; %d run(s) left running, to be adopted at the next start", len(self._in_flight))
            return
        why = "draining" if self.draining.is_set() else f"max_polls ({self.polls}) reached"
        log.info("%s: taking no more runs; waiting for %d run(s) in flight", why, len(self._in_flight))
        while self._in_flight and not self.stopping.is_set():
            self._heartbeat()  # still serving: the runs in flight are this agent's
            self._wait_until(lambda: not self._in_flight, timeout=self.config.effective_poll_interval)
        if self.draining.is_set() and not self.stopping.is_set():
            if self._unreported:
                log.warning("drained; %d run(s) could not be reported and are taken up at the next start: %s",
                            len(self._unreported), ", ".join(sorted(self._unreported)))  # fmt: skip
            else:
                log.info("drained: every run in flight has ended and is reported")

    def _wait_until(self, done: Callable[[], bool], timeout: float | None) -> None:
        """Sleep until `done()`, the timeout or a stop, still honouring cancellations meanwhile."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._take_signal()
        while not done() and not self.stopping.is_set():
            remaining = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if remaining <= 0:
                return
            self._wake.wait(remaining)
            self._wake.clear()
            self._take_signal()
            self._cancel_requested()
            self._apply_reload()

    def _apply_reload(self) -> None:
        """Apply a reload asked for: the live keys now, the rest at the next restart; a bad file changes nothing."""
        if not self._reload_asked.is_set() or self.reloader is None:
            return
        self._reload_asked.clear()
        try:
            new = self.reloader()
        except DagentError as e:
            self.metrics.config_reloads.labels("invalid").inc()
            log.error("reload: %s; the configuration in use stays", one_line(e))
            return
        effective, waiting = reload.merge(self.config, new)
        for key in waiting:
            log.warning("reload: %s changed; that takes a restart, the value in use stays", key)
        applied = reload.changed(self.config, effective)
        host = HostView.of(effective, self.runtime, self.host.own_files)
        # The runtime first (credentials, the host-view check), then the pair runs are judged by.
        self.runtime.reconfigure(effective)
        self.config, self.host = effective, host
        self._judged_by = (effective, host)
        self.source.reconfigure(effective)
        logging.getLogger("dagent").setLevel(effective.log_level)
        self.metrics.concurrency_limit.set(effective.concurrency)
        self.metrics.config_reloads.labels("applied").inc()
        log.info("reload: applied %s", ", ".join(applied) if applied else "no changes")
        self._wake.set()  # more slots, perhaps: poll

    # --- polling ---------------------------------------------------------------------------------

    def _free_slots(self) -> int:
        with self._lock:
            return self.config.concurrency - len(self._in_flight)

    def _poll(self) -> bool:
        """One poll; True when it filled every free slot (there may be more work)."""
        free = self._free_slots()
        if free <= 0 or not self._daemon_answers():
            return False
        started = time.monotonic()
        try:
            claims = self.source.poll(free)
        except Exception as e:  # one bad poll never kills the loop
            self._errors_in_a_row += 1
            self.metrics.poll_errors.inc()
            log.error("poll failed (%s); backing off", one_line(e))
            return False
        finally:
            self.polls += 1
            self.metrics.poll_duration.observe(time.monotonic() - started)
        self._errors_in_a_row = 0
        self.last_poll_ok = time.monotonic()
        for claim in claims:
            self._submit(claim)
        return len(claims) >= free

    def _daemon_answers(self) -> bool:
        """Take no runs while the daemon is away: they would only fail to start."""
        up = self.runtime.ping()
        if up != self._daemon_up:
            if up:
                log.info("the Docker daemon answers again; taking runs")
            else:
                log.warning("the Docker daemon does not answer; taking no runs until it does")
            self._daemon_up = up
        return up

    def _submit(self, claim: Claim) -> None:
        run = claim.run
        entry = _InFlight(claim)
        with self._lock:
            self._in_flight[run.id] = entry
            self.metrics.runs_in_flight.set(len(self._in_flight))
        entry.thread = threading.Thread(target=self._execute, args=(entry,), name=f"run-{run.id}", daemon=True)
        entry.thread.start()

    def _judge(self, claim: Claim) -> ContainerSpec:
        """The run's spec, judged against the host as it is now; an InputError (refused) if it cannot be had."""
        config, host = self._judged_by
        try:
            return build(config, claim.run, claim.origin, host.facts(claim.run))
        except (InputError, DaemonError):
            raise  # refused; or the daemon's trouble, retried
        except Exception as e:  # the run's own data broke the judgement: its problem, never a retry
            log.debug("run %s: building its spec raised", claim.run.id, exc_info=e)
            raise RunFileError(f"run {claim.run.id}: cannot be made into a container: {type(e).__name__}: "
                               f"{one_line(e)}") from e  # fmt: skip

    def _refuse(self, claim: Claim, error: InputError) -> None:
        self.metrics.runs_refused.inc()
        for line in error.lines:
            log.error("%s", line)
        self.source.refuse(claim, str(error))

    # --- one run ---------------------------------------------------------------------------------

    def _execute(self, entry: _InFlight) -> None:
        run_id = entry.claim.run.id

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            log.debug("run %s: attempt %d failed", run_id, state.attempt_number, exc_info=error)
            # Safe to repeat: the run resumes from the step it reached, its container is adopted.
            log.warning("run %s: %s; trying again in %.0f s", run_id, one_line(error), delay)

        retrying = Retrying(
            stop=stop_after_attempt(EXECUTE_ATTEMPTS) | stop_when_event_set(self.stopping),
            wait=wait_exponential(multiplier=2.0, max=MAX_RETRY_DELAY),
            retry=retry_if_not_exception_type(InputError),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            retrying(self._finish, entry)
        except InputError as e:  # refused before anything started: nothing to retry
            self._refuse(entry.claim, e)
        except Exception as e:  # a failing run never takes the loop down
            log.error("run %s: could not be finished (%s); it is taken up at the next start", run_id, one_line(e))
            if not entry.reported:
                with self._lock:
                    self._unreported.add(run_id)
        finally:
            with self._lock:
                self._in_flight.pop(run_id, None)
                self.metrics.runs_in_flight.set(len(self._in_flight))
            self._wake.set()

    def _sleep(self, seconds: float) -> None:
        self.stopping.wait(seconds)

    def _finish(self, entry: _InFlight) -> None:
        """Judge the run, run (or adopt) its container to its end, report, clean up.

        Each step is recorded on `entry`, so a retry after a fault resumes where this one stopped:
        a run is reported (and counted) once.
        """
        claim = entry.claim
        if entry.result is None:
            # Judged before the pull, so a refused run costs no download, and again just before
            # the container is created (in _run_to_end), so the host paths checked are the ones mounted.
            with _timed(entry.took, "judged"):
                entry.spec = self._judge(claim)
            result = self._run_to_end(entry)
            if self.stopping.is_set() and result.outcome == "crashed":
                return  # interrupted by our own shutdown: the restart adopts it instead
            entry.result = result
        result, spec = entry.result, entry.spec
        assert spec is not None
        if not entry.reported:
            self.source.report(claim, result)
            entry.reported = True
            self._announce(entry, result)
        self.runtime.finish(spec, result)

    def _announce(self, entry: _InFlight, result: RunResult) -> None:
        """Count and tell how a reported run ended (once per run)."""
        claim, run_id = entry.claim, entry.claim.run.id
        self.metrics.runs_finished.labels(result.outcome).inc()
        level = logging.INFO if result.outcome == "succeeded" else logging.WARNING
        said = [e for e in (result.error, result.why) if e and e != f"exited with code {result.exit_code}"]
        message = f"run {run_id}: {result.outcome}, exit code {result.exit_code}" + (
            f" ({'; '.join(said)})" if said else ""
        )
        log.log(level, message)
        self._tell_source(claim, "INFO" if level == logging.INFO else "WARNING", message)

    def _run_to_end(self, entry: _InFlight) -> RunResult:
        claim, handle = entry.claim, entry.handle
        run_id = claim.run.id
        assert entry.spec is not None
        started = time.monotonic()
        try:
            with _timed(entry.took, "image"):
                self.runtime.prepare(entry.spec)
            self.metrics.pull_duration.observe(time.monotonic() - started)
            with _timed(entry.took, "source"):
                going = not handle.cancel.is_set() and self.source.starting(claim)
            if not going:
                # A run resumed after a restart may have its container already: it is stopped too, or
                # it would end a run Prefect was told is cancelled (and Prefect takes COMPLETED over it).
                try:
                    for info in self.runtime.managed(self.config.name, run_id):
                        if info.state in ("running", "restarting", "paused", "created"):
                            self.runtime.stop_id(info.id, entry.spec.stop_grace)
                except DaemonError as e:  # the run is still cancelled: Prefect takes nothing else over CANCELLING
                    log.warning("run %s: could not stop its container (%s)", run_id, e)
                return RunResult.not_started(run_id, "cancelled", "cancelled before it started")
            with _timed(entry.took, "judged"):
                spec = entry.spec = self._judge(claim)
            with _timed(entry.took, "create+start"):
                container = self.runtime.launch(spec)
            handle.container = container
            if handle.cancel.is_set():
                self.runtime.stop(container, spec.stop_grace)
            self.source.started(claim, container.id)
            if not entry.counted_start:
                entry.counted_start = True
                self.metrics.runs_started.inc()
            log.info("run %s: started container %s (%s) %.3f s after its claim: %s", run_id, container.short_id,
                     spec.image, time.monotonic() - entry.claimed_at, _steps(entry.took))  # fmt: skip
            self._tell_source(
                claim, "INFO", f"dagent {self.config.name}: started container {container.short_id} ({spec.image})"
            )
            stream = claim.origin.stream_output
            show = self.config.show_flow_logs if stream is None else stream
            on_line = self._flow_logger(run_id) if show else None
            launched = time.monotonic()
            result = self.runtime.watch(spec, container, handle, on_line)
            self.metrics.run_duration.labels(result.outcome).observe(time.monotonic() - launched)
            return result
        except InputError:
            raise
        except DagentError as e:
            if self.stopping.is_set():
                return RunResult.crashed(run_id, "agent stopping")
            log.error("run %s: %s", run_id, one_line(e))
            container_id = handle.container.id if handle.container is not None else None
            return RunResult.crashed(run_id, one_line(e), container_id)

    def _flow_logger(self, run_id: str) -> Any:
        def on_line(line: str) -> None:
            if not self.stopping.is_set():  # the seed's on_shutdown: no flow output after we stop
                self.flow_output(run_id, line)

        return on_line

    def _tell_source(self, claim: Claim, level: str, message: str) -> None:
        try:
            self.source.log(claim, level, message)
        except Exception as e:
            log.debug("could not send a log line for run %s: %s", claim.run.id, one_line(e))

    # --- cancellation, heartbeat, restart --------------------------------------------------------

    def _cancel_requested(self) -> None:
        with self._lock:
            entries = dict(self._in_flight)
        if not entries:
            return
        try:
            asked = self.source.cancellations(list(entries))
        except Exception as e:
            log.warning("could not check for cancellations: %s", one_line(e))
            return
        for run_id in asked:
            entry = entries.get(run_id)
            if entry is None or entry.handle.cancel.is_set():
                continue
            log.info("run %s: cancel requested; stopping it", run_id)
            entry.handle.cancel.set()
            container = entry.handle.container
            if container is not None:
                grace = self.config.docker.stop_grace
                threading.Thread(target=self._stop_quietly, args=(container, grace), daemon=True).start()

    def _stop_quietly(self, container: Any, grace: float) -> None:
        try:
            self.runtime.stop(container, grace)
        except DagentError as e:
            log.warning("could not stop %s: %s", getattr(container, "name", container), one_line(e))

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat < self.config.api.heartbeat_interval:
            return
        self._last_heartbeat = now
        try:
            self.source.heartbeat()
        except Exception as e:
            log.warning("heartbeat failed: %s", one_line(e))

    def _reconcile(self) -> None:
        """Adopt what this agent left behind: resume its claimed runs, clean up reported containers."""
        containers = {c.run_id: c for c in self.runtime.managed(self.config.name)}
        resumed = self.source.recover(containers, self.runtime.container_ids())
        for claim in resumed:
            log.info("run %s: resuming after restart", claim.run.id)
            self._submit(claim)
        resumed_ids = {c.run.id for c in resumed}
        for run_id, info in containers.items():
            if run_id not in resumed_ids and owned_by(info, self.config.name):
                self.cleanup.orphan(self.config, info)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """200 while the last poll succeeded within three intervals and the daemon answers."""
        window = 3 * self.config.effective_poll_interval
        age = None if self.last_poll_ok is None else time.monotonic() - self.last_poll_ok
        # A draining agent polls no more, on purpose: a probe must not kill it before its runs end.
        polling = self.draining.is_set() or (age is not None and age <= max(window, 1.0) + 1.0)
        daemon = self.runtime.ping()
        with self._lock:
            in_flight = len(self._in_flight)
        details = {
            "agent": self.config.name,
            "source": self.source.name,
            "last_poll_age_seconds": None if age is None else round(age, 3),
            "docker": "ok" if daemon else "unreachable",
            "runs_in_flight": in_flight,
            "draining": self.draining.is_set(),
        }
        return polling and daemon, details


@contextmanager
def _timed(took: dict[str, float], step: str) -> Iterator[None]:
    """Add the seconds the block takes to took[step] (a step done twice, such as judging, adds up)."""
    began = time.monotonic()
    try:
        yield
    finally:
        took[step] = took.get(step, 0.0) + time.monotonic() - began


def _steps(took: dict[str, float]) -> str:
    return ", ".join(f"{step} {seconds:.3f} s" for step, seconds in took.items())
