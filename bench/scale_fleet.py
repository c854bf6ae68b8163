"""The scale benchmark's measuring phase: one Prefect server, N agents of one system at a time, their idle
cost, dispatch latency, a steady load, a burst and (dagent) kill -9s (bench/scale.py)."""

from __future__ import annotations

import argparse
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from bench.common import REPO, by_kind, prefect_worker_pool
from bench.scale_probes import Ear, Starts, cpu_and_rss, process_tree, refused_claims, stream_lag
from dagent.sources.prefect.roster import ROSTER_FIRST
from dagent.stats import quantile
from tests.support import prefect_infra
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
        pids = process_tree(self.server.process.pid)
        if self.server.postgres is not None:
            pids += self.server.postgres.pids()
        return cpu_and_rss(pids)[0]

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
            return cpu_and_rss([p for process in fleet.values() for p in process_tree(process.pid)])

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
            result["refused_claims"] = refused_claims(proxy.claim_log[log_before:], names, size)
            if self.ear is not None:
                result["stream_lag"] = stream_lag(self.ear, made, proxy.claim_log[log_before:])
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
