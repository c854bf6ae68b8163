"""The agent's own lines about runs, sent to Prefect's /logs in batches from one thread."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import Any

from dagent.errors import SourceError
from dagent.sources.prefect.client import PrefectClient

log = logging.getLogger("dagent.prefect")


class LogShipper:
    """Sends queued log lines in one POST /logs/ every few seconds, so a burst costs a few requests."""

    INTERVAL = 5.0

    def __init__(self, client: PrefectClient) -> None:
        self.client = client
        self._queue: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefect-logs", daemon=True)
        self._thread.start()

    def add(self, flow_run_id: str, level: int, message: str) -> None:
        entry = {"name": "dagent.agent", "level": level, "message": message,
                 "timestamp": datetime.now(timezone.utc).isoformat(), "flow_run_id": flow_run_id}  # fmt: skip
        with self._lock:
            self._queue.append(entry)

    def flush(self) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
        if batch:
            try:
                self.client.call("POST", "/logs/", batch)
            except SourceError as e:
                log.debug("could not send %d log line(s) to Prefect: %s", len(batch), e)

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self.flush()
