"""dagent as a worker of a Prefect 3 docker work pool: a real server, real flows in a real image."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from dagent.config import load_config
from dagent.sources.prefect.client import PrefectClient
from dagent.sources.prefect.listing import ScheduledRuns
from tests.support import infra, prefect_infra
from tests.support.helpers import AgentProcess, Dagent, wait_for
from tests.support.prefect_api import FINAL, FaultyHTTPProxy, PrefectAPI

pytestmark = pytest.mark.integration


def prefect_config(
    dagent: Dagent, api_url: str, pool: str, *, labels: list[str] | None = None, extra: str = "", **docker_keys: object
) -> Path:
    """An agent.toml for the Prefect source, polling fast, allowed host networking (flows reach 127.0.0.1)."""
    head = (
        f'source = "prefect"\npoll_interval = 0.5\nconcurrency = 4\nlabels = {json.dumps(labels or [])}\n{extra}\n'
        f'[api]\nurl = "{api_url}"\nwork_pool = "{pool}"\nheartbeat_interval = 5\n'
    )
    settings: dict[str, object] = {"allow_host_network": True, "keep_containers": "never", "stop_grace": 2}
    return dagent.config(head, **{**settings, **docker_keys})


def _deploy(api: PrefectAPI, pool: str, image: str, entrypoint: str, **job_variables: object) -> str:
    return api.deployment(pool, entrypoint, {"image": image, "network_mode": "host", **job_variables})


@pytest.fixture
def agent(
    dagent: Dagent, prefect_server: prefect_infra.PrefectServer, pool: str, flow_image: str
) -> Iterator[AgentProcess]:
    """One dagent agent serving the test's pool (which it creates)."""
    with AgentProcess(dagent, prefect_config(dagent, prefect_server.api_url, pool)) as process:
        api = PrefectAPI(prefect_server.api_url)
        wait_for(lambda: api.pool(pool) is not None, 30, "the agent to create its pool")
        yield process
        process.signal()


def test_flow_completes_and_the_agent_is_a_worker(
    agent: AgentProcess, api: PrefectAPI, pool: str, flow_image: str, dagent: Dagent
) -> None:
    """A flow that returns → COMPLETED; infrastructure_pid set; the agent is an ONLINE worker; its lines are in Prefect."""
    run_id = api.run(_deploy(api, pool, flow_image, "flows.py:hello"), parameters={"name": "prefect"})
    flow_run = api.wait_state(run_id, "COMPLETED", 120)
    assert ":" in flow_run["infrastructure_pid"]
    workers = api.call("POST", f"/work_pools/{pool}/workers/filter", {})
    assert any(w["name"] == dagent.name and w["status"] == "ONLINE" for w in workers)
    template = api.pool(pool)["base_job_template"]["variables"]["properties"]  # type: ignore[index]
    assert "required_labels" in template and "image" in template
    wait_for(lambda: any("started container" in m for m in api.logs(run_id)), 30, "the agent's log line in Prefect")
    wait_for(lambda: any("hello prefect" in m for m in api.logs(run_id)), 30, "the flow's own log line")
    wait_for(lambda: dagent.containers() == [], 30, "the container removed")


def test_flow_that_raises_is_failed(agent: AgentProcess, api: PrefectAPI, pool: str, flow_image: str) -> None:
    """A flow that raises → FAILED (the engine says so; the agent does not overwrite it)."""
    run_id = api.run(_deploy(api, pool, flow_image, "flows.py:boom"))
    api.wait_state(run_id, "FAILED", 120)
    time.sleep(2)
    assert api.state(run_id) == "FAILED"


def test_container_killed_from_outside_is_crashed(
    agent: AgentProcess, api: PrefectAPI, pool: str, flow_image: str, dagent: Dagent
) -> None:
    """docker kill of a running flow's container → CRASHED saying it was killed, with the exit code."""
    run_id = api.run(_deploy(api, pool, flow_image, "flows.py:sleepy"), parameters={"seconds": 120})
    api.wait_state(run_id, "RUNNING", 120)
    [container] = dagent.containers(run_id)
    container.kill()
    flow_run = api.wait_state(run_id, "CRASHED", 60)
    assert "was killed by SIGKILL (exit code 137)" in flow_run["state"]["message"]


def test_exit_0_without_a_final_state_is_crashed(
    agent: AgentProcess, api: PrefectAPI, pool: str, flow_image: str
) -> None:
    """A container that exits 0 without running the flow → CRASHED."""
    run_id = api.run(_deploy(api, pool, flow_image, "flows.py:hello", command="true"))
    flow_run = api.wait_state(run_id, "CRASHED", 60)
    assert "exited with code 0" in flow_run["state"]["message"]


def test_cancel_while_running(agent: AgentProcess, api: PrefectAPI, pool: str, flow_image: str, dagent: Dagent) -> None:
    """CANCELLING a running flow run → the container is stopped and gone, the run CANCELLED."""
    run_id = api.run(_deploy(api, pool, flow_image, "flows.py:sleepy"), parameters={"seconds": 120})
    api.wait_state(run_id, "RUNNING", 120)
    assert api.set_state(run_id, "CANCELLING") == "ACCEPT"
    api.wait_state(run_id, "CANCELLED", 60)
    wait_for(lambda: dagent.containers(run_id) == [], 30, "the container gone")


def test_run_needing_a_label_goes_to_the_agent_with_it(
    dagent: Dagent, prefect_server: prefect_infra.PrefectServer, api: PrefectAPI, pool: str, flow_image: str
) -> None:
    """required_labels = ["gpu"]: left SCHEDULED by an agent without it, taken by one with it."""
    plain = prefect_config(dagent, prefect_server.api_url, pool)
    with AgentProcess(dagent, plain, "--max-polls", "1") as first:
        assert first.process.wait(timeout=60) == 0, first.log  # creates the pool
    run_id = api.run(_deploy(api, pool, flow_image, "flows.py:hello", required_labels=["gpu"]))
    with AgentProcess(dagent, plain, "--max-polls", "6") as second:
        assert second.process.wait(timeout=60) == 0, second.log
    assert api.state(run_id) == "SCHEDULED"
    gpu = prefect_config(dagent, prefect_server.api_url, pool, labels=["gpu"])
    with AgentProcess(dagent, gpu, name=f"{dagent.name}-gpu") as third:
        api.wait_state(run_id, "COMPLETED", 120)
        third.signal()


def test_pool_made_by_prefect_cli_with_its_defaults(
    dagent: Dagent, prefect_server: prefect_infra.PrefectServer, api: PrefectAPI, pool: str, flow_image: str
) -> None:
    """A pool from `prefect work-pool create --type docker`: its template's defaults (here the image) apply."""
    venv = prefect_infra.prefect_venv()
    env = {
        "PREFECT_API_URL": prefect_server.api_url,
        "PATH": "/usr/bin:/bin",
        "PREFECT_HOME": str(dagent.workdir / "ph"),
    }
    template = json.loads(
        subprocess.run([str(venv / "bin" / "prefect"), "work-pool", "get-default-base-job-template", "--type", "docker"],
                       env=env, capture_output=True, text=True, check=True).stdout
    )  # fmt: skip
    template["variables"]["properties"]["image"]["default"] = flow_image
    template["variables"]["properties"]["network_mode"]["default"] = "host"
    (dagent.workdir / "template.json").write_text(json.dumps(template))
    subprocess.run([str(venv / "bin" / "prefect"), "work-pool", "create", pool, "--type", "docker",
                    "--base-job-template", str(dagent.workdir / "template.json")], env=env, check=True, capture_output=True)  # fmt: skip
    run_id = api.run(api.deployment(pool, "flows.py:hello", {}))
    with AgentProcess(dagent, prefect_config(dagent, prefect_server.api_url, pool)) as agent:
        api.wait_state(run_id, "COMPLETED", 120)
        agent.signal()


def test_bad_job_variables_are_crashed_with_the_reason(
    agent: AgentProcess, api: PrefectAPI, pool: str, flow_image: str
) -> None:
    """Job variables dagent refuses (create kwargs it cannot judge, a relative volume, privileged) → CRASHED saying why."""
    cases = {
        "container_create_kwargs.security_opt": {"container_create_kwargs": {"security_opt": ["seccomp=unconfined"]}},
        "volumes.0": {"volumes": ["relative:x"]},
        "docker.allow_privileged": {"privileged": True},
    }
    runs = {
        reason: api.run(_deploy(api, pool, flow_image, "flows.py:hello", **variables))
        for reason, variables in cases.items()
    }
    for reason, run_id in runs.items():
        flow_run = api.wait_state(run_id, "CRASHED", 60)
        assert reason in flow_run["state"]["message"]


def test_unreachable_api_is_one_line_and_exit_1(dagent: Dagent) -> None:
    """No server at api.url: `dagent start` exits 1 with one line naming it."""
    url = f"http://127.0.0.1:{infra.free_port()}/api"
    config = prefect_config(dagent, url, "p", extra="[retry]\nattempts = 2\n")
    result = dagent("start", "-c", str(config))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("dagent: error:")]
    assert len(errors) == 1 and url in errors[0] and "Traceback" not in result.stderr


def test_two_agents_fifty_runs_exactly_once(
    dagent: Dagent,
    prefect_server: prefect_infra.PrefectServer,
    api: PrefectAPI,
    pool: str,
    flow_image: str,
    tmp_path: Path,
) -> None:
    """Two agents on one pool, 50 runs: each run gets exactly one container (counted by the containers themselves)."""
    count = tmp_path / "count"
    count.mkdir()
    config = prefect_config(dagent, prefect_server.api_url, pool, allowed_host_paths=[str(count)])
    with AgentProcess(dagent, config, "--max-polls", "1") as first:
        first.process.wait(timeout=60)
    deployment = _deploy(
        api, pool, flow_image, "flows.py:hello",
        command='sh -c \'echo "$PREFECT__FLOW_RUN_ID" >> /count/starts\'', volumes=[f"{count}:/count"],
    )  # fmt: skip
    ids = [api.run(deployment) for _ in range(50)]
    with (
        AgentProcess(dagent, config, name=f"{dagent.name}-a") as a,
        AgentProcess(dagent, config, name=f"{dagent.name}-b") as b,
    ):
        for run_id in ids:
            api.wait_state(run_id, FINAL, 240)
        a.signal()
        b.signal()
    starts = (count / "starts").read_text().split()
    assert sorted(starts) == sorted(ids)
    assert "claimed flow run" in a.log and "claimed flow run" in b.log


def test_kill_9_mid_run_then_restart(
    dagent: Dagent, prefect_server: prefect_infra.PrefectServer, api: PrefectAPI, pool: str, flow_image: str
) -> None:
    """kill -9 of the agent while flows run; the restarted agent adopts them: none stuck RUNNING, none run twice."""
    config = prefect_config(dagent, prefect_server.api_url, pool)
    with AgentProcess(dagent, config, "--max-polls", "1") as first:
        first.process.wait(timeout=60)
    deployment = _deploy(api, pool, flow_image, "flows.py:sleepy")
    ids = [api.run(deployment, parameters={"seconds": 8}) for _ in range(3)]
    with AgentProcess(dagent, config) as victim:
        for run_id in ids:
            api.wait_state(run_id, "RUNNING", 120)
        victim.signal(signal.SIGKILL)
    with AgentProcess(dagent, config) as survivor:
        for run_id in ids:
            api.wait_state(run_id, "COMPLETED", 120)
        wait_for(lambda: dagent.containers() == [], 30, "containers removed")
        survivor.signal()
        assert survivor.log.count("resuming after restart") == 3
    for run_id in ids:
        runs = [s for s in api.call("GET", f"/flow_run_states/?flow_run_id={run_id}") if s["type"] == "RUNNING"]
        assert len(runs) == 1, f"{run_id} ran {len(runs)} times"


def test_api_faults_are_retried(
    dagent: Dagent, prefect_server: prefect_infra.PrefectServer, api: PrefectAPI, pool: str, flow_image: str
) -> None:
    """20% of the agent's requests get 503, 429, a reset or a slow answer: every run still ends right, once."""
    base = prefect_server.api_url.removesuffix("/api")
    proxy = FaultyHTTPProxy(base, fault_rate=0.2)
    try:
        config = prefect_config(
            dagent, proxy.api_url("/api"), pool,
            extra="[retry]\nattempts = 8\nbackoff_initial = 0.1\nbackoff_max = 1\n",
        )  # fmt: skip
        config.write_text(config.read_text().replace("[api]\n", f'[api]\ncontainer_url = "{prefect_server.api_url}"\n'))
        with AgentProcess(dagent, config) as agent:
            wait_for(lambda: api.pool(pool) is not None, 60, "the pool")
            good = _deploy(api, pool, flow_image, "flows.py:hello")
            bad = _deploy(api, pool, flow_image, "flows.py:boom")
            ids = {api.run(good): "COMPLETED", api.run(good): "COMPLETED", api.run(bad): "FAILED"}
            for run_id, final in ids.items():
                api.wait_state(run_id, final, 180)
            agent.signal()
        assert sum(proxy.faults.values()) > 0, "no fault was injected"
        for run_id in ids:
            runs = [s for s in api.call("GET", f"/flow_run_states/?flow_run_id={run_id}") if s["type"] == "RUNNING"]
            assert len(runs) == 1
    finally:
        proxy.stop()


def test_event_stream_wakes_the_agent_between_polls(
    dagent: Dagent, prefect_server: prefect_infra.PrefectServer, api: PrefectAPI, pool: str, flow_image: str
) -> None:
    """With polls 60 s apart, a new run is still claimed within seconds: the event stream wakes the loop.

    With a token too, as against Prefect Cloud: the stream speaks Prefect's subprotocol and auth
    message (this server needs no token and ignores it, but must not be confused by it).
    """
    config = prefect_config(dagent, prefect_server.api_url, pool)
    text = config.read_text().replace("poll_interval = 0.5", "poll_interval = 60")
    config.write_text(text.replace("[api]\n", '[api]\ntoken = "pnu_not-checked-here"\n', 1))
    with AgentProcess(dagent, config) as agent:
        wait_for(lambda: api.pool(pool) is not None, 30, "the pool")
        deployment = _deploy(api, pool, flow_image, "flows.py:hello")
        time.sleep(3)  # past the first poll and the stream's subscription
        # Polls are 60 s apart: a container well before the next one was started by the stream's news.
        _start_and_complete(dagent, api, deployment, within=40)
        agent.signal()


def _start_and_complete(dagent: Dagent, api: PrefectAPI, deployment: str, within: float) -> None:
    """A new run of the deployment has its container within `within` seconds, and COMPLETES."""
    run_id = api.run(deployment)
    wait_for(lambda: bool(dagent.containers(run_id)), within, "the run's container")
    api.wait_state(run_id, "COMPLETED", 120)


def test_an_agent_that_loses_the_event_stream_polls_and_loses_no_run(
    dagent: Dagent, prefect_server: prefect_infra.PrefectServer, api: PrefectAPI, pool: str, flow_image: str
) -> None:
    """While events flow an idle agent does not list at every poll; with the stream down it polls,
    and a run scheduled meanwhile is found by polling; back up, the stream wakes it again."""
    proxy = FaultyHTTPProxy(prefect_server.api_url.removesuffix("/api"))
    config = prefect_config(dagent, proxy.api_url("/api"), pool)
    config.write_text(config.read_text().replace("poll_interval = 0.5", "poll_interval = 2"))
    lists = lambda: sum(1 for _, path in proxy.requests if path.endswith("/get_scheduled_flow_runs"))  # noqa: E731
    try:
        with AgentProcess(dagent, config) as agent:
            wait_for(lambda: api.pool(pool) is not None, 30, "the pool")
            deployment = _deploy(api, pool, flow_image, "flows.py:hello")

            def quiet() -> bool:
                # On a loaded host the stream may take seconds to connect; until then the agent polls.
                seen = lists()
                time.sleep(4)
                return lists() == seen

            wait_for(quiet, 60, "an idle agent that stops listing once the event stream is up")
            # Six polls; a list at every one would be six. Two may come on their own: the one that keeps
            # Prefect's queues READY (one a 50-s slot) and the one a (re)connected stream asks for.
            before = lists()
            time.sleep(12)
            listed = lists() - before
            assert listed <= 2, f"an idle agent with the event stream up listed {listed} times in 6 polls"
            proxy.refuse_websockets = True
            proxy.cut_websockets()
            time.sleep(1)
            run_id = api.run(deployment)  # nobody hears of it
            wait_for(lambda: bool(dagent.containers(run_id)), 30, "the run found by polling")
            # One list may find the run; polling means the lists go on while the stream stays down.
            found = lists()
            wait_for(lambda: lists() - found >= 2, 10, "a list at every poll while the stream is down")
            api.wait_state(run_id, "COMPLETED", 120)
            proxy.refuse_websockets = False
            wait_for(lambda: sum(1 for _, p in proxy.requests if p.endswith("/events/out")) >= 2, 90, "a reconnect")
            # Back on the stream: an idle agent stops listing at every poll again, and a new run starts.
            wait_for(quiet, 60, "an idle agent that stops listing once the event stream is back")
            _start_and_complete(dagent, api, deployment, within=30)
            agent.signal()
    finally:
        proxy.stop()


def test_prefect_worker_command_line(
    dagent: Dagent, prefect_server: prefect_infra.PrefectServer, api: PrefectAPI, pool: str, flow_image: str
) -> None:
    """`dagent worker start --pool P --type docker --limit 1 --name N --run-once --base-job-template F`, as
    `prefect worker start`: creates the pool from the template, serves it, takes the runs there are, exits 0."""
    import json

    template = dagent.workdir / "template.json"
    template.write_text(json.dumps({
        "job_configuration": {"image": "{{ image }}", "command": "{{ command }}", "network_mode": "host",
                              "labels": {"pinned": "yes"}},
        "variables": {"type": "object", "properties": {"image": {"type": "string", "default": flow_image},
                                                        "command": {"type": "string", "default": "true"}}},
    }))  # fmt: skip
    config = dagent.config(allow_host_network=True, keep_containers="always")
    env = {"PREFECT_API_URL": prefect_server.api_url, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    first = dagent("worker", "start", "-p", pool, "-t", "docker", "-n", dagent.name, "-l", "1", "--run-once",
                   "--base-job-template", str(template), "-c", str(config), env=env)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert api.pool(pool)["base_job_template"]["job_configuration"]["labels"] == {"pinned": "yes"}  # type: ignore[index]
    run_id = api.run(api.deployment(pool, "flows.py:hello", {}))
    second = dagent("worker", "start", "--pool", pool, "--name", dagent.name, "--run-once", "-c", str(config), env=env)
    assert second.returncode == 0, second.stderr
    [container] = dagent.containers(run_id)
    assert container.labels["pinned"] == "yes" and container.attrs["HostConfig"]["NetworkMode"] == "host"
    assert container.attrs["Config"]["Cmd"] == ["true"]
    wrong = dagent("worker", "start", "--pool", pool, "--type", "kubernetes", env=env)
    assert wrong.returncode == 2 and "docker pools only" in wrong.stderr


def test_registry_credentials_block_and_a_prefect_variable_are_resolved(
    dagent: Dagent, prefect_server: prefect_infra.PrefectServer, api: PrefectAPI, pool: str, image: str,
    auth_registry: infra.Registry,
) -> None:  # fmt: skip
    """`registry_credentials: {{ prefect.blocks.docker-registry-credentials.NAME }}` logs in for the pull;
    `{{ prefect.variables.NAME }}` fills a job configuration value; the password shows nowhere."""
    import subprocess

    subprocess.run(
        [str(prefect_infra.prefect_venv() / "bin" / "prefect"), "block", "register", "-m", "prefect_docker"],
        env={**os.environ, "PREFECT_API_URL": prefect_server.api_url}, capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    block_type = api.call("GET", "/block_types/slug/docker-registry-credentials")
    schema = api.call(
        "POST", "/block_schemas/filter", {"block_schemas": {"block_type_id": {"any_": [block_type["id"]]}}}
    )[0]
    block = api.call("POST", "/block_documents/", {
        "name": "ci", "block_type_id": block_type["id"], "block_schema_id": schema["id"],
        "data": {"username": "ci", "password": "pa55-word", "registry_url": auth_registry.address, "reauth": True},
    })  # fmt: skip
    api.call("POST", "/variables/", {"name": "flow_command", "value": "true"})
    remote = auth_registry.push(image, f"private/bb-{uuid.uuid4().hex[:6]}:1")
    dagent.client.images.remove(remote, force=True)
    # The block chosen for the pool's registry_credentials (the `$ref` form Prefect's UI writes), and a
    # Prefect variable in a deployment's job variables.
    from dagent.sources.prefect import base_job_template

    template = base_job_template()
    template["variables"]["properties"]["registry_credentials"]["default"] = {
        "$ref": {"block_document_id": block["id"]}
    }
    api.call("POST", "/work_pools/", {"name": pool, "type": "docker", "base_job_template": template})
    config = prefect_config(dagent, prefect_server.api_url, pool, keep_containers="always")
    with AgentProcess(dagent, config) as process:
        deployment = api.deployment(
            pool, "flows.py:hello",
            {"image": remote, "network_mode": "host", "command": "{{ prefect.variables.flow_command }}"},
        )  # fmt: skip
        run_id = api.run(deployment)
        wait_for(lambda: len(dagent.containers(run_id)) == 1, 60, "the run's container (pulled with the block's login)")
        process.signal()
        log = process.log
    [container] = dagent.containers(run_id)
    assert container.attrs["Config"]["Cmd"] == ["true"] and container.attrs["Config"]["Image"] == remote
    assert "pa55-word" not in log and "pa55-word" not in json.dumps(container.attrs)


def test_an_owners_fetch_by_id_takes_only_what_prefects_list_shows_open(api: PrefectAPI) -> None:
    """Against Prefect's server: the fetch of an owner's announced runs by id, and the list that gates it (a paused
    queue, then a paused pool, list nothing, and so nothing is fetched)."""
    pool = f"pool-{uuid.uuid4().hex[:8]}"
    api.call("POST", "/work_pools/", {"name": pool, "type": "docker"})
    deployment = api.deployment(pool, "flows.py:hello", {"image": "unused"})
    ids = [api.run(deployment) for _ in range(3)]
    config = load_config({"name": "a", "source": "prefect", "api": {"url": api.url, "work_pool": pool}}, environ={})
    calls: list[str] = []
    client = PrefectClient(config.config)
    call = client.call
    client.call = lambda method, path, *args, **kw: calls.append(path) or call(method, path, *args, **kw)  # type: ignore[method-assign]
    runs = ScheduledRuns(client, "a", pool, [], 0.0, 1.0, lambda: True, lambda: None)
    for peer in ("p1", "p2", "p3"):
        runs.heard_taken(f"x-{peer}", by_peer=True, peer_name=peer)
    queue = api.call("POST", f"/work_pools/{pool}/queues/filter", {})[0]
    listed = [{"id": "not-a-run", "work_queue_id": queue["id"]}]
    due_by = datetime.now(timezone.utc) + timedelta(seconds=5)
    runs._own_heard = dict.fromkeys(ids, 0.0)
    fetched = runs._fetch_own(4, listed, due_by)
    assert [r["id"] for r in fetched] == ids  # all three, oldest first
    api.set_state(ids[0], "PENDING")
    runs._own_heard = dict.fromkeys(ids, 0.0)
    assert [r["id"] for r in runs._fetch_own(4, listed, due_by)] == ids[1:]  # a taken run is not fetched
    for paused in (f"/work_queues/{queue['id']}", f"/work_pools/{pool}"):
        api.call("PATCH", paused, {"is_paused": True})
        runs._own_heard = dict.fromkeys(ids, 0.0)
        calls.clear()
        runs.mark_due()
        runs.begin()
        assert runs.next(4) is None and "/flow_runs/filter" not in calls, paused
        api.call("PATCH", paused, {"is_paused": False})
    runs.close()


def test_a_crashed_runs_own_last_output_is_on_the_flow_run(
    agent: AgentProcess, api: PrefectAPI, pool: str, flow_image: str
) -> None:
    """A container that prints an error and exits 3: the CRASHED message says how it ended and its last
    line, and its last lines are in the run's logs, so Prefect's UI shows the error without `docker logs`."""
    # Out and err are two streams, ordered in the log by their time: the error comes last, a moment later.
    command = "sh -c 'echo starting; sleep 0.5; echo \"ERROR: could not open /data/input.csv\" >&2; exit 3'"
    run_id = api.run(_deploy(api, pool, flow_image, "flows.py:hello", command=command))
    message = api.wait_state(run_id, "CRASHED", 90)["state"]["message"]
    assert "the container exited with code 3" in message and "ERROR: could not open /data/input.csv" in message
    wait_for(lambda: "ERROR: could not open /data/input.csv" in api.logs(run_id), 30, "the output in the run's logs")
    assert "starting" in api.logs(run_id)


def _events(api: PrefectAPI, flow_run_id: str) -> list[dict[str, Any]]:
    found = api.call("POST", "/events/filter", {"filter": {"any_resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}},
                                                "limit": 50})  # fmt: skip
    return list(found["events"])


def test_prefect_sees_the_workers_events(agent: AgentProcess, api: PrefectAPI, pool: str, flow_image: str) -> None:
    """The events Prefect's Docker worker emits for a run, with the same names, resources and chains,
    and the worker's labels on the flow run."""
    run_id = api.run(_deploy(api, pool, flow_image, "flows.py:hello"))
    api.wait_state(run_id, "COMPLETED", 120)
    wanted = {"prefect.worker.submitted-flow-run", "prefect.docker.container.created",
              "prefect.docker.container.running", "prefect.docker.container.exited",
              "prefect.worker.executed-flow-run"}  # fmt: skip
    wait_for(lambda: wanted <= {e["event"] for e in _events(api, run_id)}, 60, "the worker's events, persisted")
    events = {e["event"]: e for e in _events(api, run_id) if e["event"] in wanted}
    worker = events["prefect.worker.submitted-flow-run"]["resource"]
    assert (
        worker["prefect.resource.id"].startswith("prefect.worker.docker.") and worker["prefect.worker-type"] == "docker"
    )
    roles = [r["prefect.resource.role"] for r in events["prefect.worker.submitted-flow-run"]["related"]]
    assert roles[:3] == ["deployment", "flow", "flow-run"] and roles[-1] == "work-pool"
    assert events["prefect.docker.container.exited"]["follows"] == events["prefect.docker.container.running"]["id"]
    executed = events["prefect.worker.executed-flow-run"]
    assert executed["follows"] == events["prefect.worker.submitted-flow-run"]["id"]
    [run] = [r for r in executed["related"] if r["prefect.resource.role"] == "flow-run"]
    assert run["prefect.infrastructure.status-code"] == "0"
    started = api.call("POST", "/events/filter", {"filter": {"event": {"name": ["prefect.worker.started"]},
                                                             "resource": {"id": [worker["prefect.resource.id"]]}},
                                                  "limit": 5})  # fmt: skip
    assert started["events"], "no prefect.worker.started for the agent"
    labels = api.flow_run(run_id)["labels"]
    assert labels["prefect.worker.type"] == "docker" and labels["prefect.work-pool.name"] == pool
    assert labels["prefect.worker.name"] == worker["prefect.resource.name"]
    # The states on the way, as under the worker: Scheduled, Pending, Submitting, then the engine's.
    history = api.call("GET", f"/flow_run_states/?flow_run_id={run_id}")
    names = [h["name"] for h in sorted(history, key=lambda h: h["timestamp"])]
    assert names == ["Scheduled", "Pending", "Submitting", "Running", "Completed"], names
