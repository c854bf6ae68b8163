"""dagent vs Prefect's own Docker worker (prefect-docker) vs no agent at all, on one machine, in one run.

    python bench/run.py            # the standard run: 30 dispatches, a burst of 12, 60 s idle
    python bench/run.py --full     # also a burst of 100
    python bench/run.py --smoke    # a few runs, to keep the harness working (numbers mean little)
    python bench/run.py --scale    # N agents against N Prefect workers on a Postgres-backed server (bench/scale.py)

Prints a markdown table and writes bench/results/latest.json. Ratios are the point; absolute times
depend on this machine. No number here is asserted anywhere: machines are noisy and shared.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker

from bench.common import REPO, by_kind, prefect_worker_pool
from dagent.stats import quantile
from tests.support import infra, prefect_infra
from tests.support.helpers import code_commit
from tests.support.prefect_api import FINAL, FaultyHTTPProxy, PrefectAPI

CONCURRENCY = 4


@dataclass
class Figures:
    """What one system measured."""

    system: str
    start_to_first_request_s: float | None = None
    idle_rss_mb: float | None = None
    idle_cpu_s_per_min: float | None = None
    idle_requests_per_min: float | None = None
    dispatch_p50_s: float | None = None
    dispatch_p95_s: float | None = None
    dispatch_samples: list[float] = field(default_factory=list)
    burst: dict[str, dict[str, float]] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    requests_per_run: float | None = None
    # method and path (ids as {id}) → requests per run in the burst, and per idle minute
    requests_by_kind: dict[str, float] = field(default_factory=dict)
    idle_requests_by_kind: dict[str, float] = field(default_factory=dict)
    # dagent on its embedded inbox (no server), idle for the same window
    idle_rss_inbox_mb: float | None = None
    # medians over the dispatch samples of where each one's time went (see Bench._breakdown)
    dispatch_breakdown: dict[str, float] = field(default_factory=dict)
    # the floor: docker-py create+start of the flow run's own container, median of 5
    create_start_p50_s: float | None = None


class ContainerEvents:
    """docker events for flow-run containers: when each run's container started and died."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.started: dict[str, float] = {}
        self.died: dict[str, float] = {}
        self._events = client.events(decode=True, filters={"type": "container", "label": "io.prefect.flow-run-id"})
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        try:
            for event in self._events:
                run_id = event.get("Actor", {}).get("Attributes", {}).get("io.prefect.flow-run-id")
                when = event.get("timeNano", 0) / 1e9
                if run_id and event.get("status") == "start":
                    self.started.setdefault(run_id, when)
                elif run_id and event.get("status") == "die":
                    self.died[run_id] = when
        except Exception:
            return

    def close(self) -> None:
        self._events.close()


class ScheduledEvents:
    """A plain subscriber to Prefect's event stream: when each flow run's Scheduled state reached a client.

    What any agent woken by the stream waits for before it can act: the server's own event delivery.
    """

    def __init__(self, api_url: str) -> None:
        import websocket

        self.seen: dict[str, float] = {}
        self._socket = websocket.create_connection(
            "ws" + api_url.removeprefix("http") + "/events/out", subprotocols=["prefect"], timeout=30
        )
        self._socket.send(json.dumps({"type": "auth", "token": None}))
        self._socket.recv()
        now = datetime.now(timezone.utc)
        since, until = now.isoformat(), (now + timedelta(days=1)).isoformat()
        event_filter = {"occurred": {"since": since, "until": until}, "event": {"prefix": ["prefect.flow-run."]}}
        self._socket.send(json.dumps({"type": "filter", "filter": event_filter}))
        self._socket.settimeout(None)
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        try:
            while True:
                message = json.loads(self._socket.recv() or "{}")
                event = message.get("event") or {}
                state = ((event.get("payload") or {}).get("validated_state") or {}).get("type")
                resource = str((event.get("resource") or {}).get("prefect.resource.id", ""))
                if state == "SCHEDULED":
                    self.seen.setdefault(resource.removeprefix("prefect.flow-run."), time.time())
        except Exception:
            return

    def close(self) -> None:
        self._socket.close()


# "run <id>: started container <c> (<image>) <s> s after its claim: judged <s> s, image <s> s, ..."
_STEPS = re.compile(r"run (\S+): started container \S+ \(.*\) [\d.]+ s after its claim: (.*)$")


def _agent_steps(log: Path) -> dict[str, dict[str, float]]:
    """run id → seconds of each step dagent's start line names."""
    steps: dict[str, dict[str, float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        found = _STEPS.search(line)
        if found:
            pairs = (part.rsplit(" ", 2) for part in found.group(2).split(", "))
            steps[found.group(1)] = {name: float(seconds) for name, seconds, _ in pairs}
    return steps


def _proc_stats(pid: int) -> tuple[float, float]:
    """(RSS in MB of the process and its children, CPU seconds used so far by them)."""
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    rss = cpu = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
            rss += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, StopIteration):
            continue
    return rss, cpu


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="dagent-bench-"))
        self.client = docker.from_env()
        self.venv = prefect_infra.prefect_venv()
        self.image = prefect_infra.flow_image()
        self.server = prefect_infra.PrefectServer(self.venv, self.root, args.backend)
        self.api = PrefectAPI(self.server.api_url)
        self.events = ContainerEvents(self.client)
        self.scheduled = ScheduledEvents(self.server.api_url)

    def close(self) -> None:
        self.scheduled.close()
        self.events.close()
        self.server.stop()

    # --- systems ---------------------------------------------------------------------------------

    def _worker_pool(self, pool: str) -> None:
        prefect_worker_pool(self.venv, self.server.api_url, self.root, pool)

    def _start(self, system: str, pool: str, proxy: FaultyHTTPProxy) -> subprocess.Popen[bytes]:
        log = (self.root / f"{system}.log").open("wb")
        if system == "dagent":
            config = self.root / "agent.toml"
            config.write_text(
                f'name = "bench"\nsource = "prefect"\nconcurrency = {CONCURRENCY}\n'
                f'[api]\nurl = "{proxy.api_url("/api")}"\ncontainer_url = "{self.server.api_url}"\nwork_pool = "{pool}"\n'
                '[docker]\nallow_host_network = true\nkeep_containers = "never"\n'
            )
            env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGENT_", "PREFECT_"))}
            # An installed dagent has its bytecode compiled by pip, as the worker's prefect has; this
            # one runs from the checkout, so compile it first rather than measure the compiler.
            compileall.compile_dir(REPO / "dagent", quiet=1)
            argv = [sys.executable, "-m", "dagent", "start", "-c", str(config)]
            return subprocess.Popen(argv, env={**env, "PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"PREFECT_API_URL": proxy.api_url("/api"), "PREFECT_HOME": str(self.root / "worker-home")}
        argv = [
            str(self.venv / "bin" / "prefect"),
            "worker",
            "start",
            "--pool",
            pool,
            "--type",
            "docker",
            "--limit",
            str(CONCURRENCY),
        ]
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

    def inbox_idle_rss(self) -> float:
        """dagent's RSS on its embedded inbox (the default source, no server) after the same idle window."""
        home = self.root / "inbox-agent"
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGENT_", "PREFECT_"))}
        argv = [sys.executable, "-m", "dagent", "start"]
        with (self.root / "dagent-inbox.log").open("wb") as log:
            process = subprocess.Popen(argv, cwd=home, env={**env, "PYTHONPATH": str(REPO)}, stdout=log,
                                       stderr=subprocess.STDOUT)  # fmt: skip
        try:
            time.sleep(10 + self.args.idle)
            if process.poll() is not None:
                raise RuntimeError(f"dagent on the inbox exited with {process.returncode}: see {log.name}")
            return round(_proc_stats(process.pid)[0], 1)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)

    def _deployment(self, pool: str) -> str:
        # Containers reach the server directly, so the proxy counts only the agent's own requests.
        job_variables = {"image": self.image, "network_mode": "host", "env": {"PREFECT_API_URL": self.server.api_url}}
        return self.api.deployment(pool, "flows.py:hello", job_variables)

    def measure(self, system: str) -> Figures:
        figures = Figures(system)
        pool = f"bench-{system}"
        if system == "worker":
            self._worker_pool(pool)
        proxy = FaultyHTTPProxy(self.server.api_url.removesuffix("/api"), count_all=True)
        started = time.time()
        process = self._start(system, pool, proxy)
        try:
            while not proxy.times and process.poll() is None and time.time() - started < 60:
                time.sleep(0.005)
            figures.start_to_first_request_s = round(proxy.times[0] - started, 3) if proxy.times else None
            # Idle: from 10 s after start (start-up done) to the end of the idle window.
            while self.api.pool(pool) is None:
                time.sleep(0.2)
            time.sleep(max(0.0, started + 10 - time.time()))
            requests_before, (_, cpu_before), idle_from = len(proxy.times), _proc_stats(process.pid), time.time()
            time.sleep(self.args.idle)
            rss, cpu_after = _proc_stats(process.pid)
            minutes = (time.time() - idle_from) / 60
            figures.idle_rss_mb = round(rss, 1)
            figures.idle_cpu_s_per_min = round((cpu_after - cpu_before) / minutes, 3)
            figures.idle_requests_per_min = round((len(proxy.times) - requests_before) / minutes, 2)
            figures.idle_requests_by_kind = by_kind(proxy.requests[requests_before:], minutes)
            deployment = self._deployment(pool)
            times = self._dispatch(deployment, self.args.runs)
            figures.dispatch_samples = [round(started - created, 3) for created, started in times.values()]
            figures.dispatch_breakdown = self._breakdown(system, times, proxy)
            figures.dispatch_p50_s = round(statistics.median(figures.dispatch_samples), 3)
            figures.dispatch_p95_s = round(quantile(figures.dispatch_samples, 0.95), 3)
            peak = [0.0]
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.is_set():
                    peak[0] = max(peak[0], _proc_stats(process.pid)[0])
                    time.sleep(0.2)

            threading.Thread(target=sample, daemon=True).start()
            count_before = len(proxy.times)
            runs_total = 0
            for size in self.args.bursts:
                figures.burst[str(size)] = self._burst(deployment, size)
                runs_total += size
            sampling.set()
            figures.peak_rss_mb = round(peak[0], 1)
            burst_requests = len(proxy.times) - count_before
            idle_share = figures.idle_requests_per_min * sum(b["wall_s"] for b in figures.burst.values()) / 60
            figures.requests_per_run = round((burst_requests - idle_share) / runs_total, 2)
            figures.requests_by_kind = by_kind(proxy.requests[count_before:], runs_total)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            proxy.stop()
        return figures

    def _dispatch(self, deployment: str, runs: int) -> dict[str, tuple[float, float]]:
        """Flow run created (scheduled now) → its container started, one at a time: run id → (created, started)."""
        times = {}
        for _ in range(runs):
            created = time.time()
            run_id = self.api.run(deployment)
            while run_id not in self.events.started:
                if time.time() - created > 120:
                    raise RuntimeError(f"flow run {run_id} got no container in 120 s")
                time.sleep(0.01)
            times[run_id] = (created, self.events.started[run_id])
            self.api.wait_state(run_id, FINAL, 180)
        return times

    def _breakdown(
        self, system: str, times: dict[str, tuple[float, float]], proxy: FaultyHTTPProxy
    ) -> dict[str, float]:
        """Medians of where each dispatch's time went.

        From outside the agent: Prefect's event delivery (this bench's own subscriber), and the
        agent's requests in that window as the proxy timed them (listing, lookups, the claim). From
        dagent's start line: judging the run (the policy and its questions to the daemon), making
        the image present, the source's last word before the start, and create+start. dagent's own
        share is the dispatch less event delivery and create+start.
        """
        rows: dict[str, list[float]] = {}
        steps = _agent_steps(self.root / f"{system}.log") if system == "dagent" else {}

        def add(name: str, value: float) -> None:
            rows.setdefault(name, []).append(value)

        for run_id, (created, started) in times.items():
            seen = self.scheduled.seen.get(run_id)
            if seen is None:
                continue
            add("event delivery", seen - created)
            window = [(m, p, a, e) for m, p, a, e in proxy.spans if seen - 1 <= a <= started]
            claims = [(a, e) for m, p, a, e in window if p.endswith(f"/flow_runs/{run_id}/set_state")]
            if claims:
                add("claim", claims[0][1] - claims[0][0])
                add("event → claim sent", claims[0][0] - seen)
            kinds = {
                "listing": lambda m, p: "get_scheduled_flow_runs" in p or p.endswith("/flow_runs/filter"),
                "lookups": lambda m, p: m == "GET" and p.startswith(("/api/deployments/", "/api/flows/")),
                "claim check": lambda m, p: p.startswith("/api/flow_run_states/"),
            }
            for name, matches in kinds.items():
                add(name, sum(e - a for m, p, a, e in window if matches(m, p)))
            add("requests before the start", sum(e - a for m, p, a, e in window))
            for name, seconds in steps.get(run_id, {}).items():
                add(name, seconds)
            ran = steps.get(run_id, {})
            if "create+start" in ran:
                add("own share", (started - created) - (seen - created) - ran["create+start"])
            if claims and ran:
                # What no step above explains: the agent's own code between the claim and the start
                # (and its reaction to the event, inside "event → claim sent").
                check = sum(e - a for m, p, a, e in window if kinds["claim check"](m, p))
                accounted = claims[0][1] - created + check + sum(ran.values())
                add("unaccounted", (started - created) - accounted)
        return {name: round(statistics.median(values), 3) for name, values in rows.items()}

    def _burst(self, deployment: str, size: int) -> dict[str, float]:
        """A batch created at once: first created → last container exited."""
        created = time.time()
        ids = [self.api.run(deployment) for _ in range(size)]
        for run_id in ids:
            self.api.wait_state(run_id, FINAL, 600)
        while not all(run_id in self.events.died for run_id in ids):
            time.sleep(0.05)
        wall = max(self.events.died[r] for r in ids) - created
        states = [self.api.state(r) for r in ids]
        return {"runs": size, "wall_s": round(wall, 2), "completed": states.count("COMPLETED")}

    def floor(self) -> Figures:
        """The same runs with no agent: docker-py create + start + wait + remove, 4 at a time."""
        figures = Figures("floor (no agent)")
        pool = "bench-floor"
        self.api.call("POST", "/work_pools/", {"name": pool, "type": "docker"})
        deployment = self.api.deployment(pool, "flows.py:hello", {})

        def start_one(run_id: str) -> None:
            self.api.set_state(run_id, "PENDING")  # what an agent's claim does
            container = self.client.containers.create(
                self.image, ["prefect", "flow-run", "execute"], detach=True, network_mode="host",
                environment={"PREFECT_API_URL": self.server.api_url, "PREFECT__FLOW_RUN_ID": run_id},
                labels={"io.prefect.flow-run-id": run_id},
            )  # fmt: skip
            container.start()
            container.wait()
            container.remove(force=True)

        for size in self.args.bursts:
            created = time.time()
            ids = [self.api.run(deployment) for _ in range(size)]
            with ThreadPoolExecutor(CONCURRENCY) as pool_:
                list(pool_.map(start_one, ids))
            while not all(r in self.events.died for r in ids):
                time.sleep(0.05)
            wall = max(self.events.died[r] for r in ids) - created
            states = [self.api.state(r) for r in ids]
            figures.burst[str(size)] = {"runs": size, "wall_s": round(wall, 2), "completed": states.count("COMPLETED")}
        # The daemon's create+start of the flow run's own container (same image, command, network and
        # labels as above): what no agent can take away from a dispatch.
        took = []
        for _ in range(5):
            t = time.time()
            container = self.client.containers.create(
                self.image, ["prefect", "flow-run", "execute"], detach=True, network_mode="host",
                environment={"PREFECT_API_URL": self.server.api_url}, labels={"dagent.bench": "floor"},
            )  # fmt: skip
            container.start()
            took.append(time.time() - t)
            container.remove(force=True)
        figures.create_start_p50_s = round(statistics.median(took), 3)
        # The bare per-container cost, a busybox-sized floor for context.
        image = infra.busybox_image()
        took = []
        for _ in range(5):
            t = time.time()
            c = self.client.containers.create(image, ["true"])
            c.start()
            c.wait()
            c.remove()
            took.append(time.time() - t)
        figures.dispatch_p50_s = round(statistics.median(took), 3)
        # What no agent on this stack can beat before its first request: Python starting and
        # importing the settings model's library and the HTTP client (median of 5).
        took = []
        for _ in range(5):
            t = time.time()
            subprocess.run([sys.executable, "-c", "import pydantic_settings, requests"], check=True)
            took.append(time.time() - t)
        figures.start_to_first_request_s = round(statistics.median(took), 3)
        return figures


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "–"


def table(results: dict[str, Any]) -> str:
    d, w, f = (Figures(**results[k]) for k in ("dagent", "worker", "floor"))
    rows = [
        "| measure | dagent | Prefect worker | dagent / worker | target |",
        "|---|---|---|---|---|",
        f"| dispatch latency p50 (s) | {d.dispatch_p50_s} | {w.dispatch_p50_s} | {_ratio(d.dispatch_p50_s, w.dispatch_p50_s)} | ≤ 0.20× |",
        f"| dispatch latency p95 (s) | {d.dispatch_p95_s} | {w.dispatch_p95_s} | {_ratio(d.dispatch_p95_s, w.dispatch_p95_s)} | |",
    ]
    for size in d.burst:
        floor_wall = f.burst.get(size, {}).get("wall_s")
        dw, ww = d.burst[size]["wall_s"], w.burst.get(size, {}).get("wall_s")
        rows.append(
            f"| burst of {size}, 4 at a time: wall (s) / vs floor {floor_wall} s | {dw} / {_ratio(dw, floor_wall)} | "
            f"{ww} / {_ratio(ww, floor_wall)} | {_ratio(dw, ww)} | dagent ≤ 1.15× floor |"
        )
    rows += [
        f"| idle RSS after 60 s (MB) | {d.idle_rss_mb} | {w.idle_rss_mb} | {_ratio(d.idle_rss_mb, w.idle_rss_mb)} | ≤ 45 MB |",
        f"| idle RSS after 60 s on the inbox, no server (MB) | {d.idle_rss_inbox_mb or '–'} | | | ≤ 45 MB |",
        f"| peak RSS in the burst (MB) | {d.peak_rss_mb} | {w.peak_rss_mb} | {_ratio(d.peak_rss_mb, w.peak_rss_mb)} | |",
        f"| process start → first API request (s); floor: Python importing pydantic-settings and requests {f.start_to_first_request_s} s | {d.start_to_first_request_s} | {w.start_to_first_request_s} | {_ratio(d.start_to_first_request_s, w.start_to_first_request_s)} | < 0.5 s |",
        f"| API requests per run (own, idle share removed) | {d.requests_per_run} | {w.requests_per_run} | {_ratio(d.requests_per_run, w.requests_per_run)} | ≤ worker |",
        f"| API requests per idle minute | {d.idle_requests_per_min} | {w.idle_requests_per_min} | {_ratio(d.idle_requests_per_min, w.idle_requests_per_min)} | ≤ worker |",
        f"| idle CPU seconds per minute | {d.idle_cpu_s_per_min} | {w.idle_cpu_s_per_min} | {_ratio(d.idle_cpu_s_per_min, w.idle_cpu_s_per_min)} | |",
        f"| floor: docker-py create+start+wait+remove, busybox (s) | | | {f.dispatch_p50_s} | |",
        f"| floor: docker-py create+start of the flow run's container (s) | | | {f.create_start_p50_s or '–'} | |",
    ]
    if d.dispatch_breakdown:
        parts = "; ".join(f"{name} {seconds}" for name, seconds in d.dispatch_breakdown.items())
        rows += ["", f"dagent's dispatch, medians in seconds: {parts}. Own share target: ≤ 0.1 s."]
    return "\n".join(rows)


def main() -> int:
    if "--scale" in sys.argv[1:]:
        from bench import scale

        return scale.main([a for a in sys.argv[1:] if a != "--scale"])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="a few runs, to keep the harness working")
    mode.add_argument("--full", action="store_true", help="also a burst of 100 runs")
    parser.add_argument("--runs", type=int, help="dispatch samples per system (default 30; smoke 3)")
    parser.add_argument("--idle", type=float, help="idle window in seconds (default 60; smoke 5)")
    parser.add_argument("--only", choices=["dagent", "worker"], help="measure one system (and the floor)")
    parser.add_argument("--backend", choices=prefect_infra.BACKENDS, default=prefect_infra.default_backend(),
                        help="the Prefect server's database (default: DAGENT_TEST_BACKEND, else postgres)")  # fmt: skip
    parser.add_argument("--scale", action="store_true", help="the fleet benchmark: see bench/scale.py")
    args = parser.parse_args()
    args.runs = args.runs or (3 if args.smoke else 30)
    args.idle = args.idle if args.idle is not None else (5 if args.smoke else 50)  # + 10 s start-up = 60 s
    args.bursts = [4] if args.smoke else ([12, 100] if args.full else [12])
    with infra.docker_engine():
        bench = Bench(args)
        try:
            results: dict[str, Any] = {}
            for system in ("dagent", "worker"):
                if args.only in (None, system):
                    print(f"measuring {system} ...", file=sys.stderr, flush=True)
                    figures = bench.measure(system)
                    if system == "dagent":
                        figures.idle_rss_inbox_mb = bench.inbox_idle_rss()
                    results[system] = asdict(figures)
            print("measuring the floor ...", file=sys.stderr, flush=True)
            results["floor"] = asdict(bench.floor())
        finally:
            bench.close()
    results["meta"] = {
        "mode": "smoke" if args.smoke else "full" if args.full else "standard",
        "backend": args.backend,
        "prefect": prefect_infra.PREFECT,
        "prefect_docker": prefect_infra.PREFECT_DOCKER,
        "concurrency": CONCURRENCY,
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": code_commit(),
    }
    out = REPO / "bench" / "results" / "latest.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if not args.smoke:  # a dated copy, which documents cite: latest.json is overwritten by the next run
        (out.parent / f"run-{results['meta']['mode']}-{time.strftime('%Y-%m-%d', time.gmtime())}.json").write_text(
            out.read_text()
        )
    for system in ("dagent", "worker"):
        results.setdefault(system, asdict(Figures(system)))
    print(table(results))
    for system in ("dagent", "worker"):
        kinds = results[system].get("requests_by_kind") or {}
        if kinds:
            print(f"\n{system}, API requests per run in the burst: " + ", ".join(f"{k} {v}" for k, v in kinds.items()))
    print(f"\nwritten to {out.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
