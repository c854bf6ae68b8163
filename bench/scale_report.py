"""The scale benchmark's reporting phase: tables, the server's cost by part, the paper summary and plots,
from bench/results/scale.json (bench/scale.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench.scale_fleet import CHANNEL, RESULTS, WORKER_CHANNEL_HEARTBEATS, Point


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
