"""core.h1_client: ClientConnection against a plain h11 client connection."""

from __future__ import annotations

from gateproxy.core.h1_client import ClientConnection
from gateproxy.core.http_events import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Response,
)

OK_HI = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


def events(conn: ClientConnection) -> list[Event]:
    out: list[Event] = []
    while True:
        event = conn.next_event()
        out.append(event)
        if event is NEED_DATA or event is PAUSED or type(event) is ConnectionClosed:
            return out


def get(conn: ClientConnection, *headers: tuple[bytes, bytes]) -> bytes:
    return conn.send_request(b"GET", b"/", [(b"host", b"app"), *headers]) + conn.send_end()


def test_an_end_of_file_after_a_complete_fast_response_is_not_an_error() -> None:
    conn = ClientConnection(server="app:80")
    get(conn)
    conn.receive_data(OK_HI[:-1])
    assert [type(e) for e in events(conn)] == [Response, Data, type(NEED_DATA)]
    conn.receive_data(OK_HI[-1:])
    conn.receive_data(b"")  # the server closed right after the last byte, before we read it
    assert [type(e) for e in events(conn)] == [Data, EndOfMessage, type(PAUSED)]
    assert not conn.reusable()
