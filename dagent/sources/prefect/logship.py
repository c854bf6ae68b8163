"""The agent's own lines about runs, sent to Prefect's /logs in batches from one thread."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import Any

from dagent.errors import one_line
from dagent.sources.prefect.client import PrefectClient

log = logging.getLogger("dagent.prefect")


class LogShipper:
    """Sends queued log lines in one POST /logs/ every few seconds, so a burst costs a few requests."""

    INTERVAL = 5.0
    MAX_QUEUED = 10_000  # lines kept while Prefect cannot take them; the oldest go first

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
            del self._queue[: -self.MAX_QUEUED]

    def flush(self) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
        if batch:
            try:
                self.client.call("POST", "/logs/", batch)
            except Exception as e:  # any failure: the thread lives on, and the lines are dropped
                log.debug("could not send %d log line(s) to Prefect: %s", len(batch), one_line(e))

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)  # a batch in flight finishes before the client is closed
        self.flush()
