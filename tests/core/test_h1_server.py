"""core.h1_server: ServerConnection against a plain h11 server connection."""

from __future__ import annotations

import pytest

from gateproxy.core.h1_server import ServerConnection
from gateproxy.core.http_events import Data, EndOfMessage, Request

MAX = 8192


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
