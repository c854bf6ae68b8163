"""The seams: what the agent loop needs from a control plane (Source) and from a container runtime
(Runtime), and the neutral data that crosses them. Sources and runtimes import this, never each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, Protocol

from dagent.policy import VolumeFacts
from dagent.runs import RunRequest
from dagent.spec import LABEL_AGENT, ContainerSpec, Origin

if TYPE_CHECKING:
    from dagent.config import AgentConfig

Outcome = Literal["succeeded", "failed", "timed-out", "cancelled", "crashed"]


@dataclass(frozen=True)
class DaemonFacts:
    """What the daemon says of itself: where it keeps its state, and whether we share its view."""

    data_root: str | None
    """DockerRootDir from `docker info`; None when the daemon could not be asked."""
    socket_path: str | None
    """The unix socket of docker.base_url, if it is one."""
    view_error: str | None
    """Why the agent cannot vouch that it sees the daemon's filesystem; None when it checked."""


def utc_now() -> str:
    """Now, as ISO 8601 with milliseconds, in UTC."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class RunResult:
    """How one run ended."""

    run_id: str
    outcome: Outcome
    exit_code: int | None
    container_id: str | None
    started_at: str | None
    finished_at: str | None
    error: str | None = None
    why: str | None = None
    """How the container ended, in words ("was killed for running out of memory …"), for a run that failed."""
    tail: tuple[str, ...] = ()
    """The last lines of a failed container's output, secrets masked (dagent.exits)."""

    @classmethod
    def ended(
        cls,
        run_id: str,
        outcome: Outcome,
        exit_code: int | None,
        container_id: str | None,
        started_at: str,
        finished_at: str | None = None,
        error: str | None = None,
        why: str | None = None,
        tail: tuple[str, ...] = (),
    ) -> RunResult:
        """A run whose container ran and ended (or was stopped)."""
        return cls(run_id, outcome, exit_code, container_id, started_at, finished_at or utc_now(), error, why, tail)

    @classmethod
    def not_started(cls, run_id: str, outcome: Outcome, why: str) -> RunResult:
        """A run that ended before any container ran (cancelled first, say)."""
        return cls(run_id, outcome, None, None, None, utc_now(), why)

    @classmethod
    def crashed(cls, run_id: str, why: str, container_id: str | None = None) -> RunResult:
        """A run dagent could not see through; `why` is one line."""
        return cls(run_id, "crashed", None, container_id, None, utc_now(), why)


@dataclass(frozen=True)
class ContainerInfo:
    """A container this agent manages, as `dagent ps` shows it."""

    id: str
    name: str
    run_id: str
    image: str
    state: str
    exit_code: int | None
    created_at: str
    finished_at: str | None
    labels: dict[str, str]


@dataclass
class RunHandle:
    """Lets the agent cancel a run in flight: set `cancel`, then stop `container`."""

    cancel: threading.Event = field(default_factory=threading.Event)
    container: Any = None


def owned_by(info: ContainerInfo | None, agent: str) -> bool:
    """Whether a container is this agent's (its `dagent.agent` label): the one test of ownership."""
    return info is not None and info.labels.get(LABEL_AGENT) == agent


def should_remove(keep: str, outcome: str) -> bool:
    """Whether keep_containers removes a container that ended with this outcome.

    A cancelled run is the user's own stop, not a failure to inspect: on-failure removes it too.
    """
    return keep == "never" or (keep == "on-failure" and outcome in ("succeeded", "cancelled"))


@dataclass(frozen=True)
class Claim:
    """A run this agent owns now: what to run, what the source adds, and the source's own handle."""

    run: RunRequest
    origin: Origin = field(default_factory=Origin)
    handle: Any = None


class Source(Protocol):
    """What the agent loop needs from a control plane; it never knows which one it drives.

    Threads: `connect`, `recover`, `poll`, `cancellations`, `heartbeat`, `watch` and `close` are
    called from the loop thread; `starting`, `started`, `report`, `refuse` and `log` from the
    thread of the run they name (one per run, many at once), and `refuse` from the loop thread too.
    A source serialises its own shared state; `watch`'s callback may come from any thread.
    """

    name: str

    def connect(self) -> None:
        """Check the control plane is there and usable; raise SourceError in one line if not."""

    def reconfigure(self, config: AgentConfig) -> None:
        """Take a reloaded configuration's live keys (labels, docker.*): for runs claimed from now on."""

    def recover(self, containers: Mapping[str, ContainerInfo], live: Collection[str]) -> Sequence[Claim]:
        """At start: the runs this agent had claimed that must go on (their containers are adopted).

        Runs that cannot go on are reported by the source itself (e.g. crashed). `containers` maps
        run id to this agent's containers on the daemon; `live` holds the ids of all containers the
        daemon has, dagent's or not.
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


class Runtime(Protocol):
    """What the loop needs from a container runtime (DockerRuntime is one)."""

    def verify(self) -> dict[str, Any]: ...
    def ping(self) -> bool: ...
    def daemon_facts(self) -> DaemonFacts: ...
    def network_driver(self, name: str) -> str | None: ...
    def volume(self, name: str) -> VolumeFacts | None: ...
    def image_names(self, reference: str) -> tuple[str, ...] | None: ...
    def managed(self, agent: str | None = None, run_id: str | None = None) -> list[ContainerInfo]: ...
    def container_ids(self) -> frozenset[str]: ...
    def prepare(self, spec: ContainerSpec) -> None: ...
    def launch(self, spec: ContainerSpec) -> Any: ...
    def watch(
        self, spec: ContainerSpec, container: Any, handle: RunHandle | None = None, on_line: Any = None
    ) -> RunResult: ...
    def finish(self, spec: ContainerSpec, result: RunResult) -> None: ...
    def stop(self, container: Any, grace: float) -> None: ...
    def stop_id(self, container_id: str, grace: float) -> None: ...
    def remove_id(self, container_id: str) -> None: ...
    def reconfigure(self, config: AgentConfig) -> None: ...
    def gc(self, agent: str, older_than: float, busy: Collection[str] = ()) -> Iterable[ContainerInfo]: ...
