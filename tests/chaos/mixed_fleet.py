"""A mixed fleet: Prefect's own Docker worker and dagent on one work pool, as a team migrating host by host runs.

Runs arrive one by one; Prefect's worker is restarted (SIGTERM, then started again) a third of the way
in, dagent is killed (SIGKILL, then started again) two thirds in, and runs of each are cancelled while
RUNNING. Each container records its run's start in a shared directory, so "each run starts once" is
counted by the containers themselves, whoever started them. Then every run's state history, labels and
`infrastructure_pid` say who ran it and whether the other side touched it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.chaos.run import Chaos, Row, _prefect_config, _starts, _wait
from tests.support import prefect_infra
from tests.support.helpers import AgentProcess
from tests.support.prefect_api import FINAL

WORKER = "mixed-worker"
PREFECT_WORKER = "Prefect's worker"
# What each side writes in a state message when it ends a run itself; the other side's runs must carry none.
DAGENT_WORDS = ("dagent",)
WORKER_WORDS = ("by worker", "Failed to submit flow run", "infrastructure")
# A run's states under either side, up to its end (Late, which the server may add while it waits, aside).
LIFE = ["Scheduled", "Pending", "Submitting", "Running"]


def _worker(chaos: Chaos, pool: str, log: Path) -> subprocess.Popen[bytes]:
    """`prefect worker start` on the pool, with cancellation on (it then watches the pool's Cancelling events)."""
    venv = prefect_infra.prefect_venv()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DAGENT_"))}
    env |= {"PREFECT_API_URL": chaos.server.api_url, "PREFECT_HOME": str(log.parent / "prefect-home"),
            "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_ENABLE_CANCELLATION": "true"}  # fmt: skip
    with log.open("a") as out:
        return subprocess.Popen(
            [str(venv / "bin" / "prefect"), "worker", "start", "--pool", pool, "--type", "docker", "--name", WORKER],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _stop(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signum)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _owner(flow_run: dict[str, Any]) -> str:
    return str((flow_run.get("labels") or {}).get("prefect.worker.name") or "nobody")


def _abandoned(flow_run: dict[str, Any]) -> bool:
    """A run Prefect's worker claimed and left PENDING, its container never made: what its SIGTERM does to
    a run it is submitting (it does not take such a run up again after a restart; Prefect's own behaviour)."""
    state = flow_run.get("state") or {}
    return _owner(flow_run) == WORKER and state.get("type") == "PENDING" and not flow_run.get("infrastructure_pid")


def _settled(flow_run: dict[str, Any], cancelled: dict[str, list[str]]) -> bool:
    kind = (flow_run.get("state") or {}).get("type")
    return kind in FINAL or flow_run["id"] in cancelled["worker"] or _abandoned(flow_run)


def _running(chaos: Chaos, dagent: str, mine: bool) -> int:
    """Containers of the row running now: dagent's (labelled with its name) or the worker's (the others)."""
    found = chaos.client.containers.list(filters={"label": "io.prefect.flow-run-id", "status": "running"})
    return sum(1 for c in found if (c.labels.get("dagent.agent") == dagent) == mine)


def _taken_after(chaos: Chaos, ids: list[str], dagent: str, restarted: dict[str, float]) -> dict[str, int]:
    """How many runs each side claimed (its Pending) after its restart."""
    taken: Counter[str] = Counter()
    for flow_run in _runs(chaos, ids):
        who = "dagent" if _owner(flow_run) == dagent else PREFECT_WORKER
        history = chaos.api.call("GET", f"/flow_run_states/?flow_run_id={flow_run['id']}")
        taken[who] += who in restarted and _claimed_at(history) > restarted[who]
    return dict(taken)


# How long Prefect's worker may take from its claim to recording the pid: a run claimed longer than this
# before its SIGTERM and left with no pid is a missing pid, not the stop's doing.
SUBMITTING = 15.0


def _claimed_at(history: list[dict[str, Any]]) -> float:
    """When the run was last claimed (its Pending), 0 if never."""
    pending = [h for h in history if h["type"] == "PENDING" and h.get("name") == "Pending"]
    return max((datetime.fromisoformat(h["timestamp"]).timestamp() for h in pending), default=0.0)


def _runs(chaos: Chaos, ids: list[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for i in range(0, len(ids), 100):
        found += chaos.api.call("POST", "/flow_runs/filter", {"flow_runs": {"id": {"any_": ids[i : i + 100]}}})
    return found


def _cancel_running(chaos: Chaos, ids: list[str], owner: str, dagent: str, how_many: int) -> list[str]:
    """Set CANCELLING on `how_many` RUNNING runs that `owner` ("worker" or "dagent") ran."""
    running = [
        r for r in _runs(chaos, ids)
        if (r.get("state") or {}).get("type") == "RUNNING" and (_owner(r) == dagent) == (owner == "dagent")
    ]  # fmt: skip
    chosen = [r["id"] for r in running[:how_many]]
    for run_id in chosen:
        chaos.api.call("POST", f"/flow_runs/{run_id}/set_state",
                       {"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True})  # fmt: skip
    return chosen


def mixed_fleet(chaos: Chaos) -> Row:
    """Prefect's worker and dagent on one pool; a restart of each in the middle; cancellations of each."""
    chaos.fresh_server()
    total = 100 if chaos.sizes.runs > 10 else 30
    row = Row(f"mixed fleet: Prefect's worker and dagent on one pool, {total} runs, a restart of each")
    agent = chaos.agent("mixed")
    count = agent.workdir / "count"
    count.mkdir()
    pool = f"chaos-mixed-{uuid.uuid4().hex[:6]}"
    subprocess.run(
        [str(prefect_infra.prefect_venv() / "bin" / "prefect"), "work-pool", "create", pool, "--type", "docker"],
        check=True, capture_output=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
             "PREFECT_API_URL": chaos.server.api_url, "PREFECT_HOME": str(agent.workdir / "prefect-home")},
    )  # fmt: skip
    config = _prefect_config(agent, chaos.server.api_url, pool, count, extra="poll_interval = 1")
    record = 'echo "$PREFECT__FLOW_RUN_ID" >> /count/starts'
    deployment = chaos.api.deployment(pool, "flows.py:hello", {
        "image": chaos.flow_image, "network_mode": "host", "volumes": [f"{count}:/count"],
        "command": f"sh -c '{record} && exec python3 /flows/standin.py'", "env": {"STANDIN_SECONDS": "4"},
    })  # fmt: skip
    worker_log = agent.workdir / "worker.log"
    worker = _worker(chaos, pool, worker_log)
    chaos.stack.callback(lambda: _stop(worker))
    dagent = AgentProcess(agent, config)
    ids: list[str] = []
    cancelled: dict[str, list[str]] = {"worker": [], "dagent": []}
    in_flight: dict[str, int] = {}  # each side's containers running when it was stopped
    restarted: dict[str, float] = {}
    worker_stopped = 0.0
    started = time.monotonic()
    try:
        for i in range(total):
            ids.append(chaos.api.run(deployment))
            time.sleep(0.25)
            if i == total // 3:  # Prefect's worker stopped as an operator stops it, and started again
                in_flight[PREFECT_WORKER] = _running(chaos, agent.name, mine=False)
                worker_stopped = time.time()
                _stop(worker)
                worker = _worker(chaos, pool, worker_log)
                restarted[PREFECT_WORKER] = time.time()
            if total // 2 <= i < 2 * total // 3:  # two RUNNING runs of each side, as they come
                for side in cancelled:
                    cancelled[side] += _cancel_running(chaos, ids, side, agent.name, 2 - len(cancelled[side]))
            if i == 2 * total // 3:  # dagent killed outright, and started again
                in_flight["dagent"] = _running(chaos, agent.name, mine=True)
                dagent.signal(signal.SIGKILL)
                dagent = AgentProcess(agent, config)
                restarted["dagent"] = time.time()
        _wait(lambda: all(_settled(r, cancelled) for r in _runs(chaos, ids)), 300,
              lambda: sum(_settled(r, cancelled) for r in _runs(chaos, ids)))  # fmt: skip
        took = time.monotonic() - started
        alive = {PREFECT_WORKER: worker.poll() is None, "dagent": dagent.process.poll() is None}
    finally:
        _stop(worker)
        if dagent.process.poll() is None:
            dagent.signal(timeout=60)
    _judge(row, chaos, ids, count, agent.name, cancelled, worker_stopped)
    for who, up in alive.items():
        if not up:
            row.failures.append(f"{who} exited by itself")
        if not in_flight.get(who):  # a stop with nothing running proves nothing about recovery
            row.failures.append(f"no container of {who}'s was running when it was stopped")
    row.notes.append(
        f"running at the stops: {in_flight.get(PREFECT_WORKER, 0)} containers of the worker's (SIGTERM), "
        f"{in_flight.get('dagent', 0)} of dagent's (SIGKILL)"
    )
    after = _taken_after(chaos, ids, agent.name, restarted)
    row.notes.append(f"runs taken after the restarts: {after.get(PREFECT_WORKER, 0)} by the worker, "
                     f"{after.get('dagent', 0)} by dagent")  # fmt: skip
    for who, n in after.items():
        if not n:
            row.failures.append(f"{who} took no run after its restart")
    dagent_log = "".join(p.read_text() for p in agent.workdir.glob("agent-*.log"))
    if "Traceback" in dagent_log:
        row.failures.append("dagent logged a traceback")
    # The worker's own runs' containers stay (it keeps them); the row's cleanup removes them.
    for container in chaos.client.containers.list(all=True, filters={"label": "io.prefect.flow-run-id"}):
        if container.labels.get("io.prefect.flow-run-id") in ids:
            container.remove(force=True)
    row.notes.append(f"all runs final in {took:.0f} s")
    return row


def _judge(
    row: Row,
    chaos: Chaos,
    ids: list[str],
    count: Path,
    dagent: str,
    cancelled: dict[str, list[str]],
    worker_stopped: float,
) -> None:
    """Each run started once, ended as its side ends it, and was never touched by the other side."""
    row.runs = len(ids)
    starts = _starts(count)
    row.twice = sum(1 for i in ids if starts[i] > 1)
    runs = {r["id"]: r for r in _runs(chaos, ids)}
    abandoned = {i for i, r in runs.items() if _abandoned(r)}
    row.lost = sum(1 for i in ids if starts[i] == 0 and i not in abandoned)
    if abandoned:
        row.notes.append(f"{len(abandoned)} left PENDING by the worker's SIGTERM mid-submission (it does not take "
                         "them up again; Prefect's own behaviour)")  # fmt: skip
    owners = Counter("dagent" if _owner(r) == dagent else "worker" if _owner(r) == WORKER else "nobody"
                     for r in runs.values())  # fmt: skip
    row.notes.append(f"ran: {owners['worker']} by Prefect's worker, {owners['dagent']} by dagent")
    if owners["nobody"]:
        row.failures.append(f"{owners['nobody']} run(s) with no worker label")
    if not (owners["worker"] and owners["dagent"]):
        row.failures.append("one side ran nothing: the row proves nothing about sharing a pool")
    misread, crashed, wrong_pid, no_pid, odd, ends = [], [], [], list[str](), list[str](), Counter[str]()
    host = socket.gethostname()
    for run_id, flow_run in runs.items():
        if run_id in abandoned:
            continue
        side = "dagent" if _owner(flow_run) == dagent else "worker"
        history = chaos.api.call("GET", f"/flow_run_states/?flow_run_id={run_id}")
        messages = " ".join(str(h.get("message") or "") for h in history)
        if any(h["type"] == "CRASHED" for h in history):
            crashed.append(run_id)
        names = [h["name"] for h in sorted(history, key=lambda h: h["timestamp"]) if h["name"] != "Late"]
        if run_id in cancelled["dagent"]:
            wanted = [*LIFE, "Cancelling", "Cancelled"]  # dagent stops the container and says so
        elif run_id in cancelled["worker"]:
            wanted = [*LIFE, "Cancelling"]  # the worker leaves a running run to its engine (the stand-in has none)
        else:
            wanted = [*LIFE, "Completed"]
        if names != wanted:  # a state either side added that the run's own life does not have
            odd.append(f"{run_id}: {' > '.join(names)}")
        other_words = DAGENT_WORDS if side == "worker" else WORKER_WORDS
        if any(word in messages for word in other_words):
            misread.append(run_id)
        pid = str(flow_run.get("infrastructure_pid") or "")
        if not pid and side == "worker" and worker_stopped - SUBMITTING < _claimed_at(history) < worker_stopped:
            # Prefect's worker records the pid after the container started; a SIGTERM in between leaves none.
            no_pid.append(run_id)
        elif not pid.startswith("http+docker://localhost:" if side == "worker" else f"{host}:"):
            wrong_pid.append(f"{run_id} ({side}, labelled {_owner(flow_run)!r}, pid {pid!r})")
        ends[f"{side} {(flow_run.get('state') or {}).get('type')}"] += 1
    row.notes.append("ends: " + ", ".join(f"{k} {v}" for k, v in sorted(ends.items())))
    if no_pid:
        row.notes.append(
            f"{len(no_pid)} of the worker's runs have no pid: started as its SIGTERM came, before it recorded one"
        )
    row.stuck = sum(
        1 for i in ids if i not in cancelled["worker"] and i not in abandoned and (runs[i].get("state") or {}).get(
            "type") not in ("COMPLETED", "CANCELLED")
    )  # fmt: skip
    for run_id in cancelled["dagent"]:
        if (runs[run_id].get("state") or {}).get("type") != "CANCELLED":
            row.failures.append(f"dagent's cancelled run {run_id} is not CANCELLED")
    row.notes.append(
        f"cancelled while RUNNING: {len(cancelled['dagent'])} of dagent's (CANCELLED by dagent), "
        f"{len(cancelled['worker'])} of the worker's (left to the flow engine, as Prefect 3.8's worker does)"
    )
    if len(cancelled["dagent"]) == 0:
        row.failures.append("no run of dagent's was RUNNING to cancel")
    for what, found in (
        ("CRASHED", crashed),
        ("touched by the other side", misread),
        ("with the wrong pid", wrong_pid),
        ("with a state their own life does not have", odd),
    ):
        if found:
            row.failures.append(f"{len(found)} run(s) {what} (e.g. {found[0]})")
