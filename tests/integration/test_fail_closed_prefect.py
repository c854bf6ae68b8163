"""Attacks on the Prefect source and the health server: bad input from the control plane fails the run
it belongs to, closed and with the reason, never the poll, the agent or another run; the agent's own
environment and credentials never reach a run or an error line; idle clients cannot pin the agent."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dagent.sources.prefect import base_job_template
from dagent.sources.prefect.claims import claim_note
from tests.support import infra, prefect_infra
from tests.support.helpers import AgentProcess, Dagent, wait_for
from tests.support.prefect_api import FINAL, PrefectAPI

pytestmark = pytest.mark.integration

SECRET = "s3cret"
BAD_REGISTRY = {"username": "u", "password": "p", "registry_url": "not a host!!"}
SECRET_PROBE = "sh -c 'test \"$X\" != s3cret || exit 7'"  # exits 7 only when X holds the agent's secret


# --- helpers, as in test_prefect.py (test modules never import each other; the fixtures are in conftest) --


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


# --- helpers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _running(dagent: Dagent, config: Path, env: dict[str, str] | None = None) -> Iterator[AgentProcess]:
    """`dagent start`, stopped with SIGTERM at the end if it is still up (killed by AgentProcess otherwise)."""
    with AgentProcess(dagent, config, env=env) as process:
        try:
            yield process
        finally:
            if process.process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.signal()


def _tail(agent: AgentProcess, chars: int = 2500) -> str:
    return f"\n--- agent log (tail) ---\n{agent.log[-chars:]}"


def _final(api: PrefectAPI, run_id: str, agent: AgentProcess, timeout: float) -> dict[str, Any]:
    """The run once it is in a final state; fails at once (with the agent's log) if the agent exits first."""
    deadline = time.monotonic() + timeout
    while True:
        flow_run = api.flow_run(run_id)
        kind = (flow_run.get("state") or {}).get("type")
        if kind in FINAL:
            return flow_run
        code = agent.process.poll()
        if code is not None:
            pytest.fail(f"the agent exited ({code}) while flow run {run_id} is {kind}{_tail(agent)}")
        if time.monotonic() > deadline:
            pytest.fail(f"flow run {run_id} is {kind}, not final, after {timeout:.0f}s{_tail(agent)}")
        time.sleep(0.5)


def _settle(api: PrefectAPI, ids: list[str], agent: AgentProcess, timeout: float) -> dict[str, dict[str, Any]]:
    """Each run as it is once all are final, the agent has exited, or the timeout: judged together, so
    one stuck run does not hide what became of the others."""
    deadline = time.monotonic() + timeout
    while True:
        runs = {run_id: api.flow_run(run_id) for run_id in ids}
        done = all((r.get("state") or {}).get("type") in FINAL for r in runs.values())
        if done or agent.process.poll() is not None or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def _assert_ended(flow_run: dict[str, Any], kind: str, *said: str, agent: AgentProcess) -> None:
    state = flow_run.get("state") or {}
    message = str(state.get("message") or "")
    assert state.get("type") == kind, f"flow run {flow_run['id']} is {state.get('type')}: {message!r}{_tail(agent)}"
    for words in said:
        assert words in message, f"{words!r} not in the state message {message!r}"


def _dagent_pool(api: PrefectAPI, pool: str) -> None:
    """The pool as dagent creates it, made before any agent starts."""
    api.call("POST", "/work_pools/", {"name": pool, "type": "docker", "base_job_template": base_job_template()})


def _prefect_docker_template(dagent: Dagent, api_url: str) -> dict[str, Any]:
    """Prefect's own default base job template for a docker pool (from its CLI, with prefect-docker)."""
    venv = prefect_infra.prefect_venv()
    env = {"PREFECT_API_URL": api_url, "PATH": "/usr/bin:/bin", "PREFECT_HOME": str(dagent.workdir / "ph")}
    result = subprocess.run(
        [str(venv / "bin" / "prefect"), "work-pool", "get-default-base-job-template", "--type", "docker"],
        env=env, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    template: dict[str, Any] = json.loads(result.stdout)
    return template


# --- 1, 2: registry_credentials dagent cannot use ------------------------------------------------


def test_bad_registry_credentials_crash_that_run_only(
    dagent: Dagent, prefect_server: prefect_infra.PrefectServer, api: PrefectAPI, pool: str, flow_image: str
) -> None:
    """registry_credentials with a registry_url that is no host → that run CRASHED saying so; good runs
    scheduled just before and just after it (listed by the same poll) COMPLETED; the agent runs on."""
    _dagent_pool(api, pool)
    good = _deploy(api, pool, flow_image, "flows.py:hello")
    bad_deployment = _deploy(api, pool, flow_image, "flows.py:hello", registry_credentials=BAD_REGISTRY)
    before, bad, after = api.run(good), api.run(bad_deployment), api.run(good)  # one poll lists all three
    with _running(dagent, prefect_config(dagent, prefect_server.api_url, pool)) as agent:
        runs = _settle(api, [before, bad, after], agent, 90)
        kinds = {run_id: (r.get("state") or {}).get("type") for run_id, r in runs.items()}
        assert kinds == {before: "COMPLETED", bad: "CRASHED", after: "COMPLETED"}, (
            f"good before, bad, good after: {list(kinds.values())}{_tail(agent)}"
        )
        _assert_ended(runs[bad], "CRASHED", "registry_credentials", agent=agent)
        assert agent.process.poll() is None, f"the agent exited{_tail(agent)}"


def test_bad_registry_credentials_left_pending_across_a_restart(
    dagent: Dagent, prefect_server: prefect_infra.PrefectServer, api: PrefectAPI, pool: str, flow_image: str
) -> None:
    """The same bad run, claimed by this agent (PENDING with its claim note) before a restart: the agent
    starts and stays up, crashes that run saying why, and still completes a good run."""
    _dagent_pool(api, pool)
    bad = api.run(_deploy(api, pool, flow_image, "flows.py:hello", registry_credentials=BAD_REGISTRY))
    answer = api.call(
        "POST", f"/flow_runs/{bad}/set_state",
        {"state": {"type": "PENDING", "name": "Pending", "message": claim_note(dagent.name)}, "force": True},
    )  # fmt: skip
    assert answer["status"] == "ACCEPT", answer
    good = api.run(_deploy(api, pool, flow_image, "flows.py:hello"))
    with _running(dagent, prefect_config(dagent, prefect_server.api_url, pool)) as agent:
        time.sleep(15)
        assert agent.process.poll() is None, f"the agent exited ({agent.process.returncode}){_tail(agent)}"
        _assert_ended(_final(api, bad, agent, 30), "CRASHED", "registry_credentials", agent=agent)
        _assert_ended(_final(api, good, agent, 150), "COMPLETED", agent=agent)


# --- 3: block references the API will not answer as a block --------------------------------------


def test_block_reference_the_api_refuses_crashes_the_run_and_polls_go_on(
    dagent: Dagent, prefect_server: prefect_infra.PrefectServer, api: PrefectAPI, pool: str, flow_image: str
) -> None:
    """registry_credentials = {"$ref": {"block_document_id": "filter"}} (GET /block_documents/filter is no
    block) → CRASHED naming the block; a good run scheduled after it is still taken and COMPLETED."""
    _dagent_pool(api, pool)
    ref = {"$ref": {"block_document_id": "filter"}}
    bad = api.run(_deploy(api, pool, flow_image, "flows.py:hello", registry_credentials=ref))
    good = api.run(_deploy(api, pool, flow_image, "flows.py:hello"))
    with _running(dagent, prefect_config(dagent, prefect_server.api_url, pool)) as agent:
        runs = _settle(api, [bad, good], agent, 90)
        kinds = [(r.get("state") or {}).get("type") for r in runs.values()]
        assert kinds == ["CRASHED", "COMPLETED"], f"bad, good after it: {kinds}{_tail(agent)}"
        _assert_ended(runs[bad], "CRASHED", "block", agent=agent)
        assert agent.process.poll() is None, f"the agent exited{_tail(agent)}"


def test_block_reference_with_a_path_is_not_a_uuid(
    dagent: Dagent, prefect_server: prefect_infra.PrefectServer, api: PrefectAPI, pool: str, flow_image: str
) -> None:
    """block_document_id = "../../admin/version" is refused as not a UUID (never sent as a path)."""
    _dagent_pool(api, pool)
    ref = {"$ref": {"block_document_id": "../../admin/version"}}
    bad = api.run(_deploy(api, pool, flow_image, "flows.py:hello", registry_credentials=ref))
    with _running(dagent, prefect_config(dagent, prefect_server.api_url, pool)) as agent:
        _assert_ended(_final(api, bad, agent, 60), "CRASHED", "not a UUID", agent=agent)
        assert agent.process.poll() is None, f"the agent exited{_tail(agent)}"


# --- 5: {{ $NAME }} is never filled from the agent's environment ---------------------------------


def _secret_probe(dagent: Dagent, api: PrefectAPI, pool: str, image: str, config: Path, pool_exists: bool) -> None:
    with _running(dagent, config, env={"TEST_AGENT_SECRET": SECRET}) as agent:
        if not pool_exists:
            wait_for(lambda: api.pool(pool) is not None, 30, "the agent to create its pool")
        deployment = _deploy(api, pool, image, "flows.py:hello", command=SECRET_PROBE,
                             env={"X": "{{ $TEST_AGENT_SECRET }}"})  # fmt: skip
        flow_run = _final(api, api.run(deployment), agent, 60)
        message = str((flow_run.get("state") or {}).get("message") or "")
        assert "code 7" not in message, f"the container saw the agent's TEST_AGENT_SECRET: {message!r}"
        _assert_ended(flow_run, "CRASHED", "exited with code 0", agent=agent)


def test_env_placeholder_is_not_filled_from_the_agents_environment(
    dagent: Dagent, prefect_server: prefect_infra.PrefectServer, api: PrefectAPI, pool: str, image: str
) -> None:
    """env = {X: "{{ $TEST_AGENT_SECRET }}"} on the pool dagent creates: X never holds the agent's secret."""
    _secret_probe(dagent, api, pool, image, prefect_config(dagent, prefect_server.api_url, pool), pool_exists=False)


def test_env_placeholder_is_not_filled_from_the_agents_environment_on_prefects_template(
    dagent: Dagent, prefect_server: prefect_infra.PrefectServer, api: PrefectAPI, pool: str, image: str
) -> None:
    """The same on a pool made from Prefect's own docker template whose `env` has a non-empty default."""
    template = _prefect_docker_template(dagent, prefect_server.api_url)
    template["variables"]["properties"]["env"]["default"] = {"POOL_DEFAULT": "yes"}
    api.call("POST", "/work_pools/", {"name": pool, "type": "docker", "base_job_template": template})
    _secret_probe(dagent, api, pool, image, prefect_config(dagent, prefect_server.api_url, pool), pool_exists=True)


# --- 6: credentials in api.url -------------------------------------------------------------------


def test_credentials_in_the_api_url_are_refused_and_never_shown(dagent: Dagent) -> None:
    """api.url with user:password@ → `dagent start` exits 2 at once, and the password is in none of its output."""
    url = f"http://user:s3cretpw@127.0.0.1:{infra.free_port()}/api"
    config = prefect_config(dagent, url, "p", extra="[retry]\nattempts = 2\n")
    result = dagent("start", "-c", str(config), timeout=60)
    output = result.stdout + result.stderr
    assert "s3cretpw" not in output, f"the password is shown: {output[-1500:]}"
    assert result.returncode == 2, f"exit {result.returncode}: {output[-1500:]}"
    assert "try 2" not in output and "Prefect API" not in output, "it asked the API instead of refusing at once"


# --- 7: half-open connections to the health server -----------------------------------------------


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads: line for {pid}")


def _get(url: str, timeout: float) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


def _closed_by_peer(sock: socket.socket) -> bool:
    """True when the peer has closed: EOF (after whatever it sent) or a reset; False while it stays open."""
    sock.settimeout(0.5)
    for _ in range(20):
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            return True
        if not data:
            return True
    return False


def test_half_open_health_connections_do_not_pin_the_agent(dagent: Dagent, inbox: Path) -> None:
    """200 connections that send half a request line and wait: the agent keeps its threads few, closes them
    itself, and a normal /health still answers within 5 s meanwhile."""
    port = infra.free_port()
    config = dagent.config(
        f'concurrency = 1\npoll_interval = 0.5\n[inbox]\npath = "{inbox}"\n[health]\naddress = "127.0.0.1:{port}"\n'
    )
    health = f"http://127.0.0.1:{port}/health"
    with _running(dagent, config) as agent:

        def answers() -> bool:
            with contextlib.suppress(OSError):
                return _get(health, 2) in (200, 503)
            return False

        wait_for(answers, 30, "/health to answer")
        socks: list[socket.socket] = []
        try:
            refused = 0  # a server that turns some away at once is as good as one that times them out
            for _ in range(200):
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                except OSError:
                    refused += 1
                    continue
                socks.append(sock)
                with contextlib.suppress(OSError):
                    sock.sendall(b"GET /health HTTP/1.1\r\n")
                time.sleep(0.01)  # paced: a listen backlog of 5 overrun costs a 1 s SYN retry per overrun
            started = time.monotonic()
            try:
                probe = f"HTTP {_get(health, 5)}"
            except OSError as e:
                probe = f"{type(e).__name__}: {e}"
            took = time.monotonic() - started
            time.sleep(15)
            assert agent.process.poll() is None, f"the agent exited{_tail(agent)}"
            threads = _threads(agent.process.pid)
            readable, _, _ = select.select(socks, [], [], 1.0)
            still_open = len(socks) - sum(1 for s in readable if _closed_by_peer(s))
            facts = f"probe: {probe} in {took:.1f}s; {threads} threads; {still_open} of {len(socks)} still open; {refused} refused"
            assert probe in ("HTTP 200", "HTTP 503") and took < 5, f"/health did not answer meanwhile ({facts})"
            assert threads < 60, f"too many threads ({facts})"
            assert still_open == 0, f"half-open connections not closed by the agent after 15 s ({facts})"
        finally:
            for sock in socks:
                sock.close()
