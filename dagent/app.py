"""The wiring: an agent assembled from a configuration (source, runtime, host view, metrics, health
server, reloader, signals), and the one-run agent of `dagent run`. The CLI parses and maps errors to
exit codes; this module builds; nothing else does either.

Imports are made where they are needed: `dagent start` has the source make its first request before
the rest of the agent is even imported, and an agent without /metrics never imports Prometheus.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dagent.errors import ConfigError, DaemonError, PolicyError
from dagent.naming import StableName

if TYPE_CHECKING:
    from dagent.agent import Agent
    from dagent.config import AgentConfig, LoadedConfig
    from dagent.contracts import RunResult, Runtime, Source
    from dagent.health import HealthServer
    from dagent.hostview import HostView
    from dagent.runs import RunRequest
    from dagent.spec import ContainerSpec


class _Signals:
    """Signal handlers from the very start: before the agent exists a stop exits, a drain waits for it."""

    def __init__(self) -> None:
        self.agent: Agent | None = None
        self.early: list[str] = []
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        kinds: dict[int, str] = {signal.SIGQUIT: "drain", signal.SIGHUP: "reload"}
        what = kinds.get(signum, "stop")
        if self.agent is not None:
            self.agent.on_signal(what)  # no lock, no logging here: the loop thread acts on it
        elif what == "stop":
            raise SystemExit(0)  # nothing claimed yet
        else:
            self.early.append(what)

    def attach(self, agent: Agent) -> None:
        """From now on signals go to the agent; a drain asked for while it was being built applies."""
        if "drain" in self.early:
            agent.drain()
        self.agent = agent


def serve(load: Callable[[], LoadedConfig]) -> int:
    """Run the agent until SIGINT/SIGTERM, a drain (SIGQUIT) or max_polls; `load()` reads the configuration
    (again at each SIGHUP)."""
    from dagent import logs

    signals = _Signals()
    loaded, named = load(), StableName()
    logs.setup(loaded.config.log_format, loaded.config.log_level)
    config = named(loaded)
    # The source's first request (what a control plane sees of a starting agent) goes out before
    # the rest of the agent is even imported.
    source = make_source(config)
    try:
        source.connect()
    except BaseException:
        source.close()
        raise
    from dagent.runtime import DockerRuntime

    runtime = DockerRuntime(config)
    agent = _agent(config, source, runtime, loaded.path, lambda: named(load()))
    signals.attach(agent)
    health = _health_server(config, agent)
    try:
        agent.run(connect=False)
    finally:
        if health is not None:
            health.stop()
        source.close()
        runtime.close()
    return 0


def _agent(
    config: AgentConfig, source: Source, runtime: Runtime, config_file: Path | None, reload: Callable[[], AgentConfig]
) -> Agent:
    """The agent around a connected source and its runtime: host view, metrics, and how it reloads."""
    from dagent.agent import Agent
    from dagent.hostview import exposed_roots
    from dagent.metrics import null_metrics, prometheus_metrics

    for root in exposed_roots(config):
        logging.getLogger("dagent").warning(
            "docker.allowed_host_paths: %s is on a mount without nosuid,nodev: a run (root in its container "
            "by default) can leave set-uid files or device nodes there for this host's users", root)  # fmt: skip
    # health.address waits for a restart, so an agent without the endpoint never needs Prometheus.
    metrics = prometheus_metrics() if config.health.address else null_metrics()
    agent = Agent(config, source, runtime, metrics, host_view(config, runtime, config_file))
    agent.reloader = reload
    return agent


def _health_server(config: AgentConfig, agent: Agent) -> HealthServer | None:
    """/health and /metrics on health.address, serving already; None when unset."""
    if not config.health.address:
        return None
    from dagent.health import HealthServer

    try:
        health = HealthServer(config.health.address, agent.health, agent.metrics)
    except OSError as e:
        raise ConfigError(f"health.address {config.health.address}: cannot listen: {e.strerror}") from None
    health.start()
    return health


def make_source(config: AgentConfig) -> Source:
    """The Source the configuration names."""
    if config.source == "inbox":
        from dagent.sources.inbox import InboxSource

        return InboxSource(config)
    from dagent.sources.prefect import PrefectSource

    return PrefectSource(config)


def host_view(config: AgentConfig, runtime: Runtime, config_file: Path | None) -> HostView:
    """The HostView runs are judged by: the daemon's facts, and the agent's own files protected."""
    from dagent.config import ENV_CONFIG
    from dagent.hostview import HostView

    own = [p for p in (config_file, os.environ.get(ENV_CONFIG)) if p]
    return HostView.of(config, runtime, own)


def judge(loaded: LoadedConfig, run: RunRequest) -> ContainerSpec:
    """The run's ContainerSpec as the agent would judge it now; with no daemon, by Docker's defaults."""
    from dagent.contracts import DaemonFacts
    from dagent.hostview import HostView, socket_path, view_error
    from dagent.runtime import DockerRuntime
    from dagent.spec import build

    config = loaded.config
    view = host_view(config, DockerRuntime(config), loaded.path)
    try:
        facts = view.facts(run)
    except DaemonError as e:
        logging.getLogger("dagent").warning("the daemon was not asked (%s); judging by Docker's defaults", e)
        base_url = config.docker.base_url
        daemon = DaemonFacts(None, socket_path(base_url), view_error(base_url, config.docker.verify_host_view))
        facts = HostView(config, daemon, own_files=view.own_files).facts(run)
    return build(config, run, facts=facts)


def run_one(loaded: LoadedConfig, run: RunRequest, show: bool) -> RunResult:
    """Apply one run now, as the agent would (`dagent run`); SIGINT or SIGTERM stops its container.

    PolicyError when it is refused, DaemonError when it could not be finished."""
    from dagent.agent import Agent
    from dagent.runtime import DockerRuntime
    from dagent.sources.oneshot import OneShotSource

    config = loaded.config.model_copy(update={"max_polls": 1, "concurrency": 1, "show_flow_logs": show})
    source = OneShotSource(run)
    runtime = DockerRuntime(config)
    agent = Agent(config, source, runtime, host=host_view(config, runtime, loaded.path),
                  flow_output=lambda _run_id, line: print(line, flush=True))  # fmt: skip

    def on_signal(signum: int, _frame: object) -> None:
        print(f"dagent: {signal.Signals(signum).name}: stopping the run", file=sys.stderr)
        source.cancel()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        agent.run(reconcile=False)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        runtime.close()
    if source.refused is not None:
        raise PolicyError(source.refused.splitlines())
    if source.result is None:
        raise DaemonError(f"run {source.run.id}: could not be finished (see the lines above)")
    return source.result
