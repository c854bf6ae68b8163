"""The agent's own lines about runs, sent to Prefect's /logs in batches from one thread."""

from __future__ import annotations

from datetime import datetime, timezone

from dagent.sources.prefect.batches import BatchSender
from dagent.sources.prefect.client import PrefectClient


class LogShipper(BatchSender):
    """Sends queued log lines in one POST /logs/ every few seconds, so a burst costs a few requests."""

    def __init__(self, client: PrefectClient) -> None:
        super().__init__(client, "/logs/", "log lines")

    def add(self, flow_run_id: str, level: int, message: str) -> None:
        """Queue one line about a run."""
        self.queue({"name": "dagent.agent", "level": level, "message": message,
                    "timestamp": datetime.now(timezone.utc).isoformat(), "flow_run_id": flow_run_id})  # fmt: skip
