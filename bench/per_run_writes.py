"""What the worker's per-run writes cost a PostgreSQL-backed Prefect server: flow-run labels and events.

Prefect's worker gives each flow run its `prefect.worker.*` labels (a request and a database write of
their own) and emits a run's events; dagent now does both (issue 28). Each kind is sent alone at a
steady rate, in rounds interleaved with windows of nothing, and priced in server CPU-ms per request
against the `infrastructure_pid` PATCH every run already costs. One command, about 6 minutes:

    python -m bench.per_run_writes        # writes bench/results/per-run-writes-<date>.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.costs import paced
from bench.scale_probes import cpu_and_rss, machine_id, process_tree
from dagent.config import AgentConfig
from dagent.sources.prefect.client import PrefectClient
from dagent.sources.prefect.worker_events import (
    as_role,
    container_resource,
    event,
    executed_related,
    run_related,
    worker_resource,
)
from tests.support import prefect_infra

RESULTS = Path(__file__).parent / "results"
RUNS = 200


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--window", type=float, default=40.0, help="seconds of each kind per round")
    parser.add_argument("--rate", type=float, default=5.0, help="requests a second")
    args = parser.parse_args()
    server = prefect_infra.PrefectServer(prefect_infra.prefect_venv(), Path(tempfile.mkdtemp(prefix="per-run-")))
    try:
        result = _measure(server, args.rounds, args.window, args.rate)
    finally:
        server.stop()
    out = RESULTS / f"per-run-writes-{time.strftime('%Y-%m-%d', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["cpu_ms_per_request"], indent=2))
    print(f"written to {out.relative_to(RESULTS.parent.parent)}", file=sys.stderr)
    return 0


def _measure(server: prefect_infra.PrefectServer, rounds: int, window: float, rate: float) -> dict[str, Any]:
    api = PrefectClient(AgentConfig.model_validate({"source": "prefect", "api": {"url": server.api_url}}))
    pool = api.call("POST", "/work_pools/", {"name": "per-run-writes", "type": "docker"})
    flow = api.call("POST", "/flows/", {"name": "per-run-writes"})
    runs = [api.call("POST", "/flow_runs/", {"flow_id": flow["id"], "name": f"run-{i}", "tags": ["t"]})
            for i in range(RUNS)]  # fmt: skip
    me = worker_resource("host-1", "dagent-bench")

    def labels(i: int) -> Any:
        body = {"prefect.worker.name": "host-1", "prefect.worker.type": "docker",
                "prefect.work-pool.name": pool["name"], "prefect.work-pool.id": pool["id"]}  # fmt: skip
        return api.call("PATCH", f"/flow_runs/{runs[i % RUNS]['id']}/labels", body)

    def events(i: int) -> Any:
        run = runs[i % RUNS]
        related = run_related(run, None, flow, pool["id"], pool["name"])
        container = container_resource(f"{i:064x}", run["name"])
        with_worker = [*related, as_role(me, "worker")]
        batch = [event("prefect.worker.submitted-flow-run", me, related),
                 event("prefect.docker.container.created", container, with_worker),
                 event("prefect.docker.container.running", container, with_worker),
                 event("prefect.docker.container.exited", container, with_worker),
                 event("prefect.worker.executed-flow-run", me, executed_related(related, f"h:{i}", 0))]  # fmt: skip
        return api.call("POST", "/events", batch)

    def infrastructure_pid(i: int) -> Any:
        return api.call("PATCH", f"/flow_runs/{runs[i % RUNS]['id']}", {"infrastructure_pid": f"host-1:{i:064x}"})

    kinds: dict[str, Callable[[int], Any]] = {
        "infrastructure_pid (every run already)": infrastructure_pid,
        "flow_runs/labels (one request a run)": labels,
        "events (a run's five, one batch)": events,
    }

    def cpu() -> float:
        pids = process_tree(server.process.pid) + (server.postgres.pids() if server.postgres is not None else [])
        return cpu_and_rss(pids)[0]

    def idle() -> float:
        before, t = cpu(), time.monotonic()
        time.sleep(window)
        return (cpu() - before) / (time.monotonic() - t)

    for request in kinds.values():
        request(0)  # the first write of each kind makes what the rest update
    per_request: dict[str, list[float]] = {kind: [] for kind in kinds}
    background: list[float] = []
    for _ in range(rounds):
        rate_idle = idle()
        background.append(rate_idle * 60)
        for kind, request in kinds.items():
            used, sent, seconds = paced(request, rate, window, cpu)
            per_request[kind].append((used - rate_idle * seconds) / max(sent, 1) * 1000)
    return {
        "cpu_ms_per_request": {k: round(statistics.median(v), 1) for k, v in per_request.items()},
        "each_round": {k: [round(x, 1) for x in v] for k, v in per_request.items()},
        "background_cpu_s_per_min": [round(b, 3) for b in background],
        "rounds": rounds, "window_s": window, "rate_per_s": rate, "backend": server.backend,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine_id(),
    }  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
