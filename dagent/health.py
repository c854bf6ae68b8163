"""/health (also /api/health, the seed agent's path) and /metrics (Prometheus text format)."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dagent.metrics import Metrics

log = logging.getLogger("dagent.health")


# Whoever reaches the port could otherwise hold a thread and a socket each for ever (a half-sent
# request). Each connection gets CONNECTION_TIMEOUT seconds per read, at most MAX_CONNECTIONS are open
# at once, and when all are taken a new connection makes room by closing the oldest one that has not
# yet sent its whole request: half-open connections cannot lock a real probe out.
CONNECTION_TIMEOUT = 5.0
MAX_CONNECTIONS = 32


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the listen backlog: a burst of probes is not refused by the kernel

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.Lock()
        self._open = 0
        self._unread: dict[Any, float] = {}  # connections whose request is not read yet → when opened

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._slots:
            if self._open >= MAX_CONNECTIONS:
                if not self._unread:
                    self.shutdown_request(request)  # every slot is serving a request: this one waits its turn
                    return
                oldest = min(self._unread, key=self._unread.__getitem__)
                del self._unread[oldest]
                log.debug("health: %d connections open; closing the oldest that sent no request", self._open)
                with contextlib.suppress(OSError):
                    oldest.shutdown(socket.SHUT_RDWR)  # its thread's read ends, and so does the thread
            self._open += 1
            self._unread[request] = time.monotonic()
        try:
            super().process_request(request, client_address)
        except Exception:
            self._done(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(request)

    def request_read(self, request: Any) -> None:
        """The connection's request is read: it is being served, not held open."""
        with self._slots:
            self._unread.pop(request, None)

    def _done(self, request: Any) -> None:
        with self._slots:
            self._open -= 1
            self._unread.pop(request, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A dropped or timed-out connection is the client's business: one debug line, never a raw traceback.
        error = sys.exc_info()[1]
        log.debug("health: connection from %s ended: %s", client_address, type(error).__name__)


class HealthServer:
    """A small HTTP server in a daemon thread; `status()` returns (healthy, details)."""

    def __init__(self, address: str, status: Callable[[], tuple[bool, dict[str, Any]]], metrics: Metrics) -> None:
        host, _, port = address.rpartition(":")
        handler = _handler(status, metrics)
        self.server = _BoundedServer((host.strip("[]"), int(port)), handler)
        self.address = f"{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()
        log.info("health and metrics on http://%s/health and /metrics", self.address)

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def _handler(status: Callable[[], tuple[bool, dict[str, Any]]], metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = CONNECTION_TIMEOUT  # each read and write of the connection's socket

        def parse_request(self) -> bool:
            parsed = super().parse_request()
            server = self.server
            if isinstance(server, _BoundedServer):
                server.request_read(self.connection)
            return parsed

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            if path in ("/health", "/api/health"):
                healthy, details = status()
                body = json.dumps({"status": "ok" if healthy else "unhealthy", **details}).encode()
                self._send(200 if healthy else 503, "application/json", body)
            elif path == "/metrics" and metrics.registry is not None:
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry))
            else:
                self._send(404, "application/json", b'{"error": "not found"}')

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("health: " + format, *args)

    return Handler
