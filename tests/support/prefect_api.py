"""A tiny Prefect REST client for tests (urllib, not dagent's code), and an HTTP fault proxy."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support import infra

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


class PrefectAPI:
    """Make flows, deployments and flow runs; read their states."""

    def __init__(self, api_url: str) -> None:
        self.url = api_url

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request; a busy server (503, SQLite locked) is asked again, as any client would."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"}
        for attempt in range(10):
            request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    text = response.read()
                return json.loads(text) if text else None
            except urllib.error.HTTPError as e:
                if e.code not in (429, 502, 503) or attempt == 9:
                    raise
                time.sleep(0.3 * (attempt + 1))
            except (TimeoutError, urllib.error.URLError) as e:
                # A SQLite server stalls for tens of seconds under load ("database is locked"): a reader
                # asks again, and so does an upsert (a flow or a deployment by name); other writes are
                # not repeated, as their first try may have gone through.
                bare = path.split("?")[0]
                reads = method == "GET" or bare.endswith(("/filter", "/count")) or bare in ("/flows/", "/deployments/")
                if attempt >= 3 or not reads or not isinstance(getattr(e, "reason", e), TimeoutError):
                    raise
                time.sleep(1.0)
        raise AssertionError("unreachable")

    def deployment(self, pool: str, entrypoint: str, job_variables: dict[str, Any]) -> str:
        """A deployment of a flow in the test image's /flows/flows.py."""
        name = entrypoint.split(":")[1]
        flow = self.call("POST", "/flows/", {"name": name})
        deployment = self.call(
            "POST",
            "/deployments/",
            {
                "name": f"{name}-{uuid.uuid4().hex[:6]}",
                "flow_id": flow["id"],
                "work_pool_name": pool,
                "entrypoint": entrypoint,
                "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": "/flows"}}],
                "job_variables": job_variables,
            },
        )
        return str(deployment["id"])

    def run(
        self, deployment_id: str, job_variables: dict[str, Any] | None = None, parameters: dict[str, Any] | None = None
    ) -> str:
        """A flow run scheduled now."""
        body: dict[str, Any] = {}
        if job_variables:
            body["job_variables"] = job_variables
        if parameters:
            body["parameters"] = parameters
        return str(self.call("POST", f"/deployments/{deployment_id}/create_flow_run", body)["id"])

    def flow_run(self, run_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/flow_runs/{run_id}"))

    def state(self, run_id: str) -> str:
        state = self.flow_run(run_id).get("state") or {}
        return str(state.get("type"))

    def wait_state(self, run_id: str, wanted: set[str] | str, timeout: float = 120) -> dict[str, Any]:
        """Wait until the run's state type is one of `wanted`; its flow run."""
        wanted = {wanted} if isinstance(wanted, str) else wanted
        deadline = time.monotonic() + timeout
        while True:
            flow_run = self.flow_run(run_id)
            if (flow_run.get("state") or {}).get("type") in wanted:
                return flow_run
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"flow run {run_id} is {(flow_run.get('state') or {}).get('type')}, not {wanted}, after {timeout}s"
                )
            time.sleep(0.5)

    def set_state(self, run_id: str, kind: str, force: bool = False) -> str:
        answer = self.call(
            "POST", f"/flow_runs/{run_id}/set_state", {"state": {"type": kind, "name": kind.title()}, "force": force}
        )
        return str(answer["status"])

    def logs(self, run_id: str) -> list[str]:
        found = self.call("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
        return [str(entry["message"]) for entry in found]

    def pool(self, name: str) -> dict[str, Any] | None:
        with contextlib.suppress(urllib.error.HTTPError):
            return dict(self.call("GET", f"/work_pools/{name}"))
        return None


def _is_claim(body: bytes | None) -> bool:
    """A set_state body proposing PENDING named Pending: an agent's claim (Submitting is its next step)."""
    try:
        state = json.loads(body or b"{}").get("state") or {}
    except ValueError:
        return False
    return bool(state.get("type") == "PENDING" and state.get("name") == "Pending")


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up (resets are part of the test) are not news


class FaultyHTTPProxy:
    """An HTTP proxy on 127.0.0.1 in front of the API; a share of dagent's requests get a fault.

    Faults: 503, 429 with Retry-After, a dropped connection, a slow answer. Requests from anything
    but dagent (the flow engine inside containers) pass untouched. It counts dagent's requests.
    """

    def __init__(
        self, upstream: str, fault_rate: float = 0.0, seed: int = 7, count_all: bool = False, hold_claims: float = 0.0
    ) -> None:
        self.upstream = upstream.rstrip("/")
        # Each of dagent's PENDING claims reaches the server this many seconds late (a slow network, a
        # stalled agent): long enough for another agent to claim, run and end the run meanwhile.
        self.hold_claims = hold_claims
        self.held = 0
        self.last_held = 0.0  # when the latest held claim arrived
        self.count_all = count_all
        self.times: list[float] = []  # when each counted request arrived
        self.fault_rate = fault_rate
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        # (method, path, arrived, answered) of each counted request that got an answer from upstream
        self.spans: list[tuple[str, str, float, float]] = []
        self.claims: list[
            tuple[str, str]
        ] = []  # (flow run id, the answer's status) of each claim (PENDING named Pending)
        self.claim_log: list[tuple[float, str, str, str]] = []  # (when answered, run id, status, the state's message)
        self.refuse_websockets = False  # the event stream is down: upgrades get 503
        self._tunnels: list[socket.socket] = []
        self.faults: dict[str, int] = {"503": 0, "429": 0, "reset": 0, "slow": 0}
        self.server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def api_url(self, path: str) -> str:
        """The proxy's URL for the upstream API path (e.g. /api)."""
        return self.url + path

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                if self.headers.get("Upgrade", "").lower() == "websocket":
                    return self._tunnel()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                from_dagent = self.headers.get("User-Agent", "").startswith("dagent/")
                fault = None
                arrived = time.time()
                if from_dagent or proxy.count_all:
                    with proxy.lock:
                        proxy.requests.append((self.command, self.path))
                        proxy.times.append(arrived)
                        if from_dagent and proxy.random.random() < proxy.fault_rate:
                            fault = proxy.random.choice(["503", "429", "reset", "slow"])
                            proxy.faults[fault] += 1
                if fault == "503":
                    return self._reply(503, b'{"detail": "busy"}')
                if fault == "429":
                    return self._reply(429, b'{"detail": "slow down"}', {"Retry-After": "0.2"})
                if fault == "reset":
                    self.close_connection = True
                    self.connection.close()
                    return None
                if fault == "slow":
                    time.sleep(1.0)
                if proxy.hold_claims and from_dagent and self.path.endswith("/set_state") and _is_claim(body):
                    with proxy.lock:
                        proxy.held += 1
                        proxy.last_held = time.time()
                    time.sleep(proxy.hold_claims)
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "connection", "accept-encoding")
                }
                request = urllib.request.Request(
                    proxy.upstream + self.path, data=body, method=self.command, headers=headers
                )
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        answer = response.read()
                        if from_dagent or proxy.count_all:
                            with proxy.lock:
                                proxy.spans.append((self.command, self.path, arrived, time.time()))
                            if self.path.endswith("/set_state") and body:
                                proxy._note_claim(self.path, body, answer)
                        return self._reply(
                            response.status, answer, {"Content-Type": response.headers.get("Content-Type", "")}
                        )
                except urllib.error.HTTPError as e:
                    return self._reply(e.code, e.read(), {"Content-Type": e.headers.get("Content-Type", "")})

            def _tunnel(self) -> None:
                """A websocket (the event stream): one counted request, then bytes both ways."""
                with proxy.lock:
                    proxy.requests.append((self.command, self.path))
                    proxy.times.append(time.time())
                    if proxy.refuse_websockets:
                        return self._reply(503, b'{"detail": "event stream down"}')
                    proxy._tunnels.append(self.connection)
                host, port = urllib.parse.urlsplit(proxy.upstream).netloc.rsplit(":", 1)
                upstream = socket.create_connection((host, int(port)))
                head = f"{self.requestline}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in self.headers.items()) + "\r\n"
                upstream.sendall(head.encode("latin-1"))
                self.close_connection = True
                # infra.pipe closes both sockets when either side ends.
                threading.Thread(target=infra.pipe, args=(upstream, self.connection), daemon=True).start()
                infra.pipe(self.connection, upstream)

            def _reply(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for key, value in (headers or {}).items():
                    if value:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def cut_websockets(self) -> None:
        """Drop every event stream connection now (refuse_websockets keeps new ones out)."""
        with self.lock:
            tunnels, self._tunnels = self._tunnels, []
        for connection in tunnels:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
                connection.close()

    def _note_claim(self, path: str, body: bytes, answer: bytes) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            state = json.loads(body)["state"]
            # A claim is PENDING named Pending; `Submitting` (PENDING under another name, which Prefect's
            # worker and dagent both propose before starting a run's container) is the claimer's next step.
            if state["type"] == "PENDING" and state.get("name", "Pending") == "Pending":
                status = str(json.loads(answer).get("status"))
                with self.lock:
                    self.claims.append((path.split("/")[-2], status))
                    self.claim_log.append((time.time(), path.split("/")[-2], status, str(state.get("message") or "")))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
