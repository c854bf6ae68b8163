"""The event stream's own bounds, on a socket pair (no server): message size, and the REST client's CAs."""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path

import pytest
import websocket

from dagent.sources.prefect.events import bound_messages, tls_options


def _connected_pair() -> tuple[websocket.WebSocket, socket.socket]:
    ours, theirs = socket.socketpair()
    ws = websocket.WebSocket()
    ws.sock, ws.connected = ours, True
    bound_messages(ws, limit=1024)
    return ws, theirs


def _frame(payload: bytes, fin: bool = True, opcode: int = 1, announced: int | None = None) -> bytes:
    length = len(payload) if announced is None else announced
    head = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        head += bytes([length])
    elif length < 1 << 16:
        head += bytes([126]) + struct.pack("!H", length)
    else:
        head += bytes([127]) + struct.pack("!Q", length)
    return head + payload


def test_a_small_message_is_read() -> None:
    ws, server = _connected_pair()
    server.sendall(_frame(b'{"type": "event"}'))
    assert ws.recv() == '{"type": "event"}'


def test_a_frame_announcing_more_than_the_limit_ends_the_connection_before_it_is_read() -> None:
    """Attack first (issue 27): websocket-client read whatever length a header announced (up to 2**63)."""
    ws, server = _connected_pair()
    server.sendall(_frame(b"", announced=1 << 40))
    with pytest.raises(websocket.WebSocketProtocolException, match="over"):
        ws.recv()


def test_fragments_adding_up_past_the_limit_end_the_connection() -> None:
    ws, server = _connected_pair()
    server.sendall(_frame(b"x" * 600, fin=False) + _frame(b"y" * 600, fin=True, opcode=0))
    with pytest.raises(websocket.WebSocketProtocolException, match="over"):
        ws.recv()


def test_the_stream_trusts_the_ca_the_rest_client_trusts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack first (issue 27): a private CA in REQUESTS_CA_BUNDLE was bypassed by the event stream's socket."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    assert tls_options("https://prefect.example/api") == {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": str(bundle)}
    assert tls_options("http://127.0.0.1:4200/api") == {}
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    import requests

    assert tls_options("https://prefect.example/api")["ca_certs"] == requests.utils.DEFAULT_CA_BUNDLE_PATH
