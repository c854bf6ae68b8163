"""bench/run.py --scale: N dagent agents against N Prefect workers on one Postgres-backed Prefect server.

    python bench/run.py --scale                       # N = 1, 5, 20, 40; bursts of 1,000 runs (about 3.75 hours)
    python bench/run.py --scale --quick               # N = 1, 5; bursts of 100 (a few minutes, numbers mean little)
    python bench/run.py --scale --fleet 1,5 --burst 300 --only dagent

Each agent is a process of its own with its own name, all on one machine: what is measured is the
server's side, which does not care whether its workers share a host. Per N and per system: the
server's requests and CPU at idle (net of its own background work, measured with nothing attached
just before each point, over a window at least as long as the idle one), dispatch latency of real flows under a steady arrival rate, a burst of stand-in runs
(wall time, each started exactly once, claim attempts per run), and for dagent, kill -9 of random
agents during a burst. A whole run first measures what each idle request and an open event stream
cost the server on their own (bench/costs.py; `--costs` measures only that), so that the idle rows
can be checked against their parts. Writes bench/results/scale.json and two plots beside it; prints
the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker

from bench import costs
from bench.common import REPO, by_kind, prefect_worker_pool
from dagent.sources.prefect.claims import claimer
from dagent.sources.prefect.events import StateEventWatcher
from dagent.sources.prefect.fleet import position
from dagent.sources.prefect.roster import ROSTER_FIRST
from dagent.stats import quantile
from tests.support import infra, prefect_infra
from tests.support.prefect_api import FINAL, FaultyHTTPProxy, PrefectAPI

CONCURRENCY = 4
SMALL_BURST = 100
# Each system's idle window covers its own longest period: dagent heartbeats every 120 s and lists
# every 300 s while its event stream is up (agents started together beat in step, so a shorter
# window could see none of it); the worker polls every 10 s.
IDLE_WINDOW = {"dagent": 300.0, "worker": 90.0}
BASELINE_WINDOW = 120.0
WORKER_CHANNEL_HEARTBEATS = 2.0  # a minute: Prefect's worker, PREFECT_WORKER_HEARTBEAT_SECONDS=30
CHANNEL = "heartbeats on its worker channel"
RESULTS = REPO / "bench" / "results"


@dataclass
class Point:
    """One system with N agents."""

    system: str
    n: int
    up_s: float = 0.0  # start → every agent heartbeating
    idle_requests_per_min: float = 0.0  # all N agents together
    idle_server_cpu_s_per_min: float = 0.0  # Prefect server + Postgres, less the server's own background
    # That background, measured just before this point's agents start: it grows with the runs the
    # database holds, so a point after bursts must not be netted against the first one's.
    background_cpu_s_per_min: float | None = None
    idle_agent_cpu_s_per_min: float = 0.0  # all N agents together
    idle_rss_mb: float = 0.0  # all N agents together
    idle_requests_by_kind: dict[str, float] = field(default_factory=dict)
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # arrival rate (runs/s) → p50, p95
    # Stand-in runs at a steady rate the fleet keeps up with: claim conflicts when agents are not saturated.
    steady: dict[str, Any] = field(default_factory=dict)
    burst: dict[str, Any] = field(default_factory=dict)
    kills: dict[str, Any] = field(default_factory=dict)

    def per_agent(self, name: str) -> float:
        return float(getattr(self, name)) / self.n


def _tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return pids


def _cpu_and_rss(pids: list[int]) -> tuple[float, float]:
    """(CPU seconds used so far, RSS in MB) of these processes."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = rss = 0.0
    for p in pids:
        with contextlib.suppress(OSError, StopIteration, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / ticks
            status = Path(f"/proc/{p}/status").read_text()
            rss += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024
    return cpu, rss


def _refused(log: list[tuple[float, str, str, str]], names: list[str], size: int) -> dict[str, Any]:
    """A dagent fleet's claims of runs already taken (refused, or accepted and stepped back from) per run, by
    the claimer's place for the run (0: its owner), and how long after the run's first accepted claim (p50, p95)."""
    first: dict[str, float] = {}
    for at, run, status, _ in log:
        if status == "ACCEPT":
            first.setdefault(run, at)
    fleet = sorted(names)
    places: Counter[str] = Counter()
    late: list[float] = []
    for at, run, status, message in log:
        agent = claimer(message)
        if (status == "ACCEPT" and first.get(run) == at) or agent is None:
            continue  # a run's first accepted claim (a later one was accepted over a run already taken)
        place = position(agent, run, fleet)
        places["owner" if place == 0 else "second" if place == 1 else "third or later"] += 1
        if run in first:
            late.append(at - first[run])
    late.sort()
    return {
        "per_run_by_place": {k: round(v / size, 3) for k, v in sorted(places.items())},
        "after_first_accept_s": [round(quantile(late, q), 2) for q in (0.5, 0.95)] if late else None,
    }


class Starts:
    """docker events for flow-run containers: every start and the last death of each run's containers."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.starts: Counter[str] = Counter()
        self.first: dict[str, float] = {}
        self.died: dict[str, float] = {}
        self._events = client.events(decode=True, filters={"type": "container", "label": "io.prefect.flow-run-id"})
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        with contextlib.suppress(Exception):
            for event in self._events:
                run_id = event.get("Actor", {}).get("Attributes", {}).get("io.prefect.flow-run-id")
                when = event.get("timeNano", 0) / 1e9
                if run_id and event.get("status") == "start":
                    self.starts[run_id] += 1
                    self.first.setdefault(run_id, when)
                elif run_id and event.get("status") == "die":
                    self.died[run_id] = when

    def close(self) -> None:
        self._events.close()


class Ear:
    """The pool's event stream as an agent hears it: when each run's SCHEDULED and first PENDING came."""

    def __init__(self, api_url: str, pool_id: str) -> None:
        self.scheduled: dict[str, float] = {}
        self.pending: dict[str, float] = {}
        self._watcher = StateEventWatcher(api_url, pool_id, None, self._on_state)
        self._watcher.start()
        deadline = time.monotonic() + 30
        while not self._watcher.connected and time.monotonic() < deadline:  # hears the first run made next
            time.sleep(0.1)

    def _on_state(self, state: str, run_id: str, message: str) -> None:
        heard = {"SCHEDULED": self.scheduled, "PENDING": self.pending}.get(state)
        if heard is not None:
            heard.setdefault(run_id, time.time())

    def close(self) -> None:
        self._watcher.stop()


def _stream_lag(ear: Ear, made: list[tuple[str, float]], log: list[tuple[float, str, str, str]]) -> dict[str, Any]:
    """How far the event stream trailed: a run's SCHEDULED behind its creation, its PENDING behind the
    first accepted claim (p50, p95 in seconds), and the runs never heard of."""
    accepted: dict[str, float] = {}
    for at, run, status, _ in log:
        if status == "ACCEPT":
            accepted.setdefault(run, at)
    scheduled = sorted(ear.scheduled[r] - t for r, t in made if r in ear.scheduled)
    pending = sorted(ear.pending[r] - accepted[r] for r, _ in made if r in ear.pending and r in accepted)
    return {
        "scheduled_after_created_s": [round(quantile(scheduled, q), 2) for q in (0.5, 0.95)] if scheduled else None,
        "pending_after_claim_s": [round(quantile(pending, q), 2) for q in (0.5, 0.95)] if pending else None,
        "unheard": sum(1 for r, _ in made if r not in ear.scheduled),
    }


class Scale:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="dagent-scale-"))
        self.client = docker.from_env()
        self.venv = prefect_infra.prefect_venv()
        self.image = prefect_infra.flow_image()
        self.server = prefect_infra.PrefectServer(self.venv, self.root, args.backend)
        self.api = PrefectAPI(self.server.api_url)
        self.starts = Starts(self.client)
        self.random = random.Random(3)
        self.baseline_cpu_s_per_min = 0.0
        self.ear: Ear | None = None  # the dagent pool's event stream, while its point is measured
        self.costs: dict[str, Any] = {}  # bench/costs.py's measure, when this run made one

    def close(self) -> None:
        self.starts.close()
        self.server.stop()

    # --- the server's side ---------------------------------------------------------------------

    def _server_cpu(self) -> float:
        pids = _tree(self.server.process.pid)
        if self.server.postgres is not None:
            pids += self.server.postgres.pids()
        return _cpu_and_rss(pids)[0]

    def baseline(self) -> None:
        """The server's own background work (its services, Postgres), with nothing attached."""
        time.sleep(10)
        self.baseline_cpu_s_per_min = self._background(self.args.idle or BASELINE_WINDOW)

    def _background(self, window: float) -> float:
        """CPU-s/min the server uses with no agents of the bench attached, over `window` seconds."""
        before, t = self._server_cpu(), time.monotonic()
        time.sleep(window)
        return (self._server_cpu() - before) / ((time.monotonic() - t) / 60)

    # --- fleets --------------------------------------------------------------------------------

    def _pool(self, system: str, pool: str) -> None:
        if system == "dagent":
            self.api.call("POST", "/work_pools/", {"name": pool, "type": "docker"})
            return
        prefect_worker_pool(self.venv, self.server.api_url, self.root, pool)

    def _agent(self, system: str, pool: str, name: str, proxy: FaultyHTTPProxy) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        if system == "dagent":
            config = self.root / f"{pool}.toml"
            if not config.exists():
                config.write_text(
                    f'source = "prefect"\nconcurrency = {CONCURRENCY}\n'
                    f'[api]\nurl = "{proxy.api_url("/api")}"\ncontainer_url = "{self.server.api_url}"\nwork_pool = "{pool}"\n'
                    '[docker]\nallow_host_network = true\nkeep_containers = "never"\n'
                )
            env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGENT_", "PREFECT_"))}
            env |= {"PYTHONPATH": str(REPO), "DAGENT_NAME": name}
            env |= dict(setting.split("=", 1) for setting in self.args.agent_env)
            argv = [sys.executable, "-m", "dagent", "start", "-c", str(config)]
        else:
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
            env |= {"PREFECT_API_URL": proxy.api_url("/api"), "PREFECT_HOME": str(self.root / "worker-home")}
            argv = [str(self.venv / "bin" / "prefect"), "worker", "start", "--pool", pool, "--type", "docker",
                    "--limit", str(CONCURRENCY), "--name", name]  # fmt: skip
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

    def _online(self, pool: str) -> int:
        workers = self.api.call("POST", f"/work_pools/{pool}/workers/filter", {"limit": 200}) or []
        return sum(1 for w in workers if w.get("status") == "ONLINE")

    def _deployment(self, pool: str, standin: bool) -> str:
        # Containers reach the server directly: the proxy counts only the agents' own requests.
        variables: dict[str, Any] = {"image": self.image, "network_mode": "host",
                                     "env": {"PREFECT_API_URL": self.server.api_url}}  # fmt: skip
        if standin:
            variables["command"] = "python3 /flows/standin.py"
        return self.api.deployment(pool, "flows.py:hello", variables)

    def point(self, system: str, n: int) -> Point:
        point = Point(system, n)
        pool = f"scale-{system}-{n}"
        self._pool(system, pool)
        proxy = FaultyHTTPProxy(self.server.api_url.removesuffix("/api"), count_all=True)
        names = [f"{pool}-{i}" for i in range(n)]
        time.sleep(10)  # the last point's agents and containers are gone
        # At least as long as the idle window it is netted against: the server's own work wanders between
        # 2-min windows (1.4 to 2.5 CPU-s/min in one run), as much as 20 idle dagent agents cost.
        # The same for both systems, so neither is netted against a shorter sample of the wander.
        window = self.args.idle or max(BASELINE_WINDOW, *IDLE_WINDOW.values())
        point.background_cpu_s_per_min = round(self._background(window), 3)
        started = time.monotonic()
        fleet = {name: self._agent(system, pool, name, proxy) for name in names}
        try:
            while self._online(pool) < n:
                if time.monotonic() - started > 300:
                    raise RuntimeError(f"{system}: only {self._online(pool)} of {n} agents online after 300 s")
                time.sleep(1)
            point.up_s = round(time.monotonic() - started, 1)
            # Idle means after start-up: dagent agents read the pool's workers twice more in their
            # first two minutes (a fleet started together is still coming ONLINE at the first).
            startup = 15.0 + (sum(ROSTER_FIRST) if system == "dagent" else 0.0)
            time.sleep(max(15.0, startup - (time.monotonic() - started)))
            if not self.args.steady_only:
                self._idle(point, proxy, fleet, self.args.idle or IDLE_WINDOW[system])
            if system == "dagent":
                # The bench's own ear on the pool's stream opens after idle: a stream is a cost of its own.
                self.ear = Ear(self.server.api_url, str(self.api.call("GET", f"/work_pools/{pool}")["id"]))
            standin = self._deployment(pool, standin=True)
            if self.args.steady_runs:
                point.steady = self._steady(standin, proxy, names=names if system == "dagent" else None)
            if self.args.steady_only:
                return point
            real = self._deployment(pool, standin=False)
            rates = self.args.rates if n == self.args.sweep_at else self.args.rates[:1]
            for rate in rates:
                point.latency[str(rate)] = self._latency(real, rate)
            # One Prefect worker takes about half a minute per 20 stand-in runs: below N = 5, a smaller burst.
            size = self.args.burst if n >= 5 else min(self.args.burst, SMALL_BURST)
            point.burst = self._burst(standin, size, proxy, names=names if system == "dagent" else None)
            if system == "dagent" and n == max(self.args.fleet) and n > 1 and self.args.kills:
                point.kills = self._burst(standin, self.args.kill_burst, proxy, fleet=fleet, pool=pool, names=names)
        finally:
            for process in fleet.values():
                process.send_signal(signal.SIGTERM)
            # One minute for the whole fleet, not each: 20 of Prefect's workers slow to stop once held
            # a finished point for a quarter of an hour.
            deadline = time.monotonic() + 60
            for process in fleet.values():
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            proxy.stop()
            if self.ear is not None:
                self.ear.close()
                self.ear = None
        return point

    def _idle(
        self, point: Point, proxy: FaultyHTTPProxy, fleet: dict[str, subprocess.Popen[bytes]], window: float
    ) -> None:
        def agents() -> tuple[float, float]:
            return _cpu_and_rss([p for process in fleet.values() for p in _tree(process.pid)])

        requests, server, (agent_cpu, _), t = len(proxy.times), self._server_cpu(), agents(), time.monotonic()
        time.sleep(window)
        minutes = (time.monotonic() - t) / 60
        agent_cpu_after, rss = agents()
        point.idle_requests_per_min = round((len(proxy.times) - requests) / minutes, 2)
        point.idle_requests_by_kind = by_kind(proxy.requests[requests:], minutes)
        background = point.background_cpu_s_per_min
        net = (self._server_cpu() - server) / minutes - (
            self.baseline_cpu_s_per_min if background is None else background
        )
        point.idle_server_cpu_s_per_min = round(net, 3)
        point.idle_agent_cpu_s_per_min = round((agent_cpu_after - agent_cpu) / minutes, 3)
        point.idle_rss_mb = round(rss, 1)

    def _latency(self, deployment: str, rate: float) -> dict[str, float]:
        """Real flows arriving every 1/rate seconds: created → container started."""
        ids, created = [], {}
        for _ in range(self.args.latency_runs):
            t = time.time()
            run_id = self.api.run(deployment)
            ids.append(run_id)
            created[run_id] = t
            time.sleep(max(0.0, t + 1 / rate - time.time()))
        self._settle(ids, 600)
        samples = [self.starts.first[r] - created[r] for r in ids if r in self.starts.first]
        if not samples:
            return {"runs": len(ids), "started": 0}
        return {"runs": len(ids), "started": len(samples), "p50_s": round(statistics.median(samples), 3),
                "p95_s": round(quantile(samples, 0.95), 3)}  # fmt: skip

    def _settle(self, ids: list[str], timeout: float) -> dict[str, int]:
        """Wait until every run is final (or the timeout); the runs' states, counted."""
        deadline = time.monotonic() + timeout
        while True:
            states = self._states(ids)
            if all(s in FINAL for s in states.values()) or time.monotonic() > deadline:
                return dict(Counter(states.values()))
            time.sleep(2)

    def _states(self, ids: list[str]) -> dict[str, str]:
        states: dict[str, str] = {}
        for i in range(0, len(ids), 200):
            chunk = ids[i : i + 200]
            body = {"flow_runs": {"id": {"any_": chunk}}, "limit": 200}
            for run in self.api.call("POST", "/flow_runs/filter", body) or []:
                states[run["id"]] = str((run.get("state") or {}).get("type"))
        return states

    def _burst(
        self,
        deployment: str,
        size: int,
        proxy: FaultyHTTPProxy,
        fleet: dict[str, subprocess.Popen[bytes]] | None = None,
        pool: str = "",
        names: list[str] | None = None,
    ) -> dict[str, Any]:
        """`size` stand-in runs made at once (8 at a time); with `fleet`, kill -9 random agents meanwhile
        (`names`: a dagent fleet's, to tell its refused claims apart by who made them)."""
        claims_before, requests_before, server_before = len(proxy.claims), len(proxy.times), self._server_cpu()
        log_before = len(proxy.claim_log)
        created = time.time()
        killer = None
        if fleet is not None:
            killer = threading.Thread(target=self._kill_some, args=(fleet, pool, proxy), daemon=True)
            killer.start()
        with ThreadPoolExecutor(8) as pool_:
            made = list(pool_.map(lambda _: (self.api.run(deployment), time.time()), range(size)))
        ids = [run_id for run_id, _ in made]
        states = self._settle(ids, 1800)
        if killer is not None:
            killer.join()
            states = self._settle(ids, 300)  # the last restarted agents adopt what their predecessors left
        time.sleep(5)
        died = [self.starts.died[r] for r in ids if r in self.starts.died]
        left = self.client.containers.list(all=True, filters={"label": "io.prefect.flow-run-id"})
        result = {
            "runs": size,
            "wall_s": round(max(died) - created, 1) if died else None,
            "states": states,
            "started_twice": sum(1 for r in ids if self.starts.starts[r] > 1),
            "never_started": sum(1 for r in ids if self.starts.starts[r] == 0),
            "stuck": sum(n for s, n in states.items() if s in ("PENDING", "RUNNING", "CANCELLING")),
            "orphans": sum(1 for c in left if c.labels.get("io.prefect.flow-run-id") in set(ids)),
            **self._claims(proxy, (claims_before, requests_before, server_before, log_before), made, names),
        }
        if fleet is not None:
            result["kills"] = self.args.kills
        return result

    def _steady(self, deployment: str, proxy: FaultyHTTPProxy, names: list[str] | None) -> dict[str, Any]:
        """Stand-in runs made one every 1/rate seconds, a rate the fleet keeps up with: created → container
        started, and the claims each run cost when no agent is short of room."""
        rate, size = self.args.steady, self.args.steady_runs
        before = (len(proxy.claims), len(proxy.times), self._server_cpu(), len(proxy.claim_log))
        made: list[tuple[str, float]] = []
        for _ in range(size):
            t = time.time()
            made.append((self.api.run(deployment), t))
            time.sleep(max(0.0, t + 1 / rate - time.time()))
        ids = [run_id for run_id, _ in made]
        states = self._settle(ids, 600)
        time.sleep(5)
        lag = sorted(self.starts.first[r] - t for r, t in made if r in self.starts.first)
        return {
            "rate": rate,
            "runs": size,
            "states": states,
            "started_twice": sum(1 for r in ids if self.starts.starts[r] > 1),
            "never_started": sum(1 for r in ids if self.starts.starts[r] == 0),
            "dispatch_p50_s": round(statistics.median(lag), 3) if lag else None,
            "dispatch_p95_s": round(quantile(lag, 0.95), 3) if lag else None,
            **self._claims(proxy, before, made, names),
        }

    def _claims(
        self,
        proxy: FaultyHTTPProxy,
        before: tuple[int, int, float, int],
        made: list[tuple[str, float]],
        names: list[str] | None,
    ) -> dict[str, Any]:
        """What the runs `made` cost in claims and requests since `before` (claims, requests, server CPU, claim log)."""
        claims_before, requests_before, server_before, log_before = before
        size = len(made)
        claims = proxy.claims[claims_before:]
        accepted = Counter(run for run, status in claims if status == "ACCEPT")
        result: dict[str, Any] = {
            "claim_attempts_per_run": round(len(claims) / size, 3),
            # PENDING proposals the server refused (ABORT, REJECT, WAIT): another agent had the run.
            "conflicts_per_run": round(sum(1 for _, status in claims if status != "ACCEPT") / size, 3),
            "claim_answers": dict(Counter(status for _, status in claims)),
            "runs_accepted_more_than_once": sum(1 for n in accepted.values() if n > 1),
            "requests_per_run": round((len(proxy.times) - requests_before) / size, 2),
            "requests_per_run_by_kind": by_kind(proxy.requests[requests_before:], size),
            "server_cpu_s_per_run": round((self._server_cpu() - server_before) / size, 4),
        }
        if names:
            result["refused_claims"] = _refused(proxy.claim_log[log_before:], names, size)
            if self.ear is not None:
                result["stream_lag"] = _stream_lag(self.ear, made, proxy.claim_log[log_before:])
            if self.args.dump_claims:
                # Every claim answer, for a closer look than the summary gives.
                dump = (
                    Path(self.args.dump_claims) / f"claims-{names[0].rsplit('-', 1)[0]}-{size}-{int(made[0][1])}.json"
                )
                dump.parent.mkdir(parents=True, exist_ok=True)
                heard = {"scheduled": self.ear.scheduled, "pending": self.ear.pending} if self.ear else {}
                answers = proxy.claim_log[log_before:]
                dump.write_text(json.dumps({"fleet": names, "created": dict(made), "claims": answers, "heard": heard}))
        return result

    def _kill_some(self, fleet: dict[str, subprocess.Popen[bytes]], pool: str, proxy: FaultyHTTPProxy) -> None:
        """kill -9 a random agent every few seconds, starting it again at once (same name)."""
        for _ in range(self.args.kills):
            time.sleep(self.random.uniform(2, 6))
            name = self.random.choice(sorted(fleet))
            fleet[name].kill()
            fleet[name].wait()
            fleet[name] = self._agent("dagent", pool, name, proxy)


# --- tables and plots ------------------------------------------------------------------------------


def _pair(points: list[dict[str, Any]], n: int) -> tuple[Point | None, Point | None]:
    found = {(p["system"], p["n"]): Point(**p) for p in points}
    return found.get(("dagent", n)), found.get(("worker", n))


def _r(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "–"


def tables(results: dict[str, Any]) -> str:
    points, fleet = results["points"], results["meta"]["fleet"]
    rows = [
        "| N | system | idle requests/min per agent | idle server CPU-s/min per agent (net) | dispatch p50 / p95 (s) "
        "| burst: runs, wall (s) | started twice / never | refused claims per run / runs accepted twice "
        "| server CPU-s per run | measured (UTC) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    meta = results["meta"]
    measured = {(r["system"], r["n"]): r["when"] for r in meta.get("remeasured", [])}
    machine = {(r["system"], r["n"]): r.get("machine", r["when"]) for r in meta.get("remeasured", [])}
    for n in fleet:
        for p in _pair(points, n):
            if p is None:
                continue
            lat = next(iter(p.latency.values()), {})
            b = p.burst
            rows.append(
                f"| {n} | {'dagent' if p.system == 'dagent' else 'Prefect worker'} "
                f"| {p.per_agent('idle_requests_per_min'):.2f} | {p.per_agent('idle_server_cpu_s_per_min'):.3f} "
                f"| {lat.get('p50_s', '–')} / {lat.get('p95_s', '–')} | {b.get('runs')}, {b.get('wall_s')} "
                f"| {b.get('started_twice')} / {b.get('never_started')} "
                f"| {b.get('conflicts_per_run')} / {b.get('runs_accepted_more_than_once')} "
                f"| {b.get('server_cpu_s_per_run')} | {measured.get((p.system, n), meta.get('when', '–'))[:16]} |"
            )
    ratios = ["", "| N | idle requests, dagent / worker | idle server CPU, dagent / worker | burst wall, dagent / worker "
              "| both on one machine |", "|---|---|---|---|---|"]  # fmt: skip
    for n in fleet:
        d, w = _pair(points, n)
        if d and w:
            # Points of different runs may come from different machines of the same kind.
            same = machine.get(("dagent", n), meta.get("machine")) == machine.get(("worker", n), meta.get("machine"))
            ratios.append(
                f"| {n} | {_r(d.idle_requests_per_min, w.idle_requests_per_min)} "
                f"| {_r(max(d.idle_server_cpu_s_per_min, 0.0), w.idle_server_cpu_s_per_min)} "
                f"| {_r(d.burst.get('wall_s'), w.burst.get('wall_s'))} | {'yes' if same else 'no'} |"
            )
    steady = ["", "Claims at a steady rate (stand-in runs one every 1/rate seconds, a rate every fleet from N = 5 keeps up with; the lone worker does not):", "",
              "| N | system | runs, rate (runs/s) | dispatch p50 / p95 (s) | started twice / never "
              "| refused claims per run | runs accepted twice | measured (UTC) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for n in fleet:
        for p in _pair(points, n):
            if p is None or not p.steady:
                continue
            st = p.steady
            steady.append(
                f"| {n} | {'dagent' if p.system == 'dagent' else 'Prefect worker'} | {st['runs']}, {st['rate']} "
                f"| {st['dispatch_p50_s']} / {st['dispatch_p95_s']} | {st['started_twice']} / {st['never_started']} "
                f"| {st['conflicts_per_run']} | {st['runs_accepted_more_than_once']} "
                f"| {st.get('when', measured.get((p.system, n), meta.get('when', '–')))[:16]} |"
            )
    if len(steady) == 5:
        steady = []
    kills = [Point(**p) for p in points if p.get("kills")]
    extra = []
    for p in kills:
        k = p.kills
        extra.append(
            f"\nkill -9 at scale: {p.n} dagent agents, {k['runs']} stand-in runs, {k['kills']} agents killed and "
            f"restarted during the burst: states {k['states']}, started twice {k['started_twice']}, never started "
            f"{k['never_started']}, stuck {k['stuck']}, orphans {k['orphans']}, wall {k['wall_s']} s, refused claims "
            f"{k['conflicts_per_run']} per run, runs accepted twice {k['runs_accepted_more_than_once']}."
        )
    return "\n".join(rows + ratios + steady + extra + parts(results) + ["", paper(results)])


def _kind(path: str) -> str:
    """A pool's request as bench/costs.py names it: /api/work_pools/{pool}/workers/filter is workers/filter."""
    _, pool, rest = path.partition("/work_pools/")
    return rest.partition("/")[2] if pool else path


def parts(results: dict[str, Any]) -> list[str]:
    """Each fleet's idle server CPU per agent computed from its parts (bench/costs.py), beside the measured."""
    measured = results.get("server_costs")
    if not measured:
        return []
    ms, stream = measured["cpu_ms_per_request"], measured["stream_cpu_s_per_min"]
    lines = [
        "", f"What idle costs the server, by part (measured alone, {measured['rounds']} rounds of {measured['window_s']:.0f} s "
        f"against windows of nothing): "
        + ", ".join(f"{kind} {v} CPU-ms" for kind, v in ms.items())
        + f"; an open event stream {stream} CPU-s/min.", "",
        "| N | system | a minute per agent, by kind | event streams per agent "
        "| idle server CPU-s/min per agent: computed from the parts / measured |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for n in results["meta"]["fleet"]:
        for p in _pair(results["points"], n):
            if p is None:
                continue
            rates = {_kind(k.split(" ", 1)[1]): v / n for k, v in p.idle_requests_by_kind.items()}
            streams = 1 if p.system == "dagent" else 0
            if p.system == "worker":
                # Its heartbeats (every 30 s) go over its worker channel, a websocket the proxy counts
                # as one request; each is a heartbeat's database work, priced here as a REST heartbeat
                # (an upper bound: no HTTP request around it).
                # It keeps no event stream: its cancellation observer is off by default.
                rates[CHANNEL] = WORKER_CHANNEL_HEARTBEATS
            price = {**ms, CHANNEL: ms.get("workers/heartbeat", 0.0)}
            computed = sum(rate * price.get(kind, 0.0) / 1000 for kind, rate in rates.items()) + streams * stream
            unknown = [k for k in rates if k not in price]
            lines.append(
                f"| {n} | {'dagent' if p.system == 'dagent' else 'Prefect worker'} "
                f"| {', '.join(f'{k} {v:.2f}' for k, v in rates.items())} | {streams} "
                f"| {computed:.3f}{' + ' + ', '.join(unknown) if unknown else ''} "
                f"/ {p.per_agent('idle_server_cpu_s_per_min'):.3f} |"
            )
    return lines


def paper(results: dict[str, Any]) -> str:
    """What 100 and 1,000 hosts would cost the server, from the largest N measured (computed, not measured)."""
    # The largest N measured for both systems, so the two are computed from the same fleet size.
    both = [n for n in results["meta"]["fleet"] if all(_pair(results["points"], n))]
    n = max(both or results["meta"]["fleet"])
    d, w = _pair(results["points"], n)
    lines = [
        f"Beyond the measured N, on paper (from N = {n}: per-agent idle cost and per-run cost, scaled linearly; "
        "one server core = 60 CPU-s/min):",
        "",
        "| hosts | system | idle requests/s | idle server cores | hosts one core serves at idle | runs/min one core serves |",
        "|---|---|---|---|---|---|",
    ]
    for hosts in (100, 1000):
        for p in (d, w):
            if p is None:
                continue
            req = p.per_agent("idle_requests_per_min") * hosts / 60
            cpu = max(p.per_agent("idle_server_cpu_s_per_min"), 1e-4)
            per_run = p.burst.get("server_cpu_s_per_run") or 0
            lines.append(
                f"| {hosts} | {'dagent' if p.system == 'dagent' else 'Prefect worker'} | {req:.1f} | {cpu * hosts / 60:.2f} "
                f"| {60 / cpu:,.0f} | {60 / per_run:,.0f} |"
                if per_run
                else "| – |"
            )
    return "\n".join(lines)


def plots(results: dict[str, Any]) -> list[Path]:
    """Server load against N, and latency against arrival rate (PNG; needs the bench extra, matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plots: pip install -e '.[bench]' for matplotlib", file=sys.stderr)
        return []
    points = [Point(**p) for p in results["points"]]
    systems = {"dagent": "dagent", "worker": "Prefect worker"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for system, label in systems.items():
        mine = sorted((p for p in points if p.system == system), key=lambda p: p.n)
        if mine:
            ns = [p.n for p in mine]
            left.plot(ns, [p.idle_requests_per_min / 60 for p in mine], "o-", label=label)
            right.plot(ns, [max(p.idle_server_cpu_s_per_min, 0.0) for p in mine], "o-", label=label)
    left.set(xlabel="agents (N)", ylabel="server requests/s at idle", title="Idle requests")
    right.set(xlabel="agents (N)", ylabel="server CPU-s per minute at idle (net)", title="Idle server CPU")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    load = RESULTS / "scale-load.png"
    fig.tight_layout()
    fig.savefig(load, dpi=100)
    fig, ax = plt.subplots(figsize=(6, 4))
    for system, label in systems.items():
        swept = [p for p in points if p.system == system and len(p.latency) > 1]
        for p in swept:
            rates = sorted(p.latency, key=float)
            got = [r for r in rates if "p50_s" in p.latency[r]]
            ax.plot([float(r) for r in got], [p.latency[r]["p50_s"] for r in got], "o-", label=f"{label} p50 (N={p.n})")
            ax.plot(
                [float(r) for r in got], [p.latency[r]["p95_s"] for r in got], "x--", label=f"{label} p95 (N={p.n})"
            )
    ax.set(xlabel="arrival rate (real flows per second)", ylabel="created → container started (s)",
           title="Dispatch latency", yscale="log")  # fmt: skip
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    latency = RESULTS / "scale-latency.png"
    fig.tight_layout()
    fig.savefig(latency, dpi=100)
    return [load, latency]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/run.py --scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="N = 1, 5; bursts of 100; short windows")
    parser.add_argument("--fleet", help="comma-separated N (default 1,5,20,40)")
    parser.add_argument(
        "--burst", type=int, help=f"stand-in runs per burst at N >= 5 (default 1000; below: {SMALL_BURST})"
    )
    parser.add_argument(
        "--idle", type=float, help="idle window in seconds (default: 300 for dagent, 90 for the worker)"
    )
    parser.add_argument(
        "--rates", help="arrival rates of real flows, runs/s (default 0.1,0.2,0.3; the first at every N)"
    )
    parser.add_argument(
        "--dump-claims", metavar="DIR", help="write the claim answers of each dagent burst and steady row there (JSON)"
    )
    parser.add_argument("--steady", type=float, default=0.5,
                        help="arrival rate of the steady row's stand-in runs, runs/s (default 0.5)")  # fmt: skip
    parser.add_argument("--steady-runs", type=int, help="stand-in runs of the steady row (default 150; 0: none)")
    parser.add_argument("--steady-only", action="store_true",
                        help="measure only the steady row; with --merge, put it into the points already there")  # fmt: skip
    parser.add_argument("--sweep-at", type=int, default=5, help="the N at which every rate is measured (default 5)")
    parser.add_argument("--latency-runs", type=int, help="real flows per arrival rate (default 8)")
    parser.add_argument("--kills", type=int, help="kill -9s of dagent agents at the largest N (default 8; 0: none)")
    parser.add_argument("--only", choices=["dagent", "worker"])
    parser.add_argument("--costs", action="store_true",
                        help="measure only what each idle request and event stream costs the server (bench/costs.py), "
                             "into scale.json; a whole --scale run measures it too")  # fmt: skip
    parser.add_argument("--agent-env", action="append", default=[], metavar="DAGENT_KEY=VALUE",
                        help="a setting for every dagent agent, e.g. DAGENT_API__EVENT_STREAM=false (repeatable)")  # fmt: skip
    parser.add_argument("--backend", choices=prefect_infra.BACKENDS, default="postgres")
    parser.add_argument("--merge", action="store_true",
                        help="put these points into bench/results/scale.json in place of the same (system, N)")  # fmt: skip
    parser.add_argument("--report", action="store_true", help="print the tables and draw the plots of scale.json")
    args = parser.parse_args(argv)
    for setting in args.agent_env:
        if not setting.startswith("DAGENT_") or "=" not in setting:
            parser.error(f"--agent-env {setting!r}: expected DAGENT_KEY=VALUE")
    if args.report:
        results = json.loads((RESULTS / "scale.json").read_text())
        print(tables(results))
        for path in plots(results):
            print(f"plot: {path.relative_to(REPO)}", file=sys.stderr)
        return 0
    args.fleet = [int(n) for n in (args.fleet or ("1,5" if args.quick else "1,5,20,40")).split(",")]
    args.burst = args.burst or (100 if args.quick else 1000)
    args.kill_burst = max(50, args.burst // 3)
    args.idle = args.idle or (20 if args.quick else None)
    args.rates = [float(r) for r in (args.rates or ("0.2" if args.quick else "0.1,0.2,0.3")).split(",")]
    args.latency_runs = args.latency_runs or (4 if args.quick else 8)
    args.steady_runs = (30 if args.quick else 150) if args.steady_runs is None else args.steady_runs
    args.merge = args.merge or args.steady_only  # a steady row alone is no point of its own
    args.kills = 3 if args.kills is None and args.quick else 8 if args.kills is None else args.kills
    started = time.time()
    with infra.docker_engine():
        scale = Scale(args)
        points: list[dict[str, Any]] = []
        try:
            if args.costs or not (args.merge or args.only):
                print(
                    "measuring what each idle request and event stream costs the server ...",
                    file=sys.stderr,
                    flush=True,
                )
                scale.costs = costs.measure(
                    scale.server.api_url, scale._server_cpu, **({"rounds": 1, "window": 10.0} if args.quick else {})
                )
                if args.costs:
                    return _costs_only(scale.costs)
            print("measuring the server alone ...", file=sys.stderr, flush=True)
            scale.baseline()
            for i, n in enumerate(args.fleet):
                # Which system goes first alternates with N: the database grows with every point, and
                # neither system should always meet the larger one.
                for system in ("dagent", "worker") if i % 2 == 0 else ("worker", "dagent"):
                    if args.only in (None, system):
                        print(f"measuring {n} × {system} ...", file=sys.stderr, flush=True)
                        points.append(asdict(scale.point(system, n)))
                        _write(args, scale, points, started)  # a long run keeps what it has measured
        finally:
            scale.close()
    results = _write(args, scale, points, started)
    print(tables(results))
    for path in plots(results):
        print(f"plot: {path.relative_to(REPO)}", file=sys.stderr)
    return 0


def _costs_only(measured: dict[str, Any]) -> int:
    out = RESULTS / "scale.json"
    results = json.loads(out.read_text()) if out.exists() else {"points": [], "meta": {"fleet": []}}
    results["server_costs"] = {**measured, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "machine": _machine()}  # fmt: skip
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(parts(results)))
    return 0


def _machine() -> str:
    """This machine's boot, as told apart from another's: points to compare must share it."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return os.uname().nodename


def _write(args: argparse.Namespace, scale: Scale, points: list[dict[str, Any]], started: float) -> dict[str, Any]:
    results = {
        "points": points,
        "meta": {
            "backend": args.backend, "fleet": [n for n in args.fleet if any(p["n"] == n for p in points)],
            "burst": args.burst, "rates": args.rates, "latency_runs": args.latency_runs,
            "idle_s": args.idle or IDLE_WINDOW, "small_burst_below_n5": SMALL_BURST,
            "concurrency": CONCURRENCY, "server_background_cpu_s_per_min": round(scale.baseline_cpu_s_per_min, 3),
            "prefect": prefect_infra.PREFECT, "prefect_docker": prefect_infra.PREFECT_DOCKER, "cpus": os.cpu_count(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "took_s": round(time.time() - started),
            "machine": _machine(), "agent_env": args.agent_env,
        },
    }  # fmt: skip
    if scale.costs:
        results["server_costs"] = {
            **scale.costs,
            "when": results["meta"]["when"],
            "machine": results["meta"]["machine"],
        }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "scale.json"
    if args.merge and out.exists():
        # Points measured again (say after a change to one system) replace theirs; the run that made
        # them is named beside the first run's meta.
        before = json.loads(out.read_text())
        if args.steady_only:
            # Only the steady row was measured: it joins the points already there, which keep the rest.
            steady = {(p["system"], p["n"]): p["steady"] for p in points}
            for p in before["points"]:
                if (p["system"], p["n"]) in steady:
                    p["steady"] = {**steady[(p["system"], p["n"])], "when": results["meta"]["when"],
                                   "machine": results["meta"]["machine"]}  # fmt: skip
            out.write_text(json.dumps(before, indent=2) + "\n")
            return before
        mine = {(p["system"], p["n"]) for p in points}
        kept = [p for p in before["points"] if (p["system"], p["n"]) not in mine]
        meta = before["meta"]
        meta["fleet"] = sorted({*meta["fleet"], *results["meta"]["fleet"]})
        again = [r for r in meta.get("remeasured", []) if (r["system"], r["n"]) not in mine]
        again += [{"system": s, "n": n, **{k: results["meta"][k] for k in ("when", "server_background_cpu_s_per_min", "machine")}}
                  for s, n in sorted(mine)]  # fmt: skip
        meta["remeasured"] = again
        order = {(s, n): i for i, (n, s) in enumerate((n, s) for n in meta["fleet"] for s in ("dagent", "worker"))}
        results = {"points": sorted(kept + points, key=lambda p: order[(p["system"], p["n"])]), "meta": meta,
                   **({"server_costs": before["server_costs"]} if "server_costs" in before else {}),
                   **({"server_costs": results["server_costs"]} if "server_costs" in results else {})}  # fmt: skip
    out.write_text(json.dumps(results, indent=2) + "\n")
    return results
