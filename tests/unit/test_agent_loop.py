"""The agent loop's branches with fakes at its seams (no daemon, no server): milliseconds each."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest

from dagent import executor as executor_module
from dagent.agent import Agent
from dagent.config import load_config
from dagent.errors import DaemonError
from dagent.metrics import prometheus_metrics
from dagent.runs import RunRequest
from tests.support.fakes import FakeRuntime, FakeSource


def _agent(source: FakeSource, runtime: FakeRuntime, **config: Any) -> Agent:
    settings = {"name": "unit", "poll_interval": 0.01, "max_polls": 3, **config}
    return Agent(load_config(settings, environ={}).config, source, runtime, prometheus_metrics())


def _run(run_id: str, **fields: Any) -> RunRequest:
    return RunRequest.model_validate({"id": run_id, "image": "busybox", **fields})


def _count(metric: Any, **labels: str) -> float:
    return float((metric.labels(**labels) if labels else metric)._value.get())


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_module, "MAX_RETRY_DELAY", 0.0)


def test_runs_are_started_watched_and_reported_once_each() -> None:
    source, runtime = FakeSource(queue=[_run("a"), _run("b"), _run("c")]), FakeRuntime(exit_codes={"b": 3})
    agent = _agent(source, runtime)
    agent.run()
    assert sorted((r.run_id, r.outcome, r.exit_code) for r in source.reports) == [
        ("a", "succeeded", 0), ("b", "failed", 3), ("c", "succeeded", 0)
    ]  # fmt: skip
    assert sorted(runtime.launched) == ["a", "b", "c"]
    assert _count(agent.metrics.runs_started) == 3


def test_a_fault_after_the_report_resumes_there_never_reports_twice() -> None:
    """Clean-up fails once after the report: the retry only cleans up (defect: re-adopt, re-report, count twice)."""
    source = FakeSource(queue=[_run("a")])
    runtime = FakeRuntime(fail={"finish": [DaemonError("docker: remove: connection reset")]})
    agent = _agent(source, runtime)
    agent.run()
    assert [r.run_id for r in source.reports] == ["a"]
    assert runtime.launched == ["a"] and runtime.calls["watch"] == 1 and runtime.calls["finish"] == 2
    assert _count(agent.metrics.runs_started) == 1
    assert _count(agent.metrics.runs_finished, outcome="succeeded") == 1


def test_a_fault_while_watching_adopts_and_counts_the_start_once() -> None:
    """A cut connection mid-watch: the retry launches again (adopting), the start is counted once."""
    source = FakeSource(queue=[_run("a")])
    runtime = FakeRuntime(fail={"watch": [ConnectionResetError("cut")]})
    agent = _agent(source, runtime)
    agent.run()
    assert [r.outcome for r in source.reports] == ["succeeded"]
    assert runtime.calls["launch"] == 2 and _count(agent.metrics.runs_started) == 1


def test_a_refused_run_is_never_prepared_or_launched() -> None:
    source, runtime = FakeSource(queue=[_run("p", privileged=True)]), FakeRuntime()
    agent = _agent(source, runtime)
    agent.run()
    assert [r for r, _ in source.refused] == ["p"] and "allow_privileged" in source.refused[0][1]
    assert runtime.calls["prepare"] == 0 and runtime.launched == [] and source.reports == []
    assert _count(agent.metrics.runs_refused) == 1


def test_a_run_cancelled_before_it_starts_never_starts() -> None:
    source, runtime = FakeSource(queue=[_run("x")], cancel={"x"}), FakeRuntime()
    _agent(source, runtime).run()
    assert runtime.launched == [] and [(r.outcome, r.error) for r in source.reports] == [
        ("cancelled", "cancelled before it started")
    ]


def test_a_resumed_run_cancelled_before_it_starts_stops_the_container_it_already_has() -> None:
    """After a restart a run may have its container already (the mixed-fleet row caught its run ending
    COMPLETED after dagent said CANCELLED): cancelled before the launch, that container is stopped too."""
    from dagent.contracts import ContainerInfo

    labels = {"dagent.agent": "unit", "dagent.run-id": "x"}
    live = ContainerInfo("c1", "dagent-x", "x", "busybox", "running", None, "", None, labels)
    source, runtime = FakeSource(queue=[_run("x")], cancel={"x"}), FakeRuntime(containers=[live])
    _agent(source, runtime).run()
    assert runtime.launched == [] and runtime.stopped == ["c1"]
    assert [(r.outcome, r.error) for r in source.reports] == [("cancelled", "cancelled before it started")]


def test_a_daemon_fault_stopping_that_container_still_reports_the_run_cancelled() -> None:
    """Prefect takes only CANCELLED over CANCELLING: a fault here must not turn the run into a crash."""
    from dagent.contracts import ContainerInfo

    labels = {"dagent.agent": "unit", "dagent.run-id": "x"}
    live = ContainerInfo("c1", "dagent-x", "x", "busybox", "running", None, "", None, labels)
    runtime = FakeRuntime(containers=[live], fail={"stop_id": [DaemonError("docker: stop: connection reset")]})
    source = FakeSource(queue=[_run("x")], cancel={"x"})
    _agent(source, runtime).run()
    assert [(r.outcome, r.error) for r in source.reports] == [("cancelled", "cancelled before it started")]


def test_a_run_cancelled_while_running_is_stopped_and_reported_cancelled() -> None:
    block = threading.Event()
    source, runtime = FakeSource(queue=[_run("long")]), FakeRuntime(block=block)
    agent = _agent(source, runtime, max_polls=None)
    thread = threading.Thread(target=agent.run)
    thread.start()
    try:
        for _ in range(500):
            if runtime.launched:
                break
            threading.Event().wait(0.01)
        source.cancel.add("long")
        for _ in range(500):
            if source.reports:
                break
            threading.Event().wait(0.01)
    finally:
        agent.stop()
        thread.join(10)
    assert [r.outcome for r in source.reports] == ["cancelled"] and runtime.calls["stop"] >= 1


def test_a_poll_that_fails_backs_off_and_the_loop_goes_on() -> None:
    from dagent.errors import SourceError

    source = FakeSource(queue=[_run("a")], fail={"poll": [SourceError("Prefect API: 503")]})
    agent = _agent(source, FakeRuntime(), max_polls=2)
    agent.run()
    assert [r.run_id for r in source.reports] == ["a"] and _count(agent.metrics.poll_errors) == 1


def test_recovered_claims_are_resumed_and_other_containers_are_left_alone() -> None:
    from dagent.contracts import Claim, ContainerInfo
    from dagent.spec import Origin

    others = ContainerInfo("c9", "dagent-other-z", "z", "busybox", "exited", 0, "", None, {"dagent.agent": "other"})
    source = FakeSource(recovered=[Claim(_run("r"), Origin("fake"), "r")])
    runtime = FakeRuntime(containers=[others])
    _agent(source, runtime, max_polls=1).run()
    assert [r.run_id for r in source.reports] == ["r"] and runtime.removed == []


def test_a_reported_runs_container_still_running_at_start_is_removed_once_it_exits() -> None:
    """A flow engine reports its run's end a moment before its process exits: at a restart that
    container still runs; it is cleaned up once it has exited, not left behind."""
    from dagent.contracts import ContainerInfo

    labels = {"dagent.agent": "unit", "dagent.run-id": "done", "dagent.keep": "never"}
    running = ContainerInfo("c1", "dagent-done", "done", "busybox", "running", None, "", None, labels)
    runtime = FakeRuntime(containers=[running])
    agent = _agent(FakeSource(), runtime, max_polls=3)
    exited = ContainerInfo("c1", "dagent-done", "done", "busybox", "exited", 0, "", None, labels)
    original = runtime.managed

    def managed(agent_name: str | None = None, run_id: str | None = None) -> list[ContainerInfo]:
        found = original(agent_name, run_id)
        runtime.containers = [exited]  # it exits after the first look
        return found

    runtime.managed = managed  # type: ignore[method-assign]
    agent.run()
    assert runtime.removed == ["c1"]


def _until(condition: Any, seconds: float = 5) -> bool:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return True
        threading.Event().wait(0.01)
    return bool(condition())


def _running(agent: Agent) -> threading.Thread:
    thread = threading.Thread(target=agent.run)
    thread.start()
    return thread


def test_a_drain_takes_no_more_runs_and_returns_once_the_runs_in_flight_are_reported() -> None:
    block = threading.Event()
    source, runtime = FakeSource(queue=[_run("a"), _run("b")]), FakeRuntime(block=block)
    agent = _agent(source, runtime, max_polls=None, concurrency=2)
    thread = _running(agent)
    try:
        assert _until(lambda: len(runtime.launched) == 2)
        source.queue.append(_run("late"))
        agent.drain()
        threading.Event().wait(0.2)
        assert thread.is_alive() and not source.reports  # still waiting for a and b
        block.set()
        thread.join(5)
        assert not thread.is_alive()
    finally:
        agent.stop()
        thread.join(5)
    assert sorted(r.run_id for r in source.reports) == ["a", "b"]
    assert [r.id for r in source.queue] == ["late"]  # never claimed


def test_sigterm_during_a_drain_leaves_the_runs_for_the_next_start() -> None:
    block = threading.Event()
    source, runtime = FakeSource(queue=[_run("a")]), FakeRuntime(block=block)
    agent = _agent(source, runtime, max_polls=None)
    thread = _running(agent)
    assert _until(lambda: runtime.launched == ["a"])
    agent.drain()
    agent.stop()
    thread.join(5)
    block.set()
    assert not thread.is_alive() and not source.reports


def test_a_reload_applies_live_keys_and_keeps_the_rest_until_a_restart() -> None:
    source, runtime = FakeSource(), FakeRuntime()
    agent = _agent(source, runtime, max_polls=None, concurrency=1, labels=["a"])
    new = load_config(
        {"name": "renamed", "poll_interval": 0.01, "concurrency": 3, "labels": ["a", "gpu"],
         "docker": {"base_url": "tcp://10.0.0.1:2375", "env": {"X": "1"}}}, environ={},
    ).config  # fmt: skip
    agent.reloader = lambda: new
    thread = _running(agent)
    try:
        agent.reload()
        assert _until(lambda: agent.config.concurrency == 3)
    finally:
        agent.stop()
        thread.join(5)
    assert agent.config.labels == ["a", "gpu"] and agent.config.docker.env == {"X": "1"}
    assert agent.config.name == "unit" and agent.config.docker.base_url != "tcp://10.0.0.1:2375"
    assert source.config is agent.config and agent.host.config is agent.config and runtime.config is agent.config
    assert _count(agent.metrics.config_reloads, result="applied") == 1
    assert _count(agent.metrics.concurrency_limit) == 3


def test_an_invalid_reload_changes_nothing() -> None:
    from dagent.errors import ConfigError

    source, runtime = FakeSource(), FakeRuntime()
    agent = _agent(source, runtime, max_polls=None, concurrency=2)
    before = agent.config

    def broken() -> Any:
        raise ConfigError("agent.toml: concurrency: Input should be greater than 0")

    agent.reloader = broken
    thread = _running(agent)
    try:
        agent.reload()
        assert _until(lambda: _count(agent.metrics.config_reloads, result="invalid") == 1)
    finally:
        agent.stop()
        thread.join(5)
    assert agent.config is before and source.config is None


def test_keep_for_removes_kept_containers_in_the_loop_never_one_still_being_reported() -> None:
    from dagent.contracts import ContainerInfo

    def kept(run_id: str) -> ContainerInfo:
        labels = {"dagent.agent": "unit", "dagent.run-id": run_id, "dagent.keep": "always"}
        return ContainerInfo(f"c-{run_id}", f"dagent-{run_id}", run_id, "busybox", "exited", 1, "", None, labels)

    block = threading.Event()
    source, runtime = FakeSource(queue=[_run("busy")]), FakeRuntime(containers=[kept("old"), kept("busy")], block=block)
    agent = _agent(source, runtime, max_polls=None, docker={"keep_for": "1s"})
    thread = _running(agent)
    try:
        assert _until(lambda: "c-old" in runtime.removed)
        assert "c-busy" not in runtime.removed  # its run is in flight here
    finally:
        agent.stop()
        thread.join(5)
        block.set()
    assert _count(agent.metrics.containers_expired) == 1


def test_without_keep_for_kept_containers_stay() -> None:
    from dagent.contracts import ContainerInfo

    labels = {"dagent.agent": "unit", "dagent.run-id": "old", "dagent.keep": "always"}
    old = ContainerInfo("c-old", "dagent-old", "old", "busybox", "exited", 1, "", None, labels)
    runtime = FakeRuntime(containers=[old])
    _agent(FakeSource(), runtime, max_polls=3).run()
    assert runtime.calls["gc"] == 0 and runtime.removed == []


def test_a_signal_is_only_recorded_by_the_handler_and_acted_on_by_the_loop() -> None:
    """A handler runs on the loop thread and could find an Event's lock held by it: it only assigns."""
    block = threading.Event()
    source, runtime = FakeSource(queue=[_run("a")]), FakeRuntime(block=block)
    agent = _agent(source, runtime, max_polls=None)
    thread = _running(agent)
    try:
        assert _until(lambda: runtime.launched == ["a"])
        agent.on_signal("drain")
        assert _until(agent.draining.is_set, 2) and agent.signalled is None
        block.set()
        thread.join(5)
        assert not thread.is_alive() and [r.run_id for r in source.reports] == ["a"]
    finally:
        agent.stop()
        thread.join(5)


def test_the_start_line_says_what_each_step_before_it_took(caplog: pytest.LogCaptureFixture) -> None:
    """Where a slow start spent its time: the judgements (both add up), the image, the source, create+start."""
    caplog.set_level("INFO", logger="dagent.agent")
    _agent(FakeSource(queue=[_run("a")]), FakeRuntime()).run()
    line = next(r.getMessage() for r in caplog.records if "started container" in r.getMessage())
    assert re.fullmatch(
        r"run a: started container \S+ \(busybox\) \d+\.\d{3} s after its claim: judged \d+\.\d{3} s, "
        r"image \d+\.\d{3} s, source \d+\.\d{3} s, create\+start \d+\.\d{3} s",
        line,
    ), line
