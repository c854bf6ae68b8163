"""`dagent start` on the inbox against a real Docker daemon: routing, cancel, restarts, kill -9, health."""

from __future__ import annotations

import json
import random
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import infra
from tests.support.helpers import (
    AgentProcess,
    Dagent,
    agent_config,
    count_dir,
    counting_run,
    drop,
    results,
    wait_for,
)
from tests.support.infra import not_here

pytestmark = pytest.mark.integration


def test_twenty_runs_with_exit_codes_and_concurrency(dagent: Dagent, inbox: Path, image: str) -> None:
    """20 run files → 20 results with the right exit codes; never more than `concurrency` at once."""
    for i in range(20):
        drop(inbox, f"r{i:02d}", image=image, command=["sh", "-c", f"sleep 0.4; exit {i % 4}"])
    config = agent_config(dagent, inbox, concurrency=3, keep_containers="never")
    with AgentProcess(dagent, config) as agent:
        wait_for(lambda: len(results(inbox)) == 20, 180, "20 results")
        assert agent.signal() == 0
    done = results(inbox)
    for i in range(20):
        record = done[f"r{i:02d}"]
        assert record["exit_code"] == i % 4
        assert record["outcome"] == ("succeeded" if i % 4 == 0 else "failed")
    # The containers' own start and finish times never overlap more than 3 deep.
    events = sorted([(r["started_at"], 1) for r in done.values()] + [(r["finished_at"], -1) for r in done.values()])
    depth = peak = 0
    for _, step in events:
        depth += step
        peak = max(peak, depth)
    assert peak <= 3
    assert list((inbox / "new").iterdir()) == [] and dagent.containers() == []


def test_label_routing(dagent: Dagent, inbox: Path, image: str) -> None:
    """A run needing `gpu` is left in new/ by an agent without it and taken by one with it."""
    drop(inbox, "plain", image=image, command=["true"])
    drop(inbox, "gpu-run", image=image, command=["true"], labels=["gpu"])
    plain = agent_config(dagent, inbox, keep_containers="never")
    with AgentProcess(dagent, plain, "--max-polls", "5") as agent:
        assert agent.process.wait(timeout=60) == 0
    assert set(results(inbox)) == {"plain"}
    assert (inbox / "new" / "gpu-run.toml").exists()
    gpu = agent_config(dagent, inbox, labels=["gpu", "linux"], keep_containers="never")
    with AgentProcess(dagent, gpu, "--max-polls", "3") as agent:
        assert agent.process.wait(timeout=60) == 0
    assert results(inbox)["gpu-run"]["outcome"] == "succeeded"


def test_invalid_and_refused_files_go_to_failed(dagent: Dagent, inbox: Path, image: str) -> None:
    """An invalid run file and one refused by policy land in failed/ with the reason; the loop goes on."""
    (inbox / "new" / "broken.toml").write_text('image = "x"\nbogus = 1\n')
    drop(inbox, "privileged", image=image, privileged=True)
    drop(inbox, "fine", image=image, command=["true"])
    with AgentProcess(dagent, agent_config(dagent, inbox), "--max-polls", "3") as agent:
        assert agent.process.wait(timeout=60) == 0
    assert "bogus: unknown key" in (inbox / "failed" / "broken.toml.error").read_text()
    assert "refused by docker.allow_privileged" in (inbox / "failed" / "privileged.toml.error").read_text()
    assert results(inbox)["fine"]["outcome"] == "succeeded"
    assert (inbox / "failed" / "broken.toml").exists()  # never deleted


def test_cancel_file_stops_the_run(dagent: Dagent, inbox: Path, image: str) -> None:
    """cancel/<id> → SIGTERM (then SIGKILL), outcome cancelled, container gone."""
    drop(inbox, "long", image=image, command=["sleep", "120"])
    config = agent_config(dagent, inbox, stop_grace=1)
    with AgentProcess(dagent, config) as agent:
        wait_for(lambda: any(c.status == "running" for c in dagent.containers("long")), 60, "the container to run")
        (inbox / "cancel").mkdir(exist_ok=True)
        (inbox / "cancel" / "long").touch()
        wait_for(lambda: "long" in results(inbox), 30, "the cancelled result")
        agent.signal()
    record = results(inbox)["long"]
    assert record["outcome"] == "cancelled" and record["exit_code"] in (137, 143)
    assert dagent.containers("long") == []
    assert not (inbox / "cancel" / "long").exists()


def test_sigterm_leaves_containers_and_restart_adopts_them(
    dagent: Dagent, inbox: Path, image: str, tmp_path: Path
) -> None:
    """SIGTERM: quick clean exit, containers keep running; the next start adopts and reports each once."""
    counter = count_dir(tmp_path) / "starts"
    for run_id in ("a", "b"):
        drop(inbox, run_id, **counting_run(image, counter, 4))
    config = agent_config(dagent, inbox, keep_containers="never", allowed_host_paths=[str(counter.parent)])
    with AgentProcess(dagent, config) as first:
        wait_for(
            lambda: len([c for c in dagent.containers() if c.status == "running"]) == 2, 60, "two running containers"
        )
        # It stops without waiting for its runs: they are left running, to be adopted.
        assert first.signal(signal.SIGTERM) == 0
        assert "stopping; 2 run(s) left running" in first.log
    assert {c.labels["dagent.run-id"] for c in dagent.containers() if c.status == "running"} == {"a", "b"}
    assert results(inbox) == {}
    with AgentProcess(dagent, config) as second:
        wait_for(lambda: len(results(inbox)) == 2, 60, "both results after the restart")
        second.signal()
        assert "resuming after restart" in second.log
    assert all(r["outcome"] == "succeeded" for r in results(inbox).values())
    assert sorted(counter.read_text().split()) == ["a", "b"]  # each started once
    assert dagent.containers() == []


def test_kill_9_at_random_moments(dagent: Dagent, inbox: Path, image: str, tmp_path: Path) -> None:
    """kill -9 at random moments, five times, then a clean run: every run one result, none started twice."""
    rng = random.Random(8)
    counter = count_dir(tmp_path) / "starts"
    ids = [f"k{i:02d}" for i in range(12)]
    for run_id in ids:
        drop(inbox, run_id, **counting_run(image, counter, rng.uniform(0.2, 1.5)))
    config = agent_config(
        dagent, inbox, concurrency=3, keep_containers="never", allowed_host_paths=[str(counter.parent)]
    )
    for _ in range(5):
        with AgentProcess(dagent, config) as agent:
            time.sleep(rng.uniform(0.3, 2.5))
            agent.signal(signal.SIGKILL)
    with AgentProcess(dagent, config) as final:
        wait_for(lambda: len(results(inbox)) == len(ids), 120, "every result")
        wait_for(lambda: dagent.containers() == [], 30, "no container left")
        final.signal()
    done = results(inbox)
    assert set(done) == set(ids)
    starts = counter.read_text().split()
    for run_id in ids:
        assert starts.count(run_id) <= 1, f"{run_id} started {starts.count(run_id)} times"
        assert done[run_id]["outcome"] == ("succeeded" if run_id in starts else "crashed")
    assert list((inbox / "claimed" / dagent.name).glob("*")) == []
    assert list((inbox / "done").glob(".*")) == []  # no report's temporary file left by a kill


def test_two_agents_one_inbox(dagent: Dagent, inbox: Path, image: str, tmp_path: Path) -> None:
    """Two agents on one inbox: each of 30 runs is claimed, started and reported exactly once."""
    counter = count_dir(tmp_path) / "starts"
    ids = [f"t{i:02d}" for i in range(30)]
    for run_id in ids:
        drop(inbox, run_id, **counting_run(image, counter, 0.1))
    config = agent_config(
        dagent, inbox, concurrency=3, keep_containers="never", allowed_host_paths=[str(counter.parent)]
    )
    with (
        AgentProcess(dagent, config, name=f"{dagent.name}-a") as a,
        AgentProcess(dagent, config, name=f"{dagent.name}-b") as b,
    ):
        wait_for(lambda: len(results(inbox)) == 30, 180, "30 results")
        a.signal()
        b.signal()
    done = results(inbox)
    assert sorted(counter.read_text().split()) == ids
    assert {r["agent"] for r in done.values()} == {f"{dagent.name}-a", f"{dagent.name}-b"}
    assert all(r["outcome"] == "succeeded" for r in done.values())


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


@pytest.fixture
def private_engine() -> Iterator[infra.PrivateEngine]:
    """A dockerd of this test's own, so it can be stopped and started."""
    try:
        engine = infra.PrivateEngine()
        engine.start()
    except infra.Unavailable as e:
        not_here(e, "cannot run a second dockerd here")
    yield engine
    engine.close()


def test_health_follows_the_daemon(dagent: Dagent, inbox: Path, private_engine: infra.PrivateEngine) -> None:
    """/health is 200, turns 503 when the daemon stops and 200 again when it is back; the agent lives on."""
    port = infra.free_port()
    config = agent_config(dagent, inbox, base_url=private_engine.url)
    with AgentProcess(dagent, config, "--agent-address", f"127.0.0.1:{port}") as agent:
        health = f"http://127.0.0.1:{port}/health"
        wait_for(lambda: _get(health)[0] == 200, 30, "/health 200")
        assert json.loads(_get(health)[1])["docker"] == "ok"
        assert _get(f"http://127.0.0.1:{port}/api/health")[0] == 200
        private_engine.stop()
        wait_for(lambda: _get(health)[0] == 503, 30, "/health 503 with the daemon stopped")
        assert json.loads(_get(health)[1])["docker"] == "unreachable"
        private_engine.start()
        wait_for(lambda: _get(health)[0] == 200, 60, "/health 200 with the daemon back")
        assert agent.process.poll() is None
        agent.signal()


def test_metrics_match_results(dagent: Dagent, inbox: Path, image: str) -> None:
    """/metrics counts started and finished runs by outcome, as the results say."""
    for run_id, code in (("m1", 0), ("m2", 0), ("m3", 5)):
        drop(inbox, run_id, image=image, command=["sh", "-c", f"exit {code}"])
    port = infra.free_port()
    config = agent_config(dagent, inbox, keep_containers="never")
    with AgentProcess(dagent, config, "--agent-address", f"127.0.0.1:{port}") as agent:
        wait_for(lambda: len(results(inbox)) == 3, 60, "3 results")
        # A result is written before its run leaves the in-flight gauge (the container goes in between).
        wait_for(
            lambda: "dagent_runs_in_flight 0.0" in _get(f"http://127.0.0.1:{port}/metrics")[1], 30, "no run in flight"
        )
        status, text = _get(f"http://127.0.0.1:{port}/metrics")
        agent.signal()
    assert status == 200
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples["dagent_runs_started_total"] == 3
    assert samples['dagent_runs_finished_total{outcome="succeeded"}'] == 2
    assert samples['dagent_runs_finished_total{outcome="failed"}'] == 1
    assert samples["dagent_runs_in_flight"] == 0
    assert samples["dagent_poll_duration_seconds_count"] >= 1


def test_json_logs_and_flow_output(dagent: Dagent, inbox: Path, image: str) -> None:
    """log_format = json gives one JSON object per line; show_flow_logs prefixes output with the run id."""
    drop(inbox, "talky", image=image, command=["echo", "hello from the flow"])
    config = agent_config(dagent, inbox, keep_containers="never")
    with AgentProcess(dagent, config, "--log-format", "json", "--show-flow-logs", "--max-polls", "2") as agent:
        assert agent.process.wait(timeout=60) == 0
        lines = [json.loads(line) for line in agent.log.splitlines()]
    flow = [line for line in lines if line["logger"] == "dagent.flow"]
    assert flow and flow[0]["message"] == "[talky] hello from the flow" and flow[0]["run_id"] == "talky"
