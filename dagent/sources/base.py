"""The seam between the agent loop and a control plane."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dagent.runs import RunRequest
from dagent.runtime import ContainerInfo, RunResult
from dagent.spec import Origin


@dataclass(frozen=True)
class Claim:
    """A run this agent owns now: what to run, what the source adds, and the source's own handle."""

    run: RunRequest
    origin: Origin = field(default_factory=Origin)
    handle: Any = None


class Source(Protocol):
    """What the agent loop needs from a control plane; it never knows which one it drives."""

    name: str

    def connect(self) -> None:
        """Check the control plane is there and usable; raise SourceError in one line if not."""

    def recover(self, containers: Mapping[str, ContainerInfo], live: Collection[str]) -> Sequence[Claim]:
        """At start: the runs this agent had claimed that must go on (their containers are adopted).

        Runs that cannot go on are reported by the source itself (e.g. crashed). `containers` maps
        run id to every dagent container on the daemon (check the agent label before adopting);
        `live` holds the ids of all containers the daemon has, dagent's or not.
        """

    def poll(self, limit: int) -> Sequence[Claim]:
        """Claim up to `limit` runs this agent may take (labels match); each is ours alone."""

    def starting(self, claim: Claim) -> bool:
        """Called just before the run's container is created; False: it was cancelled, never start it."""

    def started(self, claim: Claim, container_id: str) -> None:
        """Called once the container runs."""

    def report(self, claim: Claim, result: RunResult) -> None:
        """Record how the run ended; called once per claim (and idempotent if called again)."""

    def refuse(self, claim: Claim, reason: str) -> None:
        """The run could not be started (policy, bad input): record why, never run it."""

    def cancellations(self, run_ids: Sequence[str]) -> Sequence[str]:
        """Which of these runs in flight were asked to stop."""

    def watch(self, wake: Callable[[], None]) -> None:
        """Call `wake()` whenever work may be waiting, so the loop polls early (may do nothing)."""

    def heartbeat(self) -> None:
        """Tell the control plane this agent is alive."""

    def log(self, claim: Claim, level: str, message: str) -> None:
        """The agent's own line about a run, for the control plane's users (may do nothing)."""

    def close(self) -> None:
        """Release connections."""
