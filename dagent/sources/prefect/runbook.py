"""What the Prefect source knows of the runs it has claimed, shared by the loop, the run threads and the
event stream: one object, one lock (a Condition: a run's thread may wait to hear the engine's last word).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence


class RunBook:
    """This agent's claimed runs: the state last heard of each, and the marks its steps leave."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._mine: set[str] = set()
        self._heard: dict[str, str] = {}  # run id → its latest state type, as the event stream said
        self._abandoned: set[str] = set()  # claims cancelled before they started: nothing to report
        self._fresh: set[str] = set()  # runs this process claimed, not yet started: their state is our Pending
        self._cancel_confirmed: set[str] = set()  # CANCELLING heard and borne out by the run's state

    def track(self, run_id: str, mine: bool, fresh: bool = False) -> None:
        """Start following a run just claimed (`fresh`: by this process, now), or forget it entirely."""
        with self._lock:
            self._heard.pop(run_id, None)
            if mine:
                self._mine.add(run_id)
                if fresh:
                    self._fresh.add(run_id)
            else:
                self._mine.discard(run_id)
                self._fresh.discard(run_id)
                self._cancel_confirmed.discard(run_id)

    def hear(self, run_id: str, state: str) -> None:
        """The event stream says a run of ours went to `state` (others' runs are not kept)."""
        with self._lock:
            if run_id in self._mine:
                self._heard[run_id] = state
                self._lock.notify_all()

    def wait_heard(self, run_id: str, states: Collection[str], timeout: float) -> str | None:
        """The state heard of the run once it is one of `states`, waiting up to `timeout`; None if not."""
        with self._lock:
            if timeout > 0:
                self._lock.wait_for(lambda: self._heard.get(run_id) in states, timeout=timeout)
            heard = self._heard.get(run_id)
        return heard if heard in states else None

    def take_fresh(self, run_id: str) -> bool:
        """Whether this process claimed the run and has not started it yet (true once)."""
        with self._lock:
            fresh = run_id in self._fresh
            self._fresh.discard(run_id)
        return fresh

    def abandon(self, run_id: str) -> None:
        """The run ends without a word of ours (cancelled before it started, or another's now)."""
        with self._lock:
            self._abandoned.add(run_id)

    def take_abandoned(self, run_id: str) -> bool:
        """Whether the run was abandoned (true once)."""
        with self._lock:
            abandoned = run_id in self._abandoned
            self._abandoned.discard(run_id)
        return abandoned

    def cancelling(self, run_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """Of `run_ids`, those heard CANCELLING, and of them those whose state was not read yet."""
        with self._lock:
            heard = [r for r in run_ids if self._heard.get(r) == "CANCELLING"]
            return heard, [r for r in heard if r not in self._cancel_confirmed]

    def confirm_cancelling(self, confirmed: Collection[str], heard: Sequence[str]) -> list[str]:
        """Record runs whose state bore out their CANCELLING; of `heard`, those confirmed by now."""
        with self._lock:
            self._cancel_confirmed.update(confirmed)
            return [r for r in heard if r in self._cancel_confirmed]

    def unhear_cancelling(self, run_id: str, actual: str) -> None:
        """A CANCELLING event the run's state does not bear out: keep what the state says instead."""
        with self._lock:
            if self._heard.get(run_id) == "CANCELLING":
                self._heard[run_id] = actual
