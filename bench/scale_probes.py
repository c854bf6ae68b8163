"""What a scale point is measured with besides the systems themselves: processes' CPU and memory, the
starts file the runs append to, an ear on the event stream, and the claims Prefect refused (bench/scale.py)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import docker

from dagent.sources.prefect.claims import claimer
from dagent.sources.prefect.events import StateEventWatcher
from dagent.sources.prefect.fleet import position
from dagent.stats import quantile


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return pids


def cpu_and_rss(pids: list[int]) -> tuple[float, float]:
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


def refused_claims(log: list[tuple[float, str, str, str]], names: list[str], size: int) -> dict[str, Any]:
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


def stream_lag(ear: Ear, made: list[tuple[str, float]], log: list[tuple[float, str, str, str]]) -> dict[str, Any]:
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


def machine_id() -> str:
    """This machine's boot, as told apart from another's: points to compare must share it."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return os.uname().nodename
