"""One run, now: the source `dagent run` drives the agent with, so a run file runs one way only."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence

from dagent.config import AgentConfig
from dagent.contracts import Claim, ContainerInfo, RunResult
from dagent.runs import RunRequest
from dagent.spec import Origin


class OneShotSource:
    """Hands out one run, once; `cancel()` (a signal, Ctrl-C) asks for it to stop."""

    name = "run"

    def __init__(self, run: RunRequest) -> None:
        self.run = run
        self.result: RunResult | None = None
        self.refused: str | None = None
        self._given = False
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Stop the run: before it starts it never will; once started its container is stopped."""
        self._cancel.set()

    def reconfigure(self, config: AgentConfig) -> None:
        """Nothing to take: one run, already judged."""

    def connect(self) -> None:
        """Nothing to connect to."""

    def recover(self, containers: Mapping[str, ContainerInfo], live: Collection[str]) -> Sequence[Claim]:
        """Nothing to recover: a one-shot run starts fresh (an existing container is adopted on create)."""
        return []

    def poll(self, limit: int) -> Sequence[Claim]:
        """The run, the first time; nothing after."""
        if self._given or limit < 1:
            return []
        self._given = True
        # A run file is labelled an inbox run whether dropped in the inbox or applied with `dagent run`.
        return [Claim(self.run, Origin(source="inbox"), self.run.id)]

    def starting(self, claim: Claim) -> bool:
        """False once cancelled."""
        return not self._cancel.is_set()

    def started(self, claim: Claim, container_id: str) -> None:
        """Nothing to record."""

    def report(self, claim: Claim, result: RunResult) -> None:
        """Keep the result for the command to print."""
        self.result = self.result or result

    def refuse(self, claim: Claim, reason: str) -> None:
        """Keep the reason for the command to raise."""
        self.refused = reason

    def cancellations(self, run_ids: Sequence[str]) -> Sequence[str]:
        """The run, once cancel() was called."""
        return list(run_ids) if self._cancel.is_set() else []

    def watch(self, wake: Callable[[], None]) -> None:
        """Nothing to watch."""

    def heartbeat(self) -> None:
        """No one to tell."""

    def log(self, claim: Claim, level: str, message: str) -> None:
        """The agent's own log has it."""

    def close(self) -> None:
        """Nothing to release."""
