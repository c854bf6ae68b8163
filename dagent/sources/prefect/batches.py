"""Things the agent tells Prefect in batches (log lines, events): one thread, one POST a few seconds."""

from __future__ import annotations

import logging
import threading
from typing import Any

from dagent.errors import one_line
from dagent.sources.prefect.client import PrefectClient

log = logging.getLogger("dagent.prefect")


class BatchSender:
    """Queues items and sends them in one POST to `path` every `INTERVAL` seconds while there are any.

    Never raises and never blocks its callers: a batch Prefect does not take is dropped (logged at
    debug), and at most MAX_QUEUED items wait, the oldest going first.
    """

    INTERVAL = 5.0
    MAX_QUEUED = 10_000

    def __init__(self, client: PrefectClient, path: str, what: str) -> None:
        self.client, self.path, self.what = client, path, what
        self._queue: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"prefect-send-{path.strip('/')}", daemon=True)
        self._thread.start()

    def queue(self, item: dict[str, Any]) -> None:
        """Queue one item for the next batch."""
        with self._lock:
            self._queue.append(item)
            del self._queue[: -self.MAX_QUEUED]

    def flush(self) -> None:
        """Send what is queued now."""
        with self._lock:
            batch, self._queue = self._queue, []
        if batch:
            try:
                self.client.call("POST", self.path, batch)
            except Exception as e:  # any failure: the thread lives on, and the batch is dropped
                log.debug("could not send %d %s to Prefect: %s", len(batch), self.what, one_line(e))

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            self.flush()

    def close(self) -> None:
        """Stop, let a batch in flight finish (before the client is closed), then send what is left."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()
