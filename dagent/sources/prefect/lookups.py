"""What a run's job configuration needs from the API besides the run: its deployment (read again after
DEPLOYMENT_TTL, so an edited deployment is seen without a restart), its flow's name, and the Prefect
variables and blocks its template refers to. Safe to call from any thread."""

from __future__ import annotations

import threading
import time
from typing import Any

from dagent.errors import RunFileError
from dagent.sources.prefect import template
from dagent.sources.prefect.client import PrefectClient

# A deployment read this long ago is read again: an edited deployment is seen without a restart.
DEPLOYMENT_TTL = 30.0


class Lookups:
    """Deployments, flow names, variables and blocks, read through one client and cached where they keep."""

    def __init__(self, client: PrefectClient) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._deployments: dict[str, tuple[float, dict[str, Any] | None]] = {}  # id → (read at, it)
        self._flows: dict[str, str | None] = {}  # a flow's name never changes

    def deployment(self, deployment_id: Any) -> dict[str, Any] | None:
        """The run's deployment, read again when the copy kept is older than DEPLOYMENT_TTL."""
        if not isinstance(deployment_id, str):
            return None
        with self._lock:
            kept = self._deployments.get(deployment_id)
        if kept is not None and time.monotonic() - kept[0] < DEPLOYMENT_TTL:
            return kept[1]
        answer = self.client.call("GET", f"/deployments/{deployment_id}", allow=(404,))
        deployment = answer if isinstance(answer, dict) else None
        with self._lock:
            self._deployments[deployment_id] = (time.monotonic(), deployment)
        return deployment

    def flow_name(self, flow_id: Any) -> str | None:
        if not isinstance(flow_id, str):
            return None
        with self._lock:
            if flow_id in self._flows:
                return self._flows[flow_id]
        flow = self.client.call("GET", f"/flows/{flow_id}", allow=(404,))
        name = flow.get("name") if isinstance(flow, dict) else None
        with self._lock:
            self._flows[flow_id] = name
        return name

    def reference(self, name: str) -> Any:
        """A `prefect.variables.NAME` or `prefect.blocks.TYPE.NAME[.KEY…]` placeholder's value, from the API."""
        origin = f"job configuration: {{{{ {name} }}}}"
        if name.startswith(template.BLOCK_ID_PREFIX):
            block_id = name.removeprefix(template.BLOCK_ID_PREFIX)
            document = self.client.call("GET", f"/block_documents/{block_id}?include_secrets=true", allow=(404,))
            if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
                raise RunFileError(f"job configuration: block document {block_id}: no such Prefect block")
            return document["data"]
        if name.startswith(template.VARIABLE_PREFIX):
            variable = self.client.call("GET", f"/variables/name/{name.removeprefix(template.VARIABLE_PREFIX)}",
                                        allow=(404,))  # fmt: skip
            if not isinstance(variable, dict) or "value" not in variable:
                raise RunFileError(f"{origin}: no such Prefect variable")
            return variable["value"]
        block_type, _, rest = name.removeprefix(template.BLOCK_PREFIX).partition(".")
        block_name, _, path = rest.partition(".")
        document = self.client.call(
            "GET", f"/block_types/slug/{block_type}/block_documents/name/{block_name}?include_secrets=true",
            allow=(404,),
        )  # fmt: skip
        if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
            raise RunFileError(f"{origin}: no such Prefect block")
        value = template.lookup(document["data"], path) if path else document["data"]
        if value is template.NOT_SET:
            raise RunFileError(f"{origin}: the block has no {path!r}")
        return value
