"""What a run's job configuration needs from the API besides the run: its deployment (read again after
DEPLOYMENT_TTL, so an edited deployment is seen without a restart), its flow's name, and the Prefect
variables and blocks its template refers to. Safe to call from any thread."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from dagent.errors import RunFileError, SourceError, SourceUnavailable, one_line
from dagent.sources.prefect import template
from dagent.sources.prefect.client import PrefectClient, path_id

# Names of Prefect variables, block types and blocks as they may appear in a URL path (no `/`, no `..`).
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,200}")

# A deployment read this long ago is read again: an edited deployment is seen without a restart.
DEPLOYMENT_TTL = 30.0


class Lookups:
    """Deployments, flow names, variables and blocks, read through one client and cached where they keep."""

    def __init__(self, client: PrefectClient) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._deployments: dict[str, tuple[float, dict[str, Any] | None]] = {}  # id → (read at, it)
        self._flows: dict[str, dict[str, Any] | None] = {}  # a flow's name never changes

    def deployment(self, deployment_id: Any) -> dict[str, Any] | None:
        """The run's deployment, read again when the copy kept is older than DEPLOYMENT_TTL."""
        if deployment_id is None:
            return None
        deployment_id = _run_id(deployment_id, "deployment_id")
        with self._lock:
            kept = self._deployments.get(deployment_id)
        if kept is not None and time.monotonic() - kept[0] < DEPLOYMENT_TTL:
            return kept[1]
        answer = _ask(self.client, f"/deployments/{deployment_id}", "its deployment")
        deployment = answer if isinstance(answer, dict) else None
        with self._lock:
            self._deployments[deployment_id] = (time.monotonic(), deployment)
        return deployment

    def flow(self, flow_id: Any) -> dict[str, Any] | None:
        """The run's flow (its id, name and tags), read once: a flow's name never changes."""
        if flow_id is None:
            return None
        flow_id = _run_id(flow_id, "flow_id")
        with self._lock:
            if flow_id in self._flows:
                return self._flows[flow_id]
        answer = _ask(self.client, f"/flows/{flow_id}", "its flow")
        flow = {k: answer.get(k) for k in ("id", "name", "tags")} if isinstance(answer, dict) else None
        with self._lock:
            self._flows[flow_id] = flow
        return flow

    def flow_name(self, flow_id: Any) -> str | None:
        flow = self.flow(flow_id)
        name = flow.get("name") if flow else None
        return name if isinstance(name, str) else None

    def reference(self, name: str) -> Any:
        """A `prefect.variables.NAME` or `prefect.blocks.TYPE.NAME[.KEY…]` placeholder's value, from the API.

        RunFileError when the run's reference is bad or the API refuses it (a 4xx): that run's problem.
        """
        origin = f"job configuration: {{{{ {name} }}}}"
        if name.startswith(template.BLOCK_ID_PREFIX):
            block_id = _run_id(name.removeprefix(template.BLOCK_ID_PREFIX), "block_document_id")
            document = _ask(self.client, f"/block_documents/{block_id}?include_secrets=true", f"block {block_id}")
            if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
                raise RunFileError(f"job configuration: block document {block_id}: no such Prefect block")
            return document["data"]
        if name.startswith(template.VARIABLE_PREFIX):
            variable_name = _name(name.removeprefix(template.VARIABLE_PREFIX), origin)
            variable = _ask(self.client, f"/variables/name/{variable_name}", origin)
            if not isinstance(variable, dict) or "value" not in variable:
                raise RunFileError(f"{origin}: no such Prefect variable")
            return variable["value"]
        block_type, _, rest = name.removeprefix(template.BLOCK_PREFIX).partition(".")
        block_name, _, path = rest.partition(".")
        slug, block = _name(block_type, origin), _name(block_name, origin)
        document = _ask(
            self.client, f"/block_types/slug/{slug}/block_documents/name/{block}?include_secrets=true", origin
        )
        if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
            raise RunFileError(f"{origin}: no such Prefect block")
        value = template.lookup(document["data"], path) if path else document["data"]
        if value is template.NOT_SET:
            raise RunFileError(f"{origin}: the block has no {path!r}")
        return value


def _ask(client: PrefectClient, path: str, what: str) -> Any:
    """GET for one run's data: None for a 404; another refusal (a 4xx) is that run's RunFileError."""
    try:
        return client.call("GET", path, allow=(404,))
    except SourceUnavailable:
        raise  # the API's or the agent's trouble, not the run's
    except SourceError as e:
        raise RunFileError(f"job configuration: {what}: {one_line(e)}") from None


def _run_id(value: Any, what: str) -> str:
    try:
        return path_id(value, what)
    except SourceError as e:
        raise RunFileError(f"job configuration: {e}") from None


def _name(value: str, origin: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise RunFileError(f"{origin}: {value[:60]!r} is not a Prefect name (letters, digits, - and _)")
    return value
