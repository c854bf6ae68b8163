"""The agent's own containers after their runs are reported: keep_containers at a restart, leftovers
that were still running then, and docker.keep_for's retention."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

from dagent.config import AgentConfig
from dagent.contracts import ContainerInfo, Runtime, should_remove
from dagent.errors import DagentError, one_line
from dagent.metrics import Metrics
from dagent.spec import LABEL_KEEP

log = logging.getLogger("dagent.agent")

_ALIVE = ("running", "restarting", "paused")


class Cleanup:
    """Removes what keep_containers and keep_for say to; called from the agent's loop thread only."""

    def __init__(self, runtime: Runtime, metrics: Metrics) -> None:
        self.runtime = runtime
        self.metrics = metrics
        # Containers of reported runs that were still running at start-up (a flow engine reports its
        # run's end a moment before its process exits): cleaned once they have exited.
        self.leftovers: set[str] = set()
        self._last_expiry = time.monotonic()  # the first sweep a while after start-up, not during it

    def orphan(self, config: AgentConfig, info: ContainerInfo) -> None:
        """A container whose run was already reported: apply keep_containers to it."""
        if info.state in _ALIVE:
            log.info("container %s of reported run %s still runs; cleaning it up once it exits", info.name, info.run_id)
            self.leftovers.add(info.id)
            return
        outcome = "succeeded" if info.exit_code == 0 else "failed"
        keep = info.labels.get(LABEL_KEEP, config.docker.keep_containers)
        if should_remove(keep, outcome):
            log.info("removing container %s of reported run %s", info.name, info.run_id)
            self.runtime.remove_id(info.id)

    def exited_leftovers(self, config: AgentConfig) -> None:
        """Apply keep_containers to leftovers that have exited since (one list request a turn, while any)."""
        if not self.leftovers:
            return
        try:
            containers = {c.id: c for c in self.runtime.managed(config.name)}
        except DagentError as e:
            log.debug("could not look at leftover containers: %s", one_line(e))
            return
        for container_id in list(self.leftovers):
            info = containers.get(container_id)
            if info is None or info.state not in _ALIVE:
                self.leftovers.discard(container_id)
                if info is not None:
                    self.orphan(config, info)

    def expire(self, config: AgentConfig, busy: Collection[str]) -> None:
        """docker.keep_for: remove kept containers that ended longer ago than that (a minute's sweep at most).

        `busy`: run ids in flight, whose containers are not yet the agent's to remove.
        """
        keep_for = config.docker.keep_for
        now = time.monotonic()
        if keep_for is None or now - self._last_expiry < min(60.0, max(1.0, keep_for / 4)):
            return
        self._last_expiry = now
        try:
            for info in self.runtime.gc(config.name, keep_for, busy):
                self.metrics.containers_expired.inc()
                log.info("removed kept container %s of run %s: ended over %s ago (docker.keep_for)",
                         info.name, info.run_id, _age(keep_for))  # fmt: skip
        except DagentError as e:
            log.warning("could not remove expired containers: %s", one_line(e))


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
