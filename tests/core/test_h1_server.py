"""core.h1_server: ServerConnection against a plain h11 server connection."""

from __future__ import annotations

from typing import Any

import h11
import pytest

from gateproxy.core.h1_server import ServerConnection
from gateproxy.core.http_events import Data, EndOfMessage, Request

MAX = 8192


def read_request(conn: ServerConnection | h11.Connection, request: bytes) -> bytes:
    """Feed ``request`` and read it to its end; the method."""
    conn.receive_data(request)
    method = b""
    while True:
        event: Any = conn.next_event()
        if type(event).__name__ == "Request":
            method = event.method
        if type(event).__name__ == "EndOfMessage":
            return method


@pytest.mark.parametrize("version", [b"1.2", b"2.0"])
def test_a_version_above_1_1_is_kept_alive_and_chunked_to_as_h11_does(version: bytes) -> None:
    request = b"GET / HTTP/%s\r\nHost: a\r\n\r\n" % version  # (request_rules: 505)
    ours = ServerConnection(max_header_bytes=MAX)
    reference = h11.Connection(h11.SERVER)
    read_request(ours, request)
    read_request(reference, request)
    assert ours.keep_alive
    head = ours.send_response(200, b"OK", [(b"x-a", b"1")])
    assert head == reference.send(
        h11.Response(status_code=200, headers=[(b"x-a", b"1")], reason=b"OK")
    )
    assert b"Transfer-Encoding: chunked" in head and b"close" not in head
    assert ours.send_data(b"hi") + ours.send_end() == reference.send(
        h11.Data(data=b"hi")
    ) + reference.send(h11.EndOfMessage())
    assert ours.reusable()


@pytest.mark.parametrize(("length", "body"), [(b"2", b"hi"), (b"0", b"")])
def test_a_client_that_sends_its_body_unasked_no_longer_waits(length: bytes, body: bytes) -> None:
    conn = ServerConnection(max_header_bytes=MAX)
    conn.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: %s\r\n\r\n" % length
    )
    assert type(conn.next_event()) is Request and conn.waiting_for_100_continue
    conn.receive_data(body)  # it did not wait (RFC 9110 10.1.1 allows that), or had none
    assert isinstance(conn.next_event(), Data if body else EndOfMessage)
    assert not conn.waiting_for_100_continue  # as h11: no 100 Continue after the body
