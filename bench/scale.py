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
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Any

from bench import costs
from bench.common import REPO
from bench.scale_fleet import CONCURRENCY, IDLE_WINDOW, RESULTS, SMALL_BURST, Scale
from bench.scale_probes import machine_id
from bench.scale_report import parts, plots, tables
from tests.support import infra, prefect_infra


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
                               "machine": machine_id()}  # fmt: skip
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(parts(results)))
    return 0


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
            "machine": machine_id(), "agent_env": args.agent_env,
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
