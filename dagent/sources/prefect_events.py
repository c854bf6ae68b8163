"""Prefect's event stream (websocket /events/out), used only to wake the loop when a run is scheduled."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

log = logging.getLogger("dagent.prefect.events")

# State events that put a flow run where get_scheduled_flow_runs finds it.
SCHEDULED_EVENTS = ("prefect.flow-run.Scheduled", "prefect.flow-run.AwaitingRetry", "prefect.flow-run.Late")
MAX_BACKOFF = 60.0


class ScheduledRunWatcher:
    """Calls `wake()` when a flow run of one work pool becomes scheduled; reconnects forever, never raises.

    Polling stays the source of truth: a missed event only means waiting for the next regular poll.
    """

    def __init__(self, api_url: str, pool_id: str, token: str | None, wake: Callable[[], None]) -> None:
        self.url = "ws" + api_url.removeprefix("http") + "/events/out"
        self.pool_id = pool_id
        self.token = token
        self.wake = wake
        self._stop = threading.Event()
        self._socket: object | None = None
        self.thread = threading.Thread(target=self._run, name="prefect-events", daemon=True)

    def start(self) -> None:
        """Start listening in the background."""
        self.thread.start()

    def stop(self) -> None:
        """Stop listening."""
        self._stop.set()
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(Exception):  # it may be closed already
                sock.close()  # type: ignore[attr-defined]

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                self._listen()
                backoff = 1.0
            except Exception as e:
                if self._stop.is_set():
                    return
                log.debug(
                    "event stream: %s; reconnecting in %.0fs",
                    str(e).splitlines()[0] if str(e) else type(e).__name__,
                    backoff,
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _listen(self) -> None:
        import websocket  # only agents on the Prefect source pay for it

        sock = websocket.create_connection(self.url, timeout=30, enable_multithread=True)
        self._socket = sock
        try:
            if self.token is not None:  # a server without auth expects the filter straight away
                sock.send(json.dumps({"type": "auth", "token": self.token}))
                answer = json.loads(sock.recv())
                if answer.get("type") != "auth_success":
                    raise ConnectionError(f"event stream refused the credentials: {answer.get('reason', answer)}")
            now = datetime.now(timezone.utc)
            event_filter = {
                "occurred": {"since": now.isoformat(), "until": (now + timedelta(days=3650)).isoformat()},
                "event": {"name": list(SCHEDULED_EVENTS)},
                "related": {"id": [f"prefect.work-pool.{self.pool_id}"]},
            }
            sock.send(json.dumps({"type": "filter", "filter": event_filter}))
            log.debug("event stream: listening for runs scheduled in pool %s", self.pool_id)
            sock.settimeout(None)
            while not self._stop.is_set():
                message = sock.recv()
                if not message:
                    raise ConnectionError("event stream closed")
                if json.loads(message).get("type") == "event":
                    self.wake()
        finally:
            self._socket = None
            sock.close()
