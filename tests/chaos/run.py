"""The chaos suite: faults, restarts, bad input and policy bypass against a real daemon and a real Prefect server.

    python -m tests.chaos            # the full suite (about 15 minutes on 2 CPUs)
    python -m tests.chaos --short    # a few of everything (what .ci/run runs)
    python -m tests.chaos --only inbox-kill,corpus

Prints a markdown table of figures and exits 1 when any target is missed. Every agent of the
suite is configured with a known secret token, and the last row greps everything the suite
produced for it. A whole suite (no --only) writes its rows to bench/results/chaos-<mode>.json, and
--mutants (all of them) to bench/results/chaos-mutants-<mode>.json: `python -m bench.report` renders
docs/reliability.md's tables from them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker

from tests.support import corpus, infra, prefect_infra
from tests.support.corpus import SECRET
from tests.support.helpers import AgentProcess, Dagent, code_commit
from tests.support.prefect_api import FINAL, FaultyHTTPProxy, PrefectAPI

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Row:
    """One scenario's figures; the targets are 0 for every count."""

    scenario: str
    runs: int = 0
    lost: int = 0
    twice: int = 0
    stuck: int = 0
    orphans: int = 0
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # targets missed beyond the four counts

    @property
    def ok(self) -> bool:
        return not (self.lost or self.twice or self.stuck or self.orphans or self.failures)


@dataclass
class Sizes:
    kills: int
    runs: int
    many: int  # runs for the multi-agent scenarios


class Chaos:
    """Shared pieces: a work root, the daemon, the busybox image, and (lazily) a Prefect server."""

    def __init__(self, sizes: Sizes, stack: ExitStack, backend: str) -> None:
        self.sizes = sizes
        self.backend = backend
        self.stack = stack
        self.root = Path(tempfile.mkdtemp(prefix="dagent-chaos-"))
        self.client = docker.from_env()
        self.image = infra.busybox_image()
        self.random = random.Random(1)
        self._server: prefect_infra.PrefectServer | None = None
        self._servers = 0
        self._flow_image: str | None = None
        self.leaks: Counter[str] = Counter()  # where the secret was seen by scenarios (Prefect run logs)

    def agent(self, label: str) -> Dagent:
        """A fresh agent name and work directory; its containers are removed at the end."""
        workdir = self.root / label
        workdir.mkdir()
        agent = Dagent(name=f"chaos-{label}-{uuid.uuid4().hex[:6]}", workdir=workdir, client=self.client)
        self.stack.callback(lambda: [c.remove(force=True) for c in agent.containers()])
        return agent

    @property
    def server(self) -> prefect_infra.PrefectServer:
        if self._server is None:
            self.fresh_server()
        assert self._server is not None
        return self._server

    def fresh_server(self) -> None:
        """A Prefect server of the scenario's own: one on SQLite does not outlast several heavy ones."""
        if self._server is not None:
            self._server.stop()
        self._servers += 1
        self._server = prefect_infra.PrefectServer(
            prefect_infra.prefect_venv(), self.root / f"prefect-{self._servers}", self.backend
        )
        self.stack.callback(self._server.stop)

    @property
    def flow_image(self) -> str:
        if self._flow_image is None:
            self._flow_image = prefect_infra.flow_image()
        return self._flow_image

    @property
    def api(self) -> PrefectAPI:
        return PrefectAPI(self.server.api_url)


# --- helpers -------------------------------------------------------------------------------------


def _wait(
    condition: Callable[[], bool], timeout: float, progress: Callable[[], int] | None = None, stall: float = 90.0
) -> bool:
    """Wait for `condition`; give up at `timeout`, or when `progress` (a count of work done or left) has
    not moved for `stall` seconds: a row whose runs stopped moving fails now, not at its timeout."""
    deadline = time.monotonic() + timeout
    seen, moved = (progress(), time.monotonic()) if progress else (0, 0.0)
    while not condition():
        now = time.monotonic()
        if now > deadline:
            return False
        if progress is not None:
            if (value := progress()) != seen:
                seen, moved = value, now
            elif now - moved > stall:
                return False
        time.sleep(0.2)
    return True


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def _inbox_config(agent: Dagent, inbox: Path, count: Path, extra: str = "", **docker_keys: Any) -> Path:
    head = (
        f'concurrency = 4\npoll_interval = 0.2\n{extra}\n[inbox]\npath = "{inbox}"\n'
        f'[api]\ntoken = "{SECRET}"\n'  # unused by the inbox, but it must never show
    )
    keys = {"allowed_host_paths": [str(count)], "keep_containers": "never", **docker_keys}
    return agent.config(head, **keys)


def _drop(inbox: Path, run_id: str, fields: dict[str, Any]) -> None:
    (inbox / "new").mkdir(parents=True, exist_ok=True)
    tmp = inbox / "new" / f".{run_id}.part"
    tmp.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items()))
    tmp.rename(inbox / "new" / f"{run_id}.toml")


def _counting(image: str, count: Path, seconds: float) -> dict[str, Any]:
    return {
        "image": image,
        "command": ["sh", "-c", f'echo "$DAGENT_RUN_ID" >> /count/starts; sleep {seconds}'],
        "volumes": [f"{count}:/count"],
    }


def _starts(count: Path) -> Counter[str]:
    path = count / "starts"
    return Counter(path.read_text().split()) if path.exists() else Counter()


def _inbox_outcomes(inbox: Path) -> dict[str, str]:
    """Run id → its outcome (done/<id>.json) or "refused" (failed/)."""
    found = {p.stem: str(json.loads(p.read_text()).get("outcome")) for p in (inbox / "done").glob("*.json")}
    for p in (inbox / "failed").glob("*.toml"):
        found.setdefault(p.name.split(".")[0], "refused")
    return found


def _each_once(row: Row, ids: list[str], count: Path, ends: dict[str, str], expected: str | dict[str, str]) -> None:
    """Tie the row to what the containers themselves recorded: every run started exactly once, and
    ended as `expected` (one state for all, or run id → state). A build where nothing runs, or where
    every run is refused, misses this."""
    starts = _starts(count)
    row.twice = sum(1 for i in ids if starts[i] > 1)
    never = [i for i in ids if starts[i] == 0]
    if never:
        row.failures.append(f"{len(never)} run(s) never started (e.g. {never[0]})")
    want = expected if isinstance(expected, dict) else dict.fromkeys(ids, expected)
    wrong = [i for i in ids if ends.get(i) != want.get(i)]
    if wrong:
        row.failures.append(
            f"{len(wrong)} run(s) did not end as expected (e.g. {wrong[0]}: {ends.get(wrong[0])}, not {want.get(wrong[0])})"
        )
    strays = set(starts) - set(ids)
    if strays:
        row.failures.append(f"{len(strays)} start(s) of runs not in this row")


def _orphans(agents: list[Dagent]) -> int:
    """Containers left behind by any of the row's agents (each counted under its own name)."""
    return sum(len(a.containers()) for a in agents)


def _inbox_row(
    row: Row, inbox: Path, ids: list[str], count: Path, agents: list[Dagent], expected: str = "succeeded"
) -> Row:
    outcomes = _inbox_outcomes(inbox)
    waiting = {p.stem for p in inbox.glob("new/*.toml")} | {p.stem for p in inbox.glob("claimed/*/*.toml")}
    missing = [i for i in ids if i not in outcomes]
    row.runs = len(ids)
    row.stuck = sum(1 for i in missing if i in waiting)
    row.lost = len(missing) - row.stuck
    _each_once(row, ids, count, outcomes, expected)
    # What a kill between two steps of a finished run could leave: its marker, a report's temp file.
    debris = [p for p in inbox.glob("claimed/*/*.started") if not p.with_suffix(".toml").exists()]
    debris += list(inbox.glob("done/.*"))
    if debris:
        row.failures.append(f"{len(debris)} file(s) left behind by finished runs (e.g. {debris[0].name})")
    row.orphans = _orphans(agents)
    row.notes.append(", ".join(f"{n} {o}" for o, n in Counter(outcomes[i] for i in ids if i in outcomes).items()))
    return row


def _prefect_row(
    row: Row,
    chaos: Chaos,
    ids: list[str],
    count: Path,
    agents: list[Dagent],
    expected: str | dict[str, str] = "COMPLETED",
) -> Row:
    states = {i: chaos.api.state(i) for i in ids}
    row.runs = len(ids)
    row.stuck = sum(1 for s in states.values() if s in ("PENDING", "RUNNING", "CANCELLING"))
    row.lost = sum(1 for s in states.values() if s not in FINAL and s not in ("PENDING", "RUNNING", "CANCELLING"))
    _each_once(row, ids, count, {i: str(s) for i, s in states.items()}, expected)
    for run_id in ids:  # the engine's own record: one RUNNING state per run
        history = chaos.api.call("GET", f"/flow_run_states/?flow_run_id={run_id}")
        if sum(1 for s in history if s["type"] == "RUNNING") > 1 and _starts(count)[run_id] <= 1:
            row.twice += 1
    row.orphans = _orphans(agents)
    row.notes.append(", ".join(f"{n} {s}" for s, n in Counter(states.values()).items()))
    for run_id in ids:  # the agent's own lines sent to each run's logs, every run
        chaos.leaks["Prefect run logs"] += any(SECRET in line for line in chaos.api.logs(run_id))
    return row


def _unfinished(chaos: Chaos, ids: list[str]) -> int:
    """One request, not one per run: polling 200 runs one by one is itself a load test of the server."""
    if not ids:
        return 0
    body = {"flow_runs": {"id": {"any_": ids}, "state": {"type": {"not_any_": sorted(FINAL)}}}}
    return int(chaos.api.call("POST", "/flow_runs/count", body))


def _all_final(chaos: Chaos, ids: list[str]) -> bool:
    time.sleep(1.0)
    return _unfinished(chaos, ids) == 0


def _deployment(chaos: Chaos, pool: str, count: Path, engine: bool = True) -> str:
    """A deployment whose containers record each start, then run the real flow engine (`engine`) or its
    stand-in (tests/integration/flows/standin.py: RUNNING, then COMPLETED, in milliseconds of CPU)."""
    record = 'echo "$PREFECT__FLOW_RUN_ID" >> /count/starts'
    run = "prefect flow-run execute" if engine else "python3 /flows/standin.py"
    command = f"sh -c '{record} && exec {run}'"
    return chaos.api.deployment(
        pool,
        "flows.py:hello",
        {"image": chaos.flow_image, "network_mode": "host", "command": command, "volumes": [f"{count}:/count"]},
    )


def _prefect_config(
    agent: Dagent, url: str, pool: str, count: Path, extra: str = "", container_url: str | None = None
) -> Path:
    head = (
        f'source = "prefect"\nconcurrency = 4\n{extra}\n'
        f'[api]\nurl = "{url}"\ncontainer_url = "{container_url or url}"\nwork_pool = "{pool}"\ntoken = "{SECRET}"\n'
    )
    return agent.config(head, allowed_host_paths=[str(count)], allow_host_network=True, keep_containers="never")


def _create_pool(agent: Dagent, config: Path) -> None:
    with AgentProcess(agent, config, "--max-polls", "1") as first:
        first.process.wait(timeout=60)


def _fleet(chaos: Chaos, agent: Dagent, n: int) -> list[Dagent]:
    """The n agents a many-agent row runs, each under its own name (`<agent>-<i>`), cleaned up at the end."""
    fleet = [Dagent(name=f"{agent.name}-{i}", workdir=agent.workdir, client=agent.client) for i in range(n)]
    for member in fleet:
        chaos.stack.callback(lambda member=member: [c.remove(force=True) for c in member.containers()])
    return fleet


@contextmanager
def _agents(agent: Dagent, config: Path, fleet: list[Dagent], row: Row) -> Iterator[list[AgentProcess]]:
    processes = [AgentProcess(agent, config, name=member.name) for member in fleet]
    try:
        yield processes
    finally:
        for p in processes:
            _stop(row, p, timeout=60)


def _kills(row: Row, chaos: Chaos, agent: Dagent, config: Path, pause: tuple[float, float]) -> None:
    """kill -9 of the agent, started again each time, at random moments; counts the kills that landed
    while a run's container was running (a kill before any run started proves nothing about runs)."""
    landed = 0
    for _ in range(chaos.sizes.kills):
        with AgentProcess(agent, config) as victim:
            time.sleep(chaos.random.uniform(*pause))
            landed += any(c.status == "running" for c in agent.containers())
            victim.signal(signal.SIGKILL)
    row.notes.append(f"{landed} of {chaos.sizes.kills} kills with a run's container running")
    if not landed:
        row.failures.append("no kill landed while a run's container was running")


def _one_gone(processes: list[AgentProcess]) -> bool:
    return any(p.process.poll() is not None for p in processes)


def _stop(row: Row, process: AgentProcess, timeout: float = 45) -> None:
    """Stop an agent the row started, and fail the row if it had already ended by itself (the others
    would have finished its work, and the row would pass without it)."""
    code = process.process.poll()
    if code is not None:
        row.failures.append(f"an agent exited by itself (code {code}): {process.log_path.name}")
        return
    process.signal(timeout=timeout)


# --- scenarios -----------------------------------------------------------------------------------


def inbox_kill(chaos: Chaos) -> Row:
    """kill -9 of the inbox agent at random moments across a burst, then one last clean run."""
    row = Row(f"kill -9, {chaos.sizes.kills} times, inbox")
    agent = chaos.agent("inbox-kill")
    inbox, count = agent.workdir / "inbox", agent.workdir / "count"
    count.mkdir()
    ids = [f"k{i:03d}" for i in range(chaos.sizes.runs)]
    for run_id in ids:
        _drop(inbox, run_id, _counting(chaos.image, count, round(chaos.random.uniform(0.2, 2.0), 2)))
    config = _inbox_config(agent, inbox, count)
    _kills(row, chaos, agent, config, (0.3, 2.5))
    with AgentProcess(agent, config) as last:
        _wait(lambda: all(i in _inbox_outcomes(inbox) for i in ids), 300, lambda: len(_inbox_outcomes(inbox)))
        _wait(lambda: not agent.containers(), 30)
        _stop(row, last)
    return _inbox_row(row, inbox, ids, count, [agent])


def prefect_kill(chaos: Chaos) -> Row:
    """kill -9 of the Prefect agent at random moments across a burst of real flows, then one clean run."""
    chaos.fresh_server()
    row = Row(f"kill -9, {chaos.sizes.kills} times, Prefect")
    agent = chaos.agent("prefect-kill")
    count = agent.workdir / "count"
    count.mkdir()
    pool = f"chaos-kill-{uuid.uuid4().hex[:6]}"
    config = _prefect_config(agent, chaos.server.api_url, pool, count)
    _create_pool(agent, config)
    deployment = _deployment(chaos, pool, count)
    # Every third run's container fails before any engine could report (exit 3 after 2 s): only the
    # agent can end such a run, so one whose agent was killed meanwhile ends only if a restart adopts it.
    failing = chaos.api.deployment(pool, "flows.py:hello", {
        "image": chaos.flow_image, "network_mode": "host", "volumes": [f"{count}:/count"],
        "command": "sh -c 'echo \"$PREFECT__FLOW_RUN_ID\" >> /count/starts && sleep 2 && exit 3'",
    })  # fmt: skip
    ids = [chaos.api.run(failing if i % 3 == 2 else deployment) for i in range(chaos.sizes.runs)]
    expected = {i: "CRASHED" if n % 3 == 2 else "COMPLETED" for n, i in enumerate(ids)}
    _kills(row, chaos, agent, config, (0.5, 4.0))
    with AgentProcess(agent, config) as last:
        _wait(lambda: _all_final(chaos, ids), 400, lambda: _unfinished(chaos, ids))
        _wait(lambda: not agent.containers(), 30)
        _stop(row, last)
    return _prefect_row(row, chaos, ids, count, [agent], expected=expected)


def daemon_restart(chaos: Chaos) -> Row:
    """The Docker daemon stopped and started mid-burst: the agent lives on; /health goes 503 then 200."""
    row = Row("Docker daemon restarted mid-burst, inbox")
    try:
        engine = infra.PrivateEngine()
        engine.start()
    except infra.Unavailable as e:
        row.failures.append(f"cannot run a second dockerd: {e}")
        return row
    chaos.stack.callback(engine.close)
    subprocess.run(f"docker save {chaos.image} | docker -H {engine.url} load -q", shell=True, check=True,
                   capture_output=True)  # fmt: skip
    agent = chaos.agent("daemon")
    agent.client = docker.DockerClient(base_url=engine.url)
    inbox, count = agent.workdir / "inbox", agent.workdir / "count"
    count.mkdir()
    ids = [f"d{i:03d}" for i in range(chaos.sizes.runs)]
    for run_id in ids:
        _drop(inbox, run_id, _counting(chaos.image, count, 2.0))
    port = infra.free_port()
    config = _inbox_config(agent, inbox, count, base_url=engine.url)
    health = f"http://127.0.0.1:{port}/health"
    seen: list[int] = []
    with AgentProcess(agent, config, "--agent-address", f"127.0.0.1:{port}") as process:
        _wait(lambda: sum(_starts(count).values()) >= 2, 120)
        engine.stop()
        if _wait(lambda: _get(health) == 503, 30):
            seen.append(503)
        engine.start()
        if _wait(lambda: _get(health) == 200, 90):
            seen.append(200)
        _wait(lambda: all(i in _inbox_outcomes(inbox) for i in ids), 300, lambda: len(_inbox_outcomes(inbox)))
        _wait(lambda: not agent.containers(), 30)
        alive = process.process.poll() is None
        _stop(row, process)
    if seen != [503, 200]:
        row.failures.append(f"/health went {seen}, not [503, 200]")
    if not alive:
        row.failures.append("the agent died")
    row.notes.append("/health " + " → ".join(map(str, seen)) + ("; agent alive" if alive else "; agent died"))
    return _inbox_row(row, inbox, ids, count, [agent])


def api_faults(chaos: Chaos) -> Row:
    """20% of the agent's Prefect requests get 503, 429 with Retry-After, a reset or a slow answer."""
    chaos.fresh_server()
    row = Row("Prefect API faults at 20%")
    agent = chaos.agent("api-faults")
    count = agent.workdir / "count"
    count.mkdir()
    pool = f"chaos-faults-{uuid.uuid4().hex[:6]}"
    proxy = FaultyHTTPProxy(
        chaos.server.api_url.removesuffix("/api"), fault_rate=0.2, seed=chaos.random.randrange(1000)
    )
    chaos.stack.callback(proxy.stop)
    config = _prefect_config(agent, proxy.api_url("/api"), pool, count, container_url=chaos.server.api_url)
    _create_pool(agent, config)
    deployment = _deployment(chaos, pool, count)
    ids = [chaos.api.run(deployment) for _ in range(chaos.sizes.runs)]
    with AgentProcess(agent, config) as process:
        _wait(lambda: _all_final(chaos, ids), 400, lambda: _unfinished(chaos, ids))
        _wait(lambda: not agent.containers(), 30)
        _stop(row, process)
    row = _prefect_row(row, chaos, ids, count, [agent])
    row.notes.append(f"faults: {sum(proxy.faults.values())} ({', '.join(f'{k} {v}' for k, v in proxy.faults.items())})")
    if not sum(proxy.faults.values()):  # a row of faults with none injected proves nothing
        row.failures.append("no fault was injected")
    return row


def socket_faults(chaos: Chaos) -> Row:
    """A proxy in front of the Docker socket refuses 20% of the agent's connections and cuts the rest."""
    row = Row("Docker socket: 20% of connections refused, all cut within 2 s")
    proxy = infra.FaultProxy(drop_rate=0.2, seed=chaos.random.randrange(1000), lifetime=2.0)
    chaos.stack.callback(proxy.stop)
    agent = chaos.agent("socket-faults")
    inbox, count = agent.workdir / "inbox", agent.workdir / "count"
    count.mkdir()
    ids = [f"s{i:03d}" for i in range(chaos.sizes.runs)]
    for run_id in ids:
        _drop(inbox, run_id, _counting(chaos.image, count, 0.5))
    # The proxy is a tcp:// endpoint on this host in front of this host's daemon: the operator's word
    # that its paths are ours (dagent cannot see through a TCP proxy to check).
    config = _inbox_config(agent, inbox, count, base_url=proxy.url, verify_host_view=False)
    with AgentProcess(agent, config) as process:
        _wait(lambda: all(i in _inbox_outcomes(inbox) for i in ids), 300, lambda: len(_inbox_outcomes(inbox)))
        _wait(lambda: not agent.containers(), 30)
        _stop(row, process)
    row = _inbox_row(row, inbox, ids, count, [agent])
    row.notes.append(f"{proxy.dropped + proxy.forwarded} connections: {proxy.dropped} refused, {proxy.cut} cut")
    if not (proxy.dropped and proxy.cut):
        row.failures.append("no connection was refused or cut: no fault was injected")
    return row


def many_inbox(chaos: Chaos, n: int) -> Row:
    """n agents on one inbox."""
    row = Row(f"{n} agents, one inbox")
    agent = chaos.agent(f"inbox-{n}")
    inbox, count = agent.workdir / "inbox", agent.workdir / "count"
    count.mkdir()
    ids = [f"m{i:03d}" for i in range(chaos.sizes.many)]
    for run_id in ids:
        _drop(inbox, run_id, _counting(chaos.image, count, 0))
    config = _inbox_config(agent, inbox, count)
    fleet = _fleet(chaos, agent, n)
    with _agents(agent, config, fleet, row) as processes:
        # Also stops waiting when an agent is gone: the runs it took would keep the row waiting its timeout.
        _wait(
            lambda: all(i in _inbox_outcomes(inbox) for i in ids) or _one_gone(processes),
            600,
            lambda: len(_inbox_outcomes(inbox)),
        )
        _wait(lambda: not _orphans(fleet), 30)
    return _inbox_row(row, inbox, ids, count, [agent, *fleet])


def many_prefect(chaos: Chaos, n: int, engine: bool = False, kills: int = 0) -> Row:
    """n agents on one work pool; each run's container runs the flow engine's stand-in (COMPLETED, fast)
    or, with `engine`, a real flow (COMPLETED). `kills`: that many kill -9s of random agents of the
    fleet while the runs arrive, each agent started again at once."""
    chaos.fresh_server()
    row = Row(
        f"{n} agents, one Prefect pool" + (", real flows" if engine else "") + (f", {kills} kill -9s" if kills else "")
    )
    agent = chaos.agent(f"pool-{n}{'-flows' if engine else ''}{'-kills' if kills else ''}")
    count = agent.workdir / "count"
    count.mkdir()
    pool = f"chaos-many-{uuid.uuid4().hex[:6]}"
    config = _prefect_config(agent, chaos.server.api_url, pool, count, extra="poll_interval = 1")
    _create_pool(agent, config)
    deployment = _deployment(chaos, pool, count, engine=engine)
    fleet = _fleet(chaos, agent, n)
    total = chaos.sizes.runs if engine else chaos.sizes.many  # a real flow costs seconds of CPU each
    ids: list[str] = []
    if chaos.backend == "sqlite":
        # In batches of 40, each made before the agents start (as Prefect's own 50-run test pattern):
        # 200 runs made at once turn Late together and the server's Late marking locks its SQLite
        # database for minutes, and runs arriving while several agents claim make the same server
        # stall for 30 s at a time. Both are the SQLite server's limits; Postgres has neither.
        while len(ids) < total:
            batch = [chaos.api.run(deployment) for _ in range(min(40, total - len(ids)))]
            ids += batch
            with _agents(agent, config, fleet, row) as processes:
                _wait(lambda batch=batch, ps=processes: _all_final(chaos, batch) or _one_gone(ps), 300)  # type: ignore[misc]
                # A real flow's engine sets the final state before its container exits: the agents must
                # stay up until they have removed the containers (a stopped agent leaves them to its restart).
                _wait(lambda: not _orphans(fleet), 60)
        return _prefect_row(row, chaos, ids, count, [agent, *fleet], expected="COMPLETED")
    # Postgres: every run arrives while the whole fleet is up and claiming, and agents die under it.
    with _agents(agent, config, fleet, row) as processes:
        kill_at = sorted(chaos.random.sample(range(1, total), min(kills, total - 1)))
        for i in range(total):
            ids.append(chaos.api.run(deployment))
            while kill_at and kill_at[0] == i:
                kill_at.pop(0)
                victim = chaos.random.randrange(n)
                processes[victim].signal(signal.SIGKILL)
                processes[victim] = AgentProcess(agent, config, name=fleet[victim].name)
        _wait(lambda: _all_final(chaos, ids) or _one_gone(processes), 600, lambda: _unfinished(chaos, ids))
        _wait(lambda: not _orphans(fleet), 60)
    return _prefect_row(row, chaos, ids, count, [agent, *fleet], expected="COMPLETED")


LATE_CLAIM = 8.0  # seconds each claim of the late agent is held: its peer claims, runs and ends the run first


def late_claims(chaos: Chaos) -> Row:
    """Two agents on one pool; every claim of one reaches Prefect LATE_CLAIM s late, when the other has
    claimed, run and ended the run. Prefect accepts a PENDING over a COMPLETED run, so the late claim
    is accepted: its history check must step back and put the run's end back, never run it again."""
    chaos.fresh_server()
    row = Row("a late claim over a run another agent ended")
    agent = chaos.agent("late-claims")
    count = agent.workdir / "count"
    count.mkdir()
    pool = f"chaos-late-{uuid.uuid4().hex[:6]}"
    proxy = FaultyHTTPProxy(chaos.server.api_url.removesuffix("/api"), hold_claims=LATE_CLAIM)
    chaos.stack.callback(proxy.stop)
    config = _prefect_config(agent, chaos.server.api_url, pool, count, extra="poll_interval = 1")
    _create_pool(agent, config)
    deployment = _deployment(chaos, pool, count, engine=False)
    prompt, late = _fleet(chaos, agent, 2)
    ids = [chaos.api.run(deployment) for _ in range(8)]
    # The late agent lists with no event stream, so nothing tells it its listed runs were taken.
    late_env = {"DAGENT_API__URL": proxy.api_url("/api"), "DAGENT_API__EVENT_STREAM": "false"}
    with AgentProcess(agent, config, name=late.name, env=late_env) as slow:
        _wait(lambda: proxy.held > 0, 60)
        with AgentProcess(agent, config, name=prompt.name) as fast:
            _wait(lambda: _all_final(chaos, ids), 120, lambda: _unfinished(chaos, ids))
            # Every held claim answered, and none since for longer than a hold: the late agent is done.
            _wait(lambda: proxy.held == len(proxy.claims) and time.time() - proxy.last_held > LATE_CLAIM + 2, 90)
            _wait(lambda: _all_final(chaos, ids) and not _orphans([prompt, late]), 60)
            _stop(row, fast)
        _stop(row, slow)
    row = _prefect_row(row, chaos, ids, count, [prompt, late], expected="COMPLETED")
    over_an_end = sum(1 for _, status in proxy.claims if status == "ACCEPT")
    row.notes.append(f"{proxy.held} late claims, {over_an_end} accepted over a run already ended")
    if not over_an_end:  # the race never happened: the row proves nothing about the check
        row.failures.append("no late claim was accepted over an ended run")
    return row


def bad_inputs(chaos: Chaos) -> Row:
    """The corpus of bad configs, env values, flags, run files, job variables and API answers."""
    row = Row("bad inputs → one clear line, exit 2")
    cases = corpus.BAD_INPUTS
    wrong = [(c, why) for c in cases if (why := corpus.judge(c)) is not None]
    row.runs = len(cases)
    row.failures += [f"{c.kind}: {c.name}: {why}" for c, why in wrong]
    row.notes.append(", ".join(f"{n} {k}" for k, n in Counter(c.kind for c in cases).items()))
    return row


def bypasses(chaos: Chaos) -> Row:
    """Image references, paths, namespaces, privileges through run files and job variables."""
    row = Row("policy bypass attempts")
    with corpus.bypass_sandbox() as root:
        attempts = corpus.attempts(root)
        through = [(a.name, why) for a in attempts if (why := corpus.try_bypass(a, root)) is not None]
    spoofs = [(name, why) for name, fields in corpus.SPOOFS if (why := corpus.try_spoof(name, fields)) is not None]
    row.runs = len(attempts) + len(corpus.SPOOFS)
    row.failures += [f"{name}: {why}" for name, why in [*through, *spoofs]]
    row.notes.append(f"{len(through) + len(spoofs)} bypasses")
    return row


def secrets(chaos: Chaos) -> Row:
    """Grep everything the suite produced for the known token: logs, results, labels, API logs, config show."""
    row = Row("secret in any output")
    places: Counter[str] = Counter()
    inputs = {"agent.toml", "token"}  # what the suite wrote the secret into; everything else is output
    for path in chaos.root.rglob("*"):
        if (
            path.is_file()
            and path.name not in inputs
            and not path.relative_to(chaos.root).parts[0].startswith("prefect")
        ):
            try:
                if SECRET in path.read_text(errors="replace"):
                    places[path.suffix or path.name] += 1
            except OSError:
                pass
    places.update(chaos.leaks)
    agent = chaos.agent("secrets")
    kept = agent.config(f'[api]\ntoken = "{SECRET}"\n', keep_containers="always")
    token_file = agent.workdir / "token"
    token_file.write_text(SECRET + "\n")
    token_file.chmod(0o600)
    shows = [
        agent("config", "show", "-c", str(kept)),
        agent("config", "show", "--json", "-c", str(kept)),
        agent("config", "show", env={"PREFECT_API_KEY": SECRET}),
        agent("config", "show", "--token", SECRET),
        agent("config", "show", "--token-file", str(token_file)),
        agent("config", "validate", "--token", SECRET, "--concurrency", "0"),
        agent("plan", "nope.toml", "--token", SECRET),
    ]
    places["config show / validate / plan"] += sum(SECRET in r.stdout + r.stderr for r in shows)
    inbox = agent.workdir / "inbox"
    _drop(inbox, "secret-run", {"image": chaos.image, "command": ["true"]})
    ran = agent("start", "-c", str(kept), "--max-polls", "1", env={"DAGENT_INBOX__PATH": str(inbox)})
    places["start output"] += SECRET in ran.stdout + ran.stderr
    for container in agent.containers():
        places["container labels"] += SECRET in json.dumps(container.labels)
    row.runs = sum(1 for _ in chaos.root.rglob("*")) + len(shows)
    row.lost = 0
    row.failures += [f"{n} in {where}" for where, n in places.items() if n]
    row.notes.append(f"{sum(places.values())} occurrences")
    return row


def mixed_fleet(chaos: Chaos) -> Row:
    """Prefect's worker and dagent on one pool (tests/chaos/mixed_fleet.py, which builds on this module)."""
    from tests.chaos import mixed_fleet as scenario

    return scenario.mixed_fleet(chaos)


SCENARIOS: dict[str, Callable[[Chaos], Row | list[Row]]] = {
    "inbox-kill": inbox_kill,
    "prefect-kill": prefect_kill,
    "daemon-restart": daemon_restart,
    "api-faults": api_faults,
    "socket-faults": socket_faults,
    "many-inbox": lambda c: [many_inbox(c, 2), many_inbox(c, 3)],
    "many-prefect": lambda c: [
        many_prefect(c, 2),
        many_prefect(c, 3),
        *([many_prefect(c, 5, kills=c.sizes.kills)] if c.backend == "postgres" else []),
        many_prefect(c, 2, engine=True),
        late_claims(c),
    ],
    "mixed-fleet": mixed_fleet,
    "corpus": lambda c: [bad_inputs(c), bypasses(c)],
    "secrets": secrets,  # last: it reads what the others wrote
}


def run_mutants(short: bool, backend: str, names: str) -> int:
    """Each mutant against every row it must break; then, per row, the mutants that broke it.

    Each row runs in a process of its own with the mutant's copy of dagent first on PYTHONPATH, so
    the rows that judge in-process (the corpus) use the broken code as much as the agents they start."""
    from tests.chaos.mutants import MUTANTS
    from tests.support.mutants import StaleMutant

    wanted = None if names == "all" else {n.strip() for n in names.split(",")}
    mutants = [m for m in MUTANTS if wanted is None or m.name in wanted]
    if wanted and wanted - {m.name for m in mutants}:
        print(f"--mutants: no such mutant: {', '.join(sorted(wanted - {m.name for m in mutants}))}", file=sys.stderr)
        return 2
    caught: dict[str, list[str]] = {row: [] for m in mutants for row in m.catchers}
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="dagent-chaos-mutants-"))
    for mutant in mutants:
        try:
            code = mutant.apply(root)
        except StaleMutant as e:
            print(f"{mutant.name}: stale ({e})", flush=True)
            continue
        for name in mutant.catchers:
            print(f"chaos: {name} under mutant {mutant.name} ...", file=sys.stderr, flush=True)
            log = root / f"{code.name}-{name}.log"
            with log.open("w") as out:
                result = subprocess.run(
                    [sys.executable, "-m", "tests.chaos", "--only", name, "--backend", backend,
                     *(["--short"] if short else [])],
                    cwd=code, stdout=out, stderr=subprocess.STDOUT,  # -m puts the cwd first: the mutant
                    env={**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(REPO)]),
                         "DAGENT_TEST_CODE": str(code)},
                )  # fmt: skip
            red = result.returncode != 0
            if red:
                caught[name].append(mutant.name)
            print(f"{mutant.name} → {name}: {'red' if red else 'green'} ({log})", flush=True)
    for row in SCENARIOS:
        if row in caught:
            print(f"{row}: caught by {', '.join(caught[row])}" if caught[row] else f"{row}: not caught")
    missed = [row for row in caught if not caught[row]]
    print(f"\n{len(mutants)} mutants, {len(caught) - len(missed)} of {len(caught)} rows caught, "
          f"{time.monotonic() - started:.0f} s", file=sys.stderr)  # fmt: skip
    if wanted is None:
        order = [row for row in SCENARIOS if row in caught]
        _record(f"chaos-mutants-{'short' if short else 'full'}", backend, started,
                {"rows": {row: caught[row] for row in order}})  # fmt: skip
    return 1 if missed else 0


def _record(name: str, backend: str, started: float, found: dict[str, Any]) -> None:
    """Write a whole run's findings to bench/results/<name>.json, which the documents are rendered from."""
    meta = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": code_commit(), "backend": backend,
        "cpus": os.cpu_count(), "seconds": round(time.monotonic() - started), "prefect": prefect_infra.PREFECT,
    }  # fmt: skip
    out = REPO / "bench" / "results" / f"{name}.json"
    out.write_text(json.dumps({"meta": meta, **found}, indent=2) + "\n")
    print(f"written to {out.relative_to(REPO)}", file=sys.stderr)


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | runs / cases | lost | run twice | stuck | orphans | target met | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        notes = "; ".join(n for n in [*r.notes, *r.failures] if n)
        lines.append(
            f"| {r.scenario} | {r.runs} | {r.lost} | {r.twice} | {r.stuck} | {r.orphans} | {'yes' if r.ok else '**no**'} | {notes} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="a few of everything (CI)")
    parser.add_argument("--only", help=f"comma-separated scenarios of {', '.join(SCENARIOS)}")
    parser.add_argument("--mutants", nargs="?", const="all", metavar="NAMES",
                        help="run each mutant of tests/chaos/mutants.py (or those named) against the rows it must "
                             "break; one line per row, caught or not; exit 0 only when every row was caught")  # fmt: skip
    parser.add_argument("--backend", choices=prefect_infra.BACKENDS, default=prefect_infra.default_backend(),
                        help="the Prefect server's database (default: DAGENT_TEST_BACKEND, else postgres)")  # fmt: skip
    args = parser.parse_args()
    sizes = Sizes(kills=3, runs=8, many=20) if args.short else Sizes(kills=20, runs=30, many=200)
    chosen = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    os.environ.pop("DOCKER_HOST", None)
    threading.excepthook = lambda hook: None  # the proxies' broken pipes are part of the chaos
    if args.mutants:
        return run_mutants(args.short, args.backend, args.mutants)
    rows: list[Row] = []
    started = time.monotonic()
    with infra.docker_engine(), ExitStack() as stack:
        chaos = Chaos(sizes, stack, args.backend)
        for name in chosen:
            print(f"chaos: {name} ...", file=sys.stderr, flush=True)
            t = time.monotonic()
            try:
                result = SCENARIOS[name](chaos)
            except Exception as e:  # a scenario that cannot finish is a missed target, not a crash of the suite
                result = Row(name, failures=[f"{type(e).__name__}: {e}"])
            for row in result if isinstance(result, list) else [result]:
                row.notes.append(f"{time.monotonic() - t:.0f} s")
                rows.append(row)
    print(table(rows))
    print(
        f"\n{'short' if args.short else 'full'} suite on {args.backend}, {time.monotonic() - started:.0f} s",
        file=sys.stderr,
    )
    if not args.only:
        _record(f"chaos-{'short' if args.short else 'full'}", args.backend, started,
                {"rows": [{**asdict(r), "ok": r.ok} for r in rows]})  # fmt: skip
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
