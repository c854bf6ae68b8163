"""One run in flight, in a thread of its own: judge it, make its image present, start (or adopt) its
container, watch it to its end, report it once, clean up.

A RunExecutor is the only writer of its run's progress and of its handle's container, and owns the
run's retries: a retry after a fault resumes from the step reached, so a run is reported (and its
start counted) once. The loop thread only reads `handle` and calls `cancel`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tenacity import (
    Retrying,
    retry_if_not_exception_type,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential,
)

from dagent.config import AgentConfig
from dagent.contracts import Claim, RunHandle, RunResult, Runtime, Source
from dagent.errors import DaemonError, DagentError, InputError, RunFileError, one_line
from dagent.hostview import HostView
from dagent.metrics import Metrics
from dagent.retry import logged
from dagent.spec import ContainerSpec, build

log = logging.getLogger("dagent.agent")

# Tries to see a run through when something unexpected (say a cut connection) breaks one.
EXECUTE_ATTEMPTS = 4
MAX_RETRY_DELAY = 30.0


@dataclass(frozen=True)
class Settings:
    """What runs are judged and run by: swapped whole by a reload, read once per unit of work."""

    config: AgentConfig
    host: HostView


@dataclass(frozen=True)
class Services:
    """What every run's executor shares with the loop (each thread-safe, or owned by the source)."""

    source: Source
    runtime: Runtime
    metrics: Metrics
    settings: Callable[[], Settings]
    stopping: threading.Event
    flow_output: Callable[[str, str], None]


class RunExecutor:
    """One claimed run's thread; `done(run_id, unreported)` is called when it ends, whichever way
    (`unreported`: it gave up before reporting, and its container waits for the next start)."""

    def __init__(self, claim: Claim, services: Services, done: Callable[[str, bool], None]) -> None:
        self.claim = claim
        self.handle = RunHandle()
        self._services = services
        self._done = done
        self._settings = services.settings()
        self._spec: ContainerSpec | None = None
        self._counted_start = False
        self._result: RunResult | None = None
        self._reported = False
        # Seconds each step before the start took (judged, image, source, create+start): the start's log line says them.
        self._took: dict[str, float] = {}
        self._claimed_at = time.monotonic()
        self.thread = threading.Thread(target=self._execute, name=f"run-{claim.run.id}", daemon=True)

    @property
    def run_id(self) -> str:
        return self.claim.run.id

    def start(self) -> None:
        """Run it in its own thread."""
        self.thread.start()

    def cancel(self, grace: float) -> None:
        """From the loop thread: the run was cancelled; stop its container if it has one (else it never starts)."""
        if self.handle.cancel.is_set():
            return
        log.info("run %s: cancel requested; stopping it", self.run_id)
        self.handle.cancel.set()
        container = self.handle.container
        if container is not None:
            threading.Thread(target=self._stop_quietly, args=(container, grace), daemon=True).start()

    def _stop_quietly(self, container: Any, grace: float) -> None:
        try:
            self._services.runtime.stop(container, grace)
        except DagentError as e:
            log.warning("could not stop %s: %s", getattr(container, "name", container), one_line(e))

    # --- the thread --------------------------------------------------------------------------------

    def _execute(self) -> None:
        run_id = self.run_id

        def say(error: str, _: int, delay: float) -> str:
            # Safe to repeat: the run resumes from the step it reached, its container is adopted.
            return f"run {run_id}: {error}; trying again in {delay:.0f} s"

        before_sleep = logged(log, logging.WARNING, say, trace=f"run {run_id}")
        stopping = self._services.stopping
        retrying = Retrying(
            stop=stop_after_attempt(EXECUTE_ATTEMPTS) | stop_when_event_set(stopping),
            wait=wait_exponential(multiplier=2.0, max=MAX_RETRY_DELAY),
            retry=retry_if_not_exception_type(InputError),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        unreported = False
        try:
            retrying(self._finish)
        except InputError as e:  # refused before anything started: nothing to retry
            self._refuse(e)
        except Exception as e:  # a failing run never takes the loop down
            log.error("run %s: could not be finished (%s); it is taken up at the next start", run_id, one_line(e))
            unreported = not self._reported
        finally:
            self._done(run_id, unreported)

    def _sleep(self, seconds: float) -> None:
        self._services.stopping.wait(seconds)  # a stop ends the wait between tries at once

    def _judge(self) -> ContainerSpec:
        """The run's spec, judged against the host as it is now; an InputError (refused) if it cannot be had."""
        self._settings = settings = self._services.settings()
        run = self.claim.run
        try:
            return build(settings.config, run, self.claim.origin, settings.host.facts(run))
        except (InputError, DaemonError):
            raise  # refused; or the daemon's trouble, retried
        except Exception as e:  # the run's own data broke the judgement: its problem, never a retry
            log.debug("run %s: building its spec raised", run.id, exc_info=e)
            raise RunFileError(f"run {run.id}: cannot be made into a container: {type(e).__name__}: "
                               f"{one_line(e)}") from e  # fmt: skip

    def _refuse(self, error: InputError) -> None:
        self._services.metrics.runs_refused.inc()
        for line in error.lines:
            log.error("%s", line)
        self._services.source.refuse(self.claim, str(error))

    def _finish(self) -> None:
        """Judge the run, run (or adopt) its container to its end, report, clean up; each step once."""
        if self._result is None:
            # Judged before the pull, so a refused run costs no download, and again just before
            # the container is created (in _run_to_end), so the host paths checked are the ones mounted.
            with _timed(self._took, "judged"):
                self._spec = self._judge()
            result = self._run_to_end(self._spec)
            if self._services.stopping.is_set() and result.outcome == "crashed":
                return  # interrupted by our own shutdown: the restart adopts it instead
            self._result = result
        result, spec = self._result, self._spec
        assert spec is not None
        if not self._reported:
            self._services.source.report(self.claim, result)
            self._reported = True
            self._announce(result)
        self._services.runtime.finish(spec, result)

    def _announce(self, result: RunResult) -> None:
        """Count and tell how a reported run ended (once per run)."""
        self._services.metrics.runs_finished.labels(result.outcome).inc()
        level = logging.INFO if result.outcome == "succeeded" else logging.WARNING
        said = [e for e in (result.error, result.why) if e and e != f"exited with code {result.exit_code}"]
        message = f"run {self.run_id}: {result.outcome}, exit code {result.exit_code}" + (
            f" ({'; '.join(said)})" if said else ""
        )
        log.log(level, message)
        self._tell_source("INFO" if level == logging.INFO else "WARNING", message)

    def _run_to_end(self, judged: ContainerSpec) -> RunResult:
        run_id, handle, services = self.run_id, self.handle, self._services
        runtime, metrics = services.runtime, services.metrics
        started = time.monotonic()
        try:
            with _timed(self._took, "image"):
                runtime.prepare(judged)
            metrics.pull_duration.observe(time.monotonic() - started)
            with _timed(self._took, "source"):
                going = not handle.cancel.is_set() and services.source.starting(self.claim)
            if not going:
                self._stop_existing(judged)
                return RunResult.not_started(run_id, "cancelled", "cancelled before it started")
            with _timed(self._took, "judged"):
                spec = self._spec = self._judge()
            with _timed(self._took, "create+start"):
                container = runtime.launch(spec)
            handle.container = container
            if handle.cancel.is_set():
                runtime.stop(container, spec.stop_grace)
            services.source.started(self.claim, container.id)
            if not self._counted_start:
                self._counted_start = True
                metrics.runs_started.inc()
            log.info("run %s: started container %s (%s) %.3f s after its claim: %s", run_id, container.short_id,
                     spec.image, time.monotonic() - self._claimed_at, _steps(self._took))  # fmt: skip
            config = self._settings.config
            self._tell_source("INFO", f"dagent {config.name}: started container {container.short_id} ({spec.image})")
            stream = self.claim.origin.stream_output
            show = config.show_flow_logs if stream is None else stream
            on_line = self._flow_logger() if show else None
            launched = time.monotonic()
            result = runtime.watch(spec, container, handle, on_line)
            metrics.run_duration.labels(result.outcome).observe(time.monotonic() - launched)
            return result
        except InputError:
            raise
        except DagentError as e:
            if services.stopping.is_set():
                return RunResult.crashed(run_id, "agent stopping")
            log.error("run %s: %s", run_id, one_line(e))
            container_id = handle.container.id if handle.container is not None else None
            return RunResult.crashed(run_id, one_line(e), container_id)

    def _stop_existing(self, spec: ContainerSpec) -> None:
        """A run resumed after a restart may have its container already: stop it too, or it would end a
        run Prefect was told is cancelled (and Prefect takes COMPLETED over it)."""
        runtime = self._services.runtime
        try:
            for info in runtime.managed(self._settings.config.name, self.run_id):
                if info.state in ("running", "restarting", "paused", "created"):
                    runtime.stop_id(info.id, spec.stop_grace)
        except DaemonError as e:  # the run is still cancelled: Prefect takes nothing else over CANCELLING
            log.warning("run %s: could not stop its container (%s)", self.run_id, e)

    def _flow_logger(self) -> Callable[[str], None]:
        run_id, stopping, output = self.run_id, self._services.stopping, self._services.flow_output

        def on_line(line: str) -> None:
            if not stopping.is_set():  # the seed's on_shutdown: no flow output after we stop
                output(run_id, line)

        return on_line

    def _tell_source(self, level: str, message: str) -> None:
        try:
            self._services.source.log(self.claim, level, message)
        except Exception as e:
            log.debug("could not send a log line for run %s: %s", self.run_id, one_line(e))


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
