"""What each thing an idle agent does costs the Prefect server in CPU: per request kind, and per open event stream.

The idle rows of `--scale` measure a whole fleet against the server's own background work, a small
difference of two noisy numbers. Here each part is measured alone, at a rate that dwarfs the
background, in rounds that interleave a window of each part with a window of nothing, so that the
idle figures can be checked against their parts (and a change aimed at one part can be judged by it).
The requests are dagent's own, with its bodies; the stream subscribers are dagent's watcher.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from dagent.config import AgentConfig
from dagent.sources.prefect.client import PrefectClient
from dagent.sources.prefect.events import StateEventWatcher

POOL = "server-costs"
NAMES = 20  # heartbeats cycle over this many worker names, as a fleet's would
SUBSCRIBERS = 100  # enough open streams to stand out of the background


def _requests(api: PrefectClient) -> dict[str, Callable[[int], Any]]:
    """Each idle request dagent makes, as it makes it (see dagent/sources/prefect): its client, its bodies."""

    def heartbeat(i: int) -> Any:
        body = {"name": f"cost-{i % NAMES}", "heartbeat_interval_seconds": 120}
        return api.call("POST", f"/work_pools/{POOL}/workers/heartbeat", body)

    def scheduled(i: int) -> Any:
        before = datetime.now(timezone.utc) + timedelta(seconds=15)
        return api.call("POST", f"/work_pools/{POOL}/get_scheduled_flow_runs",
                        {"scheduled_before": before.isoformat(), "limit": 10})  # fmt: skip

    def roster(i: int) -> Any:
        return api.call("POST", f"/work_pools/{POOL}/workers/filter", {"limit": 200})

    return {"workers/heartbeat": heartbeat, "get_scheduled_flow_runs": scheduled, "workers/filter": roster}


def paced(
    request: Callable[[int], Any], rate: float, window: float, cpu: Callable[[], float]
) -> tuple[float, int, float]:
    """Send `rate` requests a second from a thread of their own; over a `window` that opens once they
    are under way: (CPU-s used by `cpu()`'s processes, requests sent, seconds measured)."""
    done, stop = 0, threading.Event()

    def send() -> None:
        nonlocal done
        start = time.monotonic()
        while not stop.is_set():
            request(done)
            done += 1
            stop.wait(max(0.0, start + done / rate - time.monotonic()))

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(2)  # under way before the window opens
    before, sent, t = cpu(), done, time.monotonic()
    time.sleep(window)
    used, sent, seconds = cpu() - before, done - sent, time.monotonic() - t
    stop.set()
    sender.join()
    return used, sent, seconds


def measure(api_url: str, cpu: Callable[[], float], rounds: int = 3, window: float = 40.0,
            rate: float = 5.0) -> dict[str, Any]:  # fmt: skip
    """CPU-ms per request of each kind and CPU-s/min per open stream, each the median over `rounds`."""
    api = PrefectClient(AgentConfig.model_validate({"source": "prefect", "api": {"url": api_url}}))
    api.call("POST", "/work_pools/", {"name": POOL, "type": "docker"})
    pool_id = str(api.call("GET", f"/work_pools/{POOL}")["id"])
    kinds = _requests(api)
    for request in kinds.values():  # the first of each creates what the rest update
        for i in range(NAMES):
            request(i)

    def per_min(seconds: float) -> float:
        before, t = cpu(), time.monotonic()
        time.sleep(seconds)
        return (cpu() - before) / ((time.monotonic() - t) / 60)

    def paced_rate(request: Callable[[int], Any]) -> tuple[float, float]:
        """(CPU-s/min, requests/min) while sending `rate` requests a second."""
        used, sent, seconds = paced(request, rate, window, cpu)
        return used / (seconds / 60), sent / (seconds / 60)

    def streams() -> tuple[float, int]:
        """(CPU-s/min, streams open) with SUBSCRIBERS idle streams, once all are up."""
        watchers = [StateEventWatcher(api_url, pool_id, None, lambda *_: None) for _ in range(SUBSCRIBERS)]
        for w in watchers:
            w.start()
        deadline = time.monotonic() + 30
        while not all(w.connected for w in watchers) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # their subscriptions settle
        try:
            return per_min(window), sum(w.connected for w in watchers)
        finally:
            for w in watchers:
                w.stop()
            for w in watchers:
                w.thread.join(timeout=5)

    nothing: list[float] = []
    per_request: dict[str, list[float]] = {kind: [] for kind in kinds}
    per_stream: list[float] = []
    for _ in range(rounds):
        background = per_min(window)
        nothing.append(background)
        for kind, request in kinds.items():
            used, sent = paced_rate(request)
            per_request[kind].append((used - background) / sent * 1000)
        used, open_ = streams()
        per_stream.append((used - background) / max(open_, 1))
        time.sleep(3)  # the closed streams' last work falls in no window
    return {
        "cpu_ms_per_request": {k: round(statistics.median(v), 1) for k, v in per_request.items()},
        "stream_cpu_s_per_min": round(statistics.median(per_stream), 4),
        "background_cpu_s_per_min": [round(b, 3) for b in nothing],
        "rounds": rounds, "window_s": window, "rate_per_s": rate, "subscribers": SUBSCRIBERS,
    }  # fmt: skip
