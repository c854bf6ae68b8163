"""The agent's metrics: Prometheus counters when /metrics is served, no-ops when nothing reads them.

prometheus_client (about 2 MB of an idle agent's memory) is imported only by `prometheus_metrics()`,
which the CLI calls only when `health.address` is set: without the endpoint nobody can read a metric.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any, Protocol

from dagent import __version__


class Count(Protocol):
    """A counter, perhaps by labels (prometheus_client's Counter has this shape)."""

    def inc(self, amount: float = 1) -> None: ...

    def labels(self, *values: Any) -> Count: ...


class Level(Protocol):
    """A gauge."""

    def set(self, value: float) -> None: ...


class Timing(Protocol):
    """A histogram, perhaps by labels."""

    def observe(self, amount: float) -> None: ...

    def labels(self, *values: Any) -> Timing: ...


@dataclass(frozen=True)
class Metrics:
    """Every metric the agent keeps; `registry` is what /metrics renders (None: nothing is served)."""

    runs_started: Count
    runs_finished: Count
    runs_refused: Count
    runs_in_flight: Level
    poll_duration: Timing
    poll_errors: Count
    pull_duration: Timing
    run_duration: Timing
    concurrency_limit: Level
    config_reloads: Count
    containers_expired: Count
    registry: Any = None


class _Null:
    """Counts nothing, for an agent whose metrics nobody can read."""

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def labels(self, *values: Any) -> _Null:
        return self


def null_metrics() -> Metrics:
    """Metrics that keep nothing (no /metrics endpoint)."""
    null = _Null()
    return Metrics(null, null, null, null, null, null, null, null, null, null, null)


def prometheus_metrics() -> Metrics:
    """The agent's Prometheus metrics, in a registry of their own."""
    from prometheus_client import (
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        Info,
        PlatformCollector,
        ProcessCollector,
    )

    registry = CollectorRegistry()
    Info("dagent_build", "dagent's version and Python's", registry=registry).info(
        {"version": __version__, "python": platform.python_version()}
    )
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
    PlatformCollector(registry=registry)
    return Metrics(
        runs_started=Counter("dagent_runs_started", "Runs whose container was started", registry=registry),
        runs_finished=Counter("dagent_runs_finished", "Runs reported, by outcome", ["outcome"], registry=registry),
        runs_refused=Counter("dagent_runs_refused", "Runs refused by policy or invalid", registry=registry),
        runs_in_flight=Gauge("dagent_runs_in_flight", "Runs claimed and not yet reported", registry=registry),
        poll_duration=Histogram("dagent_poll_duration_seconds", "Time one poll took", registry=registry),
        poll_errors=Counter("dagent_poll_errors", "Polls that failed", registry=registry),
        pull_duration=Histogram(
            "dagent_pull_duration_seconds", "Time spent making a run's image present", registry=registry,
            buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900),
        ),
        run_duration=Histogram(
            "dagent_run_duration_seconds", "Container start to end, by outcome", ["outcome"], registry=registry,
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
        ),
        concurrency_limit=Gauge(
            "dagent_concurrency_limit", "Runs this agent takes at once (concurrency)", registry=registry
        ),
        config_reloads=Counter(
            "dagent_config_reloads", "Configuration reloads (SIGHUP), by result", ["result"], registry=registry
        ),
        containers_expired=Counter(
            "dagent_containers_expired", "Kept containers removed after docker.keep_for", registry=registry
        ),
        registry=registry,
    )  # fmt: skip
