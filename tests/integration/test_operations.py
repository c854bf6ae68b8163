"""Operating a real agent: drain (SIGQUIT) and reload (SIGHUP) with runs in flight, retention
(docker.keep_for), and the metrics an operator scrapes; all against the real daemon."""

from __future__ import annotations

import signal
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.support import infra
from tests.support.helpers import AgentProcess, Dagent, agent_config, drop, results, wait_for

pytestmark = pytest.mark.integration


def _running(dagent: Dagent, n: int) -> bool:
    return sum(1 for c in dagent.containers() if c.status == "running") >= n


def test_sigquit_drains_runs_in_flight_then_exits_0(dagent: Dagent, inbox: Path, image: str) -> None:
    """The runs in flight finish and are reported; the run that arrives meanwhile is left for another agent."""
    for i in range(2):
        drop(inbox, f"long{i}", image=image, command=["sh", "-c", "sleep 4; exit 0"])
    config = agent_config(dagent, inbox, concurrency=2, keep_containers="never")
    with AgentProcess(dagent, config) as agent:
        wait_for(lambda: _running(dagent, 2), 60, "two runs running")
        agent.process.send_signal(signal.SIGQUIT)
        time.sleep(0.5)
        drop(inbox, "late", image=image, command=["true"])
        assert agent.process.wait(timeout=60) == 0, agent.log
        assert "drained" in agent.log
    done = results(inbox)
    assert sorted(done) == ["long0", "long1"] and all(r["outcome"] == "succeeded" for r in done.values())
    assert (inbox / "new" / "late.toml").exists() and dagent.containers() == []


def test_sighup_reloads_without_dropping_runs_in_flight(dagent: Dagent, inbox: Path, image: str) -> None:
    """concurrency 1 → 3 and a new label by SIGHUP; a broken file next is one logged line and changes nothing."""
    drop(inbox, "first", image=image, command=["sh", "-c", "sleep 5"])
    config = agent_config(dagent, inbox, concurrency=1, keep_containers="never")
    with AgentProcess(dagent, config) as agent:
        wait_for(lambda: _running(dagent, 1), 60, "the first run running")
        for i in range(3):
            drop(inbox, f"gpu{i}", image=image, command=["sh", "-c", "sleep 3"], labels=["gpu"])
        config.write_text(config.read_text().replace("concurrency = 1", "concurrency = 3").replace(
            "labels = []", 'labels = ["gpu"]'))  # fmt: skip
        agent.process.send_signal(signal.SIGHUP)
        # The three gpu runs start beside the first, which goes on.
        wait_for(lambda: _running(dagent, 3), 60, "three runs at once after the reload")
        assert "reload: applied labels, concurrency" in agent.log
        config.write_text(config.read_text().replace("concurrency = 3", "concurrency = 0"))
        agent.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload:" in agent.log.split("reload: applied")[-1], 30, "the second reload's line")
        wait_for(lambda: len(results(inbox)) == 4, 120, "four results")
        assert agent.process.poll() is None
        assert agent.signal() == 0
    bad = [line for line in agent.log.splitlines() if "reload:" in line and "concurrency" in line and "ERROR" in line]
    assert len(bad) == 1 and "the configuration in use stays" in bad[0] and "Traceback" not in agent.log
    assert all(r["outcome"] == "succeeded" for r in results(inbox).values())


def test_keep_for_removes_kept_containers_without_cron(dagent: Dagent, inbox: Path, image: str) -> None:
    drop(inbox, "kept", image=image, command=["sh", "-c", "exit 3"])
    config = agent_config(dagent, inbox, keep_containers="always", keep_for="3s")
    with AgentProcess(dagent, config) as agent:
        wait_for(lambda: "kept" in results(inbox), 60, "the run's result")
        assert len(dagent.containers("kept")) == 1  # kept, for now
        wait_for(lambda: dagent.containers("kept") == [], 30, "the kept container removed after keep_for")
        assert "docker.keep_for" in agent.log
        agent.signal()


def test_metrics_an_operator_scrapes(dagent: Dagent, inbox: Path, image: str) -> None:
    port = infra.free_port()
    drop(inbox, "m", image=image, command=["true"])
    config = agent_config(dagent, inbox, concurrency=2, keep_containers="never")
    with AgentProcess(dagent, config, "--agent-address", f"127.0.0.1:{port}") as agent:
        wait_for(lambda: "m" in results(inbox), 60, "the run's result")
        agent.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload: applied" in agent.log, 30, "the reload")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        agent.signal()
    for line in (
        'dagent_build_info{python="',
        "dagent_concurrency_limit 2.0",
        'dagent_run_duration_seconds_count{outcome="succeeded"} 1.0',
        'dagent_config_reloads_total{result="applied"} 1.0',
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "dagent_pull_duration_seconds_count ",
    ):
        assert line in text, line


def test_a_docker_login_after_start_is_seen_without_a_restart(
    dagent: Dagent, inbox: Path, image: str, auth_registry: infra.Registry
) -> None:
    """Credentials are read for each pull: a stale login fails, a new `docker login` is seen by the next pull."""
    import base64
    import json

    def login(password: str) -> None:
        token = base64.b64encode(f"ci:{password}".encode()).decode()
        (docker_config / "config.json").write_text(json.dumps({"auths": {auth_registry.address: {"auth": token}}}))

    remote = auth_registry.push(image, f"private/login-{uuid.uuid4().hex[:6]}:1")
    dagent.client.images.remove(remote, force=True)
    docker_config = dagent.workdir / "docker-config"
    docker_config.mkdir()
    login("an-expired-password")  # as docker-py keeps what it read at start, a rotation would go unseen
    config = agent_config(dagent, inbox, keep_containers="never")
    text = config.read_text().replace("[inbox]", "[retry]\nattempts = 1\n[inbox]")
    config.write_text(text)
    with AgentProcess(dagent, config, env={"DOCKER_CONFIG": str(docker_config)}) as agent:
        drop(inbox, "before", image=remote, command=["true"])
        wait_for(lambda: (inbox / "failed" / "before.toml").exists() or "before" in results(inbox), 60, "the first try")
        assert "before" not in results(inbox) or results(inbox)["before"]["outcome"] != "succeeded"
        login("pa55-word")
        drop(inbox, "after", image=remote, command=["true"])
        wait_for(lambda: "after" in results(inbox), 60, "the second run's result")
        assert results(inbox)["after"]["outcome"] == "succeeded", agent.log[-2000:]
        agent.signal()
    assert "pa55-word" not in agent.log
