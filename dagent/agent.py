"""The agent loop: poll, claim, hand each claim to a RunExecutor up to `concurrency`, cancel, heartbeat,
reload, shut down. What happens to one run is executor.py's."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from dagent import reload
from dagent.cleanup import Cleanup
from dagent.config import AgentConfig
from dagent.contracts import Claim, Runtime, Source, owned_by
from dagent.errors import DagentError, one_line
from dagent.executor import RunExecutor, Services, Settings
from dagent.hostview import HostView
from dagent.metrics import Metrics, null_metrics

log = logging.getLogger("dagent.agent")
flow_log = logging.getLogger("dagent.flow")

MAX_BACKOFF = 60.0


class Agent:
    """Drives one Source and one Runtime; knows neither's protocol.

    Threads: the loop thread owns polling, the in-flight table's keys, reloads and heartbeats; each
    run's RunExecutor thread owns that run. Shared: `_settings` (immutable, swapped whole by a
    reload), `_in_flight` and `_unreported` (under `_lock`), the Events.
    """

    def __init__(
        self,
        config: AgentConfig,
        source: Source,
        runtime: Runtime,
        metrics: Metrics | None = None,
        host: HostView | None = None,
        flow_output: Callable[[str, str], None] | None = None,
    ) -> None:
        self.source = source
        self.runtime = runtime
        self.metrics = metrics or null_metrics()
        self._settings = Settings(config, host or HostView.of(config, runtime))
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
        self._in_flight: dict[str, RunExecutor] = {}
        self.polls = 0
        self.last_poll_ok: float | None = None
        self._errors_in_a_row = 0
        self._last_heartbeat = 0.0
        self.cleanup = Cleanup(runtime, self.metrics)
        # Runs whose thread gave up before reporting: their containers wait for the next start.
        self._unreported: set[str] = set()
        self._daemon_up = True
        self.metrics.concurrency_limit.set(config.concurrency)
        self._services = Services(source, runtime, self.metrics, lambda: self._settings, self.stopping,
                                  lambda run_id, line: self.flow_output(run_id, line))  # fmt: skip

    @property
    def config(self) -> AgentConfig:
        """The configuration in use (a reload swaps it)."""
        return self._settings.config

    @property
    def host(self) -> HostView:
        """The host view runs are judged by (a reload swaps it)."""
        return self._settings.host

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
            log.info("stopping; %d run(s) left running, to be adopted at the next start", self._running())
            return
        why = "draining" if self.draining.is_set() else f"max_polls ({self.polls}) reached"
        log.info("%s: taking no more runs; waiting for %d run(s) in flight", why, self._running())
        while self._running() and not self.stopping.is_set():
            self._heartbeat()  # still serving: the runs in flight are this agent's
            self._wait_until(lambda: not self._running(), timeout=self.config.effective_poll_interval)
        if self.draining.is_set() and not self.stopping.is_set():
            with self._lock:
                unreported = sorted(self._unreported)
            if unreported:
                log.warning("drained; %d run(s) could not be reported and are taken up at the next start: %s",
                            len(unreported), ", ".join(unreported))  # fmt: skip
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
        self._settings = Settings(effective, host)
        self.source.reconfigure(effective)
        logging.getLogger("dagent").setLevel(effective.log_level)
        self.metrics.concurrency_limit.set(effective.concurrency)
        self.metrics.config_reloads.labels("applied").inc()
        log.info("reload: applied %s", ", ".join(applied) if applied else "no changes")
        self._wake.set()  # more slots, perhaps: poll

    # --- polling ---------------------------------------------------------------------------------

    def _running(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def _free_slots(self) -> int:
        return self.config.concurrency - self._running()

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
        executor = RunExecutor(claim, self._services, self._ended)
        with self._lock:
            self._in_flight[executor.run_id] = executor
            self.metrics.runs_in_flight.set(len(self._in_flight))
        executor.start()

    def _ended(self, run_id: str, unreported: bool) -> None:
        """From a run's thread, as it ends: its slot is free; a run it could not report waits for the next start."""
        with self._lock:
            self._in_flight.pop(run_id, None)
            if unreported:
                self._unreported.add(run_id)
            self.metrics.runs_in_flight.set(len(self._in_flight))
        self._wake.set()

    # --- cancellation, heartbeat, restart --------------------------------------------------------

    def _cancel_requested(self) -> None:
        with self._lock:
            executors = dict(self._in_flight)
        if not executors:
            return
        try:
            asked = self.source.cancellations(list(executors))
        except Exception as e:
            log.warning("could not check for cancellations: %s", one_line(e))
            return
        for run_id in asked:
            if run_id in executors:
                executors[run_id].cancel(self.config.docker.stop_grace)

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
        in_flight = self._running()
        details = {
            "agent": self.config.name,
            "source": self.source.name,
            "last_poll_age_seconds": None if age is None else round(age, 3),
            "docker": "ok" if daemon else "unreachable",
            "runs_in_flight": in_flight,
            "draining": self.draining.is_set(),
        }
        return polling and daemon, details
