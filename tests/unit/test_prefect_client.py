"""The Prefect client's bounds and its two kinds of failure, on a transport that answers in memory."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest
import requests

from dagent.config import load_config
from dagent.errors import SourceError, SourceUnavailable
from dagent.sources.prefect import client as client_module
from dagent.sources.prefect.client import PrefectClient, path_id
from dagent.sources.prefect.logship import LogShipper
from tests.support.fakes import RoutingTransport


def _client(transport: requests.adapters.BaseAdapter, timeout: float = 5.0) -> PrefectClient:
    config = load_config(
        {"source": "prefect", "retry": {"attempts": 2, "backoff_initial": 0.001},
         "api": {"url": "http://prefect.test/api", "timeout": timeout}}, environ={}
    ).config  # fmt: skip
    return PrefectClient(config, transport)


class _Drip(io.RawIOBase):
    """A body that arrives one byte at a time, `every` seconds apart (a server holding the call)."""

    reads = 0

    def __init__(self, body: bytes, every: float) -> None:
        self.body, self.every = body, every

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        time.sleep(self.every)
        _Drip.reads += 1
        byte, self.body = self.body[:1], self.body[1:]
        return byte


class _RawTransport(RoutingTransport):
    """Answers every request with one status and a raw body object."""

    def __init__(self, status: int, raw: Any) -> None:
        super().__init__(lambda *_: (status, None))
        self.status, self.raw = status, raw

    def send(self, request: Any, **kwargs: Any) -> requests.Response:
        response = super().send(request, **kwargs)
        response.raw = self.raw() if callable(self.raw) else self.raw
        return response


def test_an_answer_that_drips_is_cut_off_at_the_timeout() -> None:
    """Attack first (issue 27): api.timeout bounded each read, so a byte every 0.8 s held a 2 s call for 22 s."""
    client = _client(_RawTransport(200, lambda: _Drip(b'{"a": "' + b"x" * 200 + b'"}', 0.02)), timeout=0.3)
    with pytest.raises(SourceUnavailable, match=r"longer than api\.timeout"):
        client.call("GET", "/x")
    assert _Drip.reads < 100  # each of the two tries gave up part way, not after the whole body


def test_an_answer_past_the_size_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "MAX_ANSWER_BYTES", 1000)
    client = _client(_RawTransport(200, lambda: io.BytesIO(b"[" + b"1," * 2000 + b"1]")))
    with pytest.raises(SourceError, match="over"):
        client.call("GET", "/x")


def test_json_nested_past_the_recursion_limit_is_the_clients_error() -> None:
    """Attack first (issue 27): a 200,000-deep body raised RecursionError, which killed the log-shipping thread."""
    deep = b"[" * 200_000 + b"]" * 200_000
    client = _client(_RawTransport(200, lambda: io.BytesIO(deep)))
    with pytest.raises(SourceError, match="not usable JSON"):
        client.call("GET", "/x")
    shipper = LogShipper(_client(_RawTransport(200, lambda: io.BytesIO(deep))))
    shipper.add("r1", 20, "line")
    shipper.flush()  # logged, never raised
    assert shipper._thread.is_alive()
    shipper.close()


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, SourceUnavailable), (500, SourceUnavailable), (503, SourceUnavailable), (429, SourceUnavailable),
     (403, SourceError), (405, SourceError), (422, SourceError)],
)  # fmt: skip
def test_the_agents_faults_are_told_from_one_requests(status: int, kind: type[Exception]) -> None:
    """No answer, 401, 408, 429 and 5xx are the agent's (SourceUnavailable); another 4xx is about the request."""
    client = _client(RoutingTransport(lambda *_: (status, {"detail": "no"})))
    with pytest.raises(SourceError) as raised:
        client.call("GET", "/x")
    assert type(raised.value) is kind


@pytest.mark.parametrize("value", ["../admin", "a/b", "x?y=1", "%2e", "", None, 5, "a" * 65])
def test_ids_that_would_change_a_path_are_refused(value: Any) -> None:
    with pytest.raises(SourceError, match="not a UUID"):
        path_id(value)
    assert path_id("0b6c3f3e-8a2b-4c1d-9e7f-1234567890ab") == "0b6c3f3e-8a2b-4c1d-9e7f-1234567890ab"


def test_a_log_queue_the_server_never_takes_stays_bounded() -> None:
    shipper = LogShipper(_client(RoutingTransport(lambda *_: (503, None))))
    for i in range(LogShipper.MAX_QUEUED + 50):
        shipper.add("r1", 20, f"line {i}")
    assert len(shipper._queue) == LogShipper.MAX_QUEUED and shipper._queue[-1]["message"].endswith(str(i))
    shipper._stop.set()


def test_the_answers_detail_is_one_line_of_text() -> None:
    client = _client(RoutingTransport(lambda *_: (422, {"detail": "bad\nthing"})))
    with pytest.raises(SourceError) as raised:
        client.call("GET", "/x")
    assert "bad thing" in str(raised.value) and "\n" not in str(raised.value)
    assert json.dumps({"ok": 1})
