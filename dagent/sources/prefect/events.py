"""Prefect's event stream (websocket /events/out): flow-run state changes of one work pool, as they happen."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from tenacity import Retrying, stop_when_event_set, wait_exponential

from dagent.retry import logged

log = logging.getLogger("dagent.prefect.events")

MAX_BACKOFF = 60.0
# A stream that says nothing this long is pinged; one that does not answer in as long again is dead
# (a half-open connection after a NAT or load balancer forgot it): reconnect, and poll meanwhile.
# websocket-client's own keep-alive (WebSocketApp.run_forever's ping_interval, ping_timeout and
# reconnect) is not used: it pings from a thread of its own on a timer even while events flow, it
# reconnects after a fixed interval (no backoff, no jitter: the agents of a fleet whose server
# restarted would all come back in step), and Prefect's handshake (auth, its answer, then the filter)
# would become callbacks. Here one thread pings only a quiet stream and reconnects with tenacity's
# exponential backoff, as every other retry of dagent does.
QUIET = 45.0
# The largest message read from the stream (one event is a few KB): a bigger frame, or fragments
# adding up to more, end the connection instead of the agent's memory.
MAX_MESSAGE_BYTES = 4 << 20
_RUN_PREFIX = "prefect.flow-run."


def tls_options(api_url: str) -> dict[str, Any]:
    """websocket-client's TLS options that trust what the REST client trusts (requests' own rules:
    REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE, else certifi's bundle), so one CA setting covers both."""
    import requests
    import requests.utils

    if not api_url.startswith("https://"):
        return {}
    verify = requests.Session().merge_environment_settings(api_url, {}, None, None, None)["verify"]
    if verify is False:
        return {"cert_reqs": ssl.CERT_NONE}
    bundle = verify if isinstance(verify, str) else requests.utils.DEFAULT_CA_BUNDLE_PATH
    return {"cert_reqs": ssl.CERT_REQUIRED, ("ca_cert_path" if os.path.isdir(bundle) else "ca_certs"): bundle}


def bound_messages(sock: Any, limit: int = MAX_MESSAGE_BYTES) -> None:
    """Make `sock` (a websocket-client WebSocket) refuse a message over `limit` bytes before reading it.

    websocket-client reads whatever length a frame header announces; its frame reader is swapped
    for one that checks the length first (tests/unit/test_prefect_events.py fails if its internals move).
    """
    from websocket import WebSocketProtocolException
    from websocket._abnf import frame_buffer

    class Bounded(frame_buffer):
        pending = 0  # bytes of the message's earlier fragments

        def recv_length(self) -> None:
            super().recv_length()
            if (self.length or 0) + self.pending > limit:
                raise WebSocketProtocolException(f"a message over {limit >> 20} MiB")

        def recv_frame(self) -> Any:
            frame = super().recv_frame()
            self.pending = 0 if frame.fin else self.pending + len(frame.data)
            return frame

    sock.frame_buffer = Bounded(sock._recv, sock.frame_buffer.skip_utf8_validation)


class StateEventWatcher:
    """Calls `on_state(state_type, flow_run_id, message)` as a work pool's runs change state; reconnects, never raises.

    Polling stays the source of truth: a missed event only means learning it at the next poll, and
    `on_connected` is called each time the stream is (re)established, as events may have been missed.
    `connected` says whether events are flowing now, so callers can poll less while they are.
    """

    def __init__(
        self,
        api_url: str,
        pool_id: str,
        token: str | None,
        on_state: Callable[[str, str, str], None],
        on_connected: Callable[[], None] = lambda: None,
    ) -> None:
        self.url = "ws" + api_url.removeprefix("http") + "/events/out"
        self.sslopt = tls_options(api_url)
        self.pool_id = pool_id
        self.token = token
        self.on_state = on_state
        self.on_connected = on_connected
        self.connected = False  # written by the stream's thread only; a reader sees the old value or the new
        self._stop = threading.Event()
        self._socket: object | None = None  # under _socket_lock: stop() closes it from another thread
        self._socket_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="prefect-events", daemon=True)

    def start(self) -> None:
        """Start listening in the background."""
        self.thread.start()

    def stop(self) -> None:
        """Stop listening."""
        self._stop.set()
        with self._socket_lock:
            sock = self._socket
        if sock is not None:
            with contextlib.suppress(Exception):  # it may be closed already
                sock.close()  # type: ignore[attr-defined]

    def _run(self) -> None:
        before_sleep = logged(
            log, logging.DEBUG, lambda error, _, delay: f"event stream: {error}; reconnecting in {delay:.0f}s"
        )

        # A connection that closes cleanly starts the backoff anew; a failing one doubles it.
        while not self._stop.is_set():
            retrying = Retrying(
                stop=stop_when_event_set(self._stop),
                wait=wait_exponential(multiplier=1.0, max=MAX_BACKOFF),
                sleep=self._sleep,
                before_sleep=before_sleep,
                reraise=True,
            )
            with contextlib.suppress(Exception):  # raised only once stopping
                retrying(self._listen)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _listen(self) -> None:
        import websocket  # only agents on the Prefect source pay for it

        # Prefect's protocol: the "prefect" subprotocol, then an auth message before anything else
        # (a token, or null where the server needs none). Without the subprotocol a server with an
        # auth string refuses the socket, and one without takes the first message as the filter.
        sock = websocket.create_connection(
            self.url, timeout=30, enable_multithread=True, subprotocols=["prefect"], sslopt=self.sslopt
        )
        bound_messages(sock)
        with self._socket_lock:
            if self._stop.is_set():  # stopped while connecting: stop() found no socket to close
                sock.close()
                return
            self._socket = sock
        try:
            sock.send(json.dumps({"type": "auth", "token": self.token}))
            answer = json.loads(sock.recv() or "{}")
            if answer.get("type") != "auth_success":
                raise ConnectionError(f"event stream refused the credentials: {answer.get('reason', answer)}")
            now = datetime.now(timezone.utc)
            event_filter = {
                "occurred": {"since": now.isoformat(), "until": (now + timedelta(days=3650)).isoformat()},
                "event": {"prefix": [_RUN_PREFIX]},
                "related": {"id": [f"prefect.work-pool.{self.pool_id}"]},
            }
            sock.send(json.dumps({"type": "filter", "filter": event_filter}))
            log.debug("event stream: listening to flow-run states in pool %s", self.pool_id)
            sock.settimeout(QUIET)
            self.connected = True
            self.on_connected()
            pinged = False
            while not self._stop.is_set():
                try:
                    opcode, data = sock.recv_data(control_frame=True)
                except websocket.WebSocketTimeoutException:
                    if pinged:
                        raise ConnectionError(f"event stream silent for {2 * QUIET:.0f}s") from None
                    sock.ping()
                    pinged = True
                    continue
                pinged = False  # any frame, a pong included, says the connection lives
                if opcode == websocket.ABNF.OPCODE_CLOSE or (opcode == websocket.ABNF.OPCODE_TEXT and not data):
                    raise ConnectionError("event stream closed")
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self._dispatch(json.loads(data))
        finally:
            self.connected = False
            with self._socket_lock:
                self._socket = None
            sock.close()

    def _dispatch(self, message: object) -> None:
        event = message.get("event") if isinstance(message, dict) and message.get("type") == "event" else None
        if not isinstance(event, dict):
            return
        resource = str((event.get("resource") or {}).get("prefect.resource.id") or "")
        if not resource.startswith(_RUN_PREFIX):
            return
        # State events are named after the state's name (Late, Suspended, ...); the type is in the
        # payload. Other flow-run events (heartbeats, pull steps) carry no state and are skipped.
        validated = (event.get("payload") or {}).get("validated_state") or {}
        state, message = validated.get("type"), validated.get("message")
        if isinstance(state, str):
            self.on_state(
                state.upper(), resource.removeprefix(_RUN_PREFIX), message if isinstance(message, str) else ""
            )
