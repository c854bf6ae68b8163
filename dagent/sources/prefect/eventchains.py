"""The events a worker of the pool emits, as Prefect's Docker worker does: its start and stop, and
for each run a chain (submitted, container created and running, container exited, executed), each
event following the one before it. The chains are this object's, under its own lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from dagent import __version__
from dagent.contracts import RunResult
from dagent.sources.prefect.client import PrefectClient
from dagent.sources.prefect.worker_events import (
    EventSender,
    Resource,
    as_role,
    container_resource,
    executed_related,
    pool_related,
    worker_resource,
)


@dataclass
class _Chain:
    """One run's event chain: its related resources, then each event's id as it is sent."""

    related: list[Resource]
    run_name: str
    adopted: bool = False  # resumed after a restart: its submission and container were said before
    submitted: str | None = None
    container: Resource | None = None
    last: str | None = None


class WorkerEvents:
    """This agent's events, sent in batches through `/events` (none at all when `send` is off)."""

    def __init__(self, client: PrefectClient, worker: str, hostname: str, send: bool) -> None:
        self._sender = EventSender(client) if send else None
        self._me: Resource = worker_resource(worker, "dagent-" + __version__)
        self._hostname = hostname
        self._lock = threading.Lock()
        self._chains: dict[str, _Chain] = {}
        self._started: str | None = None
        self._pool: list[Resource] = []

    @property
    def sender(self) -> EventSender | None:
        """The batch sender (None when events are off)."""
        return self._sender

    def _emit(self, name: str, resource: Resource, related: list[Resource], follows: str | None = None) -> str | None:
        return None if self._sender is None else self._sender.emit(name, resource, related, follows)

    def started(self, pool_id: str, pool_name: str) -> None:
        """The worker started serving the pool."""
        self._pool = pool_related(pool_id, pool_name)
        self._started = self._emit("prefect.worker.started", self._me, self._pool)

    def begin(self, run_id: str, related: list[Resource], run_name: str) -> None:
        """A run was claimed (or resumed): its chain starts."""
        with self._lock:
            self._chains[run_id] = _Chain(related, run_name)

    def adopted(self, run_id: str) -> None:
        """The run was resumed after a restart: what the agent that started it said is not said again."""
        with self._lock:
            if (chain := self._chains.get(run_id)) is not None:
                chain.adopted = True

    def forget(self, run_id: str) -> None:
        """The run was refused: nothing more is said of it."""
        with self._lock:
            self._chains.pop(run_id, None)

    def submitted(self, run_id: str) -> None:
        """The run is about to start (the worker's submitted-flow-run)."""
        with self._lock:
            chain = self._chains.get(run_id)
        if chain is not None and chain.submitted is None and not chain.adopted:
            chain.submitted = self._emit("prefect.worker.submitted-flow-run", self._me, chain.related)

    def container_up(self, run_id: str, container_id: str) -> None:
        """The run's container was created and is running."""
        with self._lock:
            chain = self._chains.get(run_id)
        if chain is None:
            return
        chain.container = container_resource(container_id, chain.run_name)
        if chain.adopted:
            return  # its created and running were said by the agent that started it, before a restart
        related = [*chain.related, as_role(self._me, "worker")]
        created = self._emit("prefect.docker.container.created", chain.container, related)
        chain.last = self._emit("prefect.docker.container.running", chain.container, related, created)

    def ended(self, run_id: str, result: RunResult) -> None:
        """The container's end and the run's execution, as the worker says them; a container that never
        came to be after the run was submitted is creation-failed, and then nothing was executed."""
        with self._lock:
            chain = self._chains.pop(run_id, None)
        if chain is None:
            return
        if chain.container is None or not result.container_id:
            if chain.submitted is not None:
                self._emit("prefect.docker.container.creation-failed", self._me, chain.related)
            return
        related = [*chain.related, as_role(self._me, "worker")]
        self._emit("prefect.docker.container.exited", chain.container, related, chain.last)
        pid = f"{self._hostname}:{result.container_id}"
        self._emit("prefect.worker.executed-flow-run", self._me,
                   executed_related(chain.related, pid, result.exit_code), chain.submitted)  # fmt: skip

    def close(self) -> None:
        """Say the worker stopped, and send what is queued."""
        if self._sender is None:
            return
        if self._started is not None:
            self._emit("prefect.worker.stopped", self._me, self._pool, self._started)
        self._sender.close()
