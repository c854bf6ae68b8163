"""The events Prefect's Docker worker emits, made the same way (pure builders), and sent in batches.

Automations, a run's event feed and the worker's page in Prefect's UI read these: the worker
itself (started, stopped), each run it submits and executes, and each run's container (created,
running, exited, or creation-failed). Names, resources, related resources and `follows` chains are
those of prefect-docker 0.7.4's worker (../shared notes; checked against it by tests). They go to
`POST /events` from one thread, in batches: an idle agent sends none.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from dagent.sources.prefect.batches import BatchSender
from dagent.sources.prefect.client import PrefectClient

Resource = dict[str, str]
# Prefect's server refuses an event with more than 100 related resources (and with it the whole batch).
MAX_TAGS = 90


def slug(name: str) -> str:
    """A worker name as Prefect slugifies it for the worker's resource id (lower case, runs of others as -)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def worker_resource(name: str, version: str) -> Resource:
    """The worker's own resource: `prefect.worker.docker.<slug>`."""
    return {
        "prefect.resource.id": f"prefect.worker.docker.{slug(name)}",
        "prefect.resource.name": name,
        "prefect.version": version,
        "prefect.worker-type": "docker",
    }


def pool_related(pool_id: str, pool_name: str) -> list[Resource]:
    """The work pool as a related resource (what started and stopped carry)."""
    if not pool_id:
        return []
    return [{"prefect.resource.id": f"prefect.work-pool.{pool_id}", "prefect.resource.role": "work-pool",
             "prefect.resource.name": pool_name}]  # fmt: skip


def run_related(
    flow_run: Mapping[str, Any],
    deployment: Mapping[str, Any] | None,
    flow: Mapping[str, Any] | None,
    pool_id: str,
    pool_name: str,
) -> list[Resource]:
    """R(run): the deployment, the flow, the flow run, each tag (sorted), the work pool, in the worker's order."""
    related: list[Resource] = []
    tags: set[str] = set()
    for kind, obj in (("deployment", deployment), ("flow", flow), ("flow-run", flow_run)):
        if not obj or not obj.get("id"):
            continue
        given = obj.get("tags")
        if isinstance(given, list):
            tags.update(str(tag) for tag in given)
        related.append({"prefect.resource.id": f"prefect.{kind}.{obj['id']}", "prefect.resource.role": kind,
                        "prefect.resource.name": str(obj.get("name") or "")})  # fmt: skip
    # The server takes at most 100 related resources an event (the worker's own role added later).
    kept = sorted(tags)[:MAX_TAGS]
    related += [{"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"} for tag in kept]
    return related + pool_related(pool_id, pool_name)


def container_resource(container_id: str, name: str) -> Resource:
    """A run's container; named, as the worker's container is, after the flow run."""
    return {"prefect.resource.id": f"prefect.docker.container.{container_id}", "prefect.resource.name": name}


def as_role(resource: Resource, role: str) -> Resource:
    """A resource as a related resource of another event."""
    return {**resource, "prefect.resource.role": role}


def executed_related(related: list[Resource], infrastructure_pid: str, status_code: int | None) -> list[Resource]:
    """R(run), the flow-run entry carrying where it ran and its container's exit code."""
    found = []
    for resource in related:
        if resource.get("prefect.resource.role") == "flow-run":
            # The worker's -1 for a container whose exit code could not be read.
            code = -1 if status_code is None else status_code
            resource = {**resource, "prefect.infrastructure.identifier": infrastructure_pid,
                        "prefect.infrastructure.status-code": str(code)}  # fmt: skip
        found.append(resource)
    return found


def event(name: str, resource: Resource, related: list[Resource], follows: str | None = None) -> dict[str, Any]:
    """One event as `POST /events` takes it; its `id` is what a later event `follows`."""
    return {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(timezone.utc).isoformat(),
        "event": name,
        "resource": resource,
        "related": related,
        "payload": {},
        "follows": follows,
    }


class EventSender(BatchSender):
    """Queues events and sends them in one `POST /events` a second while there are any."""

    INTERVAL = 1.0

    def __init__(self, client: PrefectClient) -> None:
        super().__init__(client, "/events", "events")

    def emit(self, name: str, resource: Resource, related: list[Resource], follows: str | None = None) -> str:
        """Queue one event; its id, for the next event of its chain to follow."""
        made = event(name, resource, related, follows)
        self.queue(made)
        return str(made["id"])
