"""core.h1_client: ClientConnection against a plain h11 client connection.

The same requests are sent through both (the bytes must be h11's), then random responses
(Content-Length, chunked, read-until-close, HEAD, 204/304, 1xx before the final response,
hostile bytes, cut at random points, an end of file anywhere) are fed to both; they must
agree on every event, body byte, error, head size and on reuse. Then tables for the states,
cycles and the ``max_head`` bound.
"""

from __future__ import annotations

from typing import Any

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateproxy.core.h1_client import MAX_RESPONSE_HEAD, ClientConnection
from gateproxy.core.http_events import (
    DONE,
    END_OF_MESSAGE,
    IDLE,
    NEED_DATA,
    PAUSED,
    SEND_BODY,
    SEND_RESPONSE,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Headers,
    InformationalResponse,
    Response,
)
from gateproxy.errors import HTTPProtocolError
from tests.helpers.h1_streams import (
    SOMETIMES,
    H11Side,
    describe,
    feeds,
    key_property,
    merge_data,
    next_fed,
    response_message,
)

Exchange = tuple[bytes, Headers, bytes, list[list[bytes]]]  # method, headers, body, response


class Ours:
    def __init__(self) -> None:
        self.conn = ClientConnection(server="app:80")

    def send(self, method: bytes, headers: Headers, body: bytes) -> bytes:
        conn = self.conn
        out = conn.send_request(method, b"/", headers)
        return out + (conn.send_data(body) if body else b"") + conn.send_end()

    def receive(self, data: bytes) -> None:
        self.conn.receive_data(data)

    def next_event(self) -> Any:
        event = self.conn.next_event()
        assert event is not PAUSED  # (only asked before the end of each response)
        return None if event is NEED_DATA else event

    def head_size(self) -> int:
        return self.conn.head_size

    def reusable(self) -> bool:
        return self.conn.reusable()

    def next_cycle(self) -> None:
        self.conn.start_next_cycle()


class Reference(H11Side):
    def __init__(self) -> None:
        super().__init__(h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD))
        self.cycle_start = 0

    def send(self, method: bytes, headers: Headers, body: bytes) -> bytes:
        conn = self.conn
        out = conn.send(h11.Request(method=method, target=b"/", headers=headers)) or b""
        out += (conn.send(h11.Data(data=body)) or b"") if body else b""
        return out + (conn.send(h11.EndOfMessage()) or b"")

    def head_size(self) -> int:  # every head of the exchange so far, 1xx ones included
        return self.consumed() - self.cycle_start

    def reusable(self) -> bool:
        # h11 would start a new cycle with bytes left over; a client has nothing to read
        # them as (nor after the server closed), so ClientConnection never reuses then.
        conn = self.conn
        done = conn.our_state is conn.their_state is h11.DONE
        return done and conn.trailing_data == (b"", False)

    def next_cycle(self) -> None:
        self.conn.start_next_cycle()
        self.cycle_start = self.consumed()


def transcript(side: Ours | Reference, exchanges: list[Exchange]) -> list[Any]:
    """The request bytes sent, then what ``side`` makes of each response, until an exchange
    leaves the connection unusable."""
    out: list[Any] = []
    try:
        for method, headers, body, groups in exchanges:
            out.append(("sent", side.send(method, headers, body)))
            pending = list(groups)
            while (event := next_fed(side, pending)) is not None:
                entry = describe(event)
                if entry[0] in ("Response", "InformationalResponse"):
                    entry = (*entry, side.head_size())
                merge_data(out, entry)
                if entry[0] == "EndOfMessage":
                    break
            else:
                return [*out, ("need-data",)]
            out.append(("reusable", side.reusable()))
            if not side.reusable():
                return out
            side.next_cycle()
    except (HTTPProtocolError, h11.RemoteProtocolError):
        return [*out, ("error",)]  # (no status hint: an upstream's errors are all a 502)
    return out


@st.composite
def exchanges(draw: st.DrawFn) -> list[Exchange]:
    out: list[Exchange] = []
    for _ in range(draw(st.integers(1, 2))):
        method = draw(st.sampled_from([b"GET", b"GET", b"HEAD", b"POST"]))
        headers: Headers = [(b"host", b"app")]
        body = draw(st.binary(max_size=6)) if method == b"POST" else b""
        if method == b"POST":
            headers += draw(
                st.sampled_from(
                    [[(b"content-length", b"%d" % len(body))], [(b"transfer-encoding", b"chunked")]]
                )
            )
        if draw(SOMETIMES):
            headers.append((b"connection", b"close"))
        response = draw(response_message())
        if draw(SOMETIMES):
            response = response[: draw(st.integers(0, len(response)))]
        out.append((method, headers, body, draw(feeds(response))))
    return out


@key_property(200)
@given(exchanges())
def test_responses_are_read_as_h11_reads_them(case: list[Exchange]) -> None:
    assert transcript(Ours(), case) == transcript(Reference(), case)


# --- tables ----------------------------------------------------------------------------------

OK_HI = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
CHUNKED_HI = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"


def events(conn: ClientConnection) -> list[Event]:
    out: list[Event] = []
    while True:
        event = conn.next_event()
        out.append(event)
        if event is NEED_DATA or event is PAUSED or type(event) is ConnectionClosed:
            return out


def get(conn: ClientConnection, *headers: tuple[bytes, bytes]) -> bytes:
    return conn.send_request(b"GET", b"/", [(b"host", b"app"), *headers]) + conn.send_end()


def test_a_plain_exchange_walks_h11s_states_and_counts() -> None:
    conn = ClientConnection(server="app:80")
    assert (conn.our_state, conn.their_state, conn.requests_served) == (IDLE, IDLE, 0)
    assert conn.next_event() is NEED_DATA
    conn.send_request(b"GET", b"/", [(b"host", b"app")])
    assert (conn.our_state, conn.their_state) == (SEND_BODY, SEND_RESPONSE)
    conn.send_end()
    assert conn.our_state == DONE and not conn.reusable()
    conn.receive_data(OK_HI)
    got = events(conn)
    assert [type(e) for e in got] == [Response, Data, EndOfMessage, type(PAUSED)]
    assert conn.head_size == len(OK_HI) - 2 and conn.bytes_received == len(OK_HI)
    assert conn.their_state == DONE and conn.reusable() and not conn.closing
    conn.start_next_cycle()
    assert (conn.our_state, conn.their_state) == (IDLE, IDLE)
    assert (conn.requests_served, conn.bytes_received) == (1, 0)


def test_a_slow_path_response_leaves_the_next_exchange_to_the_fast_path() -> None:
    conn = ClientConnection(server="app:80")
    get(conn)
    conn.receive_data(CHUNKED_HI)
    got = events(conn)
    assert [type(e) for e in got] == [Response, Data, EndOfMessage, type(PAUSED)]
    assert conn.head_size == CHUNKED_HI.index(b"\r\n\r\n") + 4
    assert conn.reusable()
    conn.start_next_cycle()
    get(conn)
    conn.receive_data(OK_HI)
    assert [type(e) for e in events(conn)] == [Response, Data, EndOfMessage, type(PAUSED)]
    assert conn.reusable()


@pytest.mark.parametrize(
    ("request_headers", "response", "said_close"),
    [
        ([(b"connection", b"close")], OK_HI, True),
        ([], OK_HI.replace(b"Content-Length: 2", b"Content-Length: 2\r\nConnection: close"), True),
        ([], OK_HI.replace(b"HTTP/1.1", b"HTTP/1.0"), True),
        ([(b"connection", b"close")], CHUNKED_HI, True),
        ([], b"HTTP/1.1 200 OK\r\n\r\nhi", False),  # read until close...
        ([], OK_HI + b"HTTP/1.1 200 OK\r\n", False),  # bytes nobody asked for
        ([], CHUNKED_HI + b"x", False),
    ],
)
def test_a_connection_that_must_close_is_not_reused(
    request_headers: Headers, response: bytes, said_close: bool
) -> None:
    conn = ClientConnection(server="app:80")
    get(conn, *request_headers)
    conn.receive_data(response)
    conn.receive_data(b"")  # (... which then ends)
    assert any(isinstance(event, EndOfMessage) for event in events(conn))
    assert not conn.reusable() and conn.closing is said_close
    with pytest.raises(RuntimeError, match="not reusable"):
        conn.start_next_cycle()


def test_an_end_of_file_after_a_complete_fast_response_is_not_an_error() -> None:
    conn = ClientConnection(server="app:80")
    get(conn)
    conn.receive_data(OK_HI[:-1])
    assert [type(e) for e in events(conn)] == [Response, Data, type(NEED_DATA)]
    conn.receive_data(OK_HI[-1:])
    conn.receive_data(b"")  # the server closed right after the last byte, before we read it
    assert [type(e) for e in events(conn)] == [Data, EndOfMessage, type(PAUSED)]
    assert not conn.reusable()


@pytest.mark.parametrize("response", [OK_HI[:-1], CHUNKED_HI[:-8]])
def test_an_end_of_file_mid_body_is_an_error_after_the_bytes_that_came(response: bytes) -> None:
    conn = ClientConnection(server="app:80")
    get(conn)
    conn.receive_data(response)
    conn.receive_data(b"")
    assert type(conn.next_event()) is Response
    body = conn.next_event()
    assert isinstance(body, Data) and body.data == b"h"
    with pytest.raises(HTTPProtocolError):
        conn.next_event()


def test_sending_out_of_turn_or_off_length_is_refused() -> None:
    conn = ClientConnection(server="app:80")
    with pytest.raises(RuntimeError, match="body data"):
        conn.send_data(b"x")
    with pytest.raises(RuntimeError, match="end a body"):
        conn.send_end()
    conn.send_request(b"POST", b"/", [(b"host", b"a"), (b"content-length", b"2")])
    with pytest.raises(RuntimeError, match="cannot send a request"):
        conn.send_request(b"GET", b"/", [(b"host", b"a")])
    with pytest.raises(RuntimeError, match="too much data"):
        conn.send_data(b"abc")
    conn.send_data(b"a")
    with pytest.raises(RuntimeError, match="too little data"):
        conn.send_end()


def test_bytes_before_any_request_are_refused() -> None:
    conn = ClientConnection(server="app:80")
    conn.receive_data(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(HTTPProtocolError, match="before any request"):
        conn.next_event()


def test_a_request_h11_cannot_frame_a_response_for_is_refused_on_the_slow_path() -> None:
    conn = ClientConnection(server="app:80")
    conn.send_request(b"POST", b"/", [(b"host", b"a"), (b"transfer-encoding", b"gzip")])
    conn.receive_data(CHUNKED_HI)
    with pytest.raises(HTTPProtocolError, match="cannot parse a response"):
        conn.next_event()


# --- the max_head bound ----------------------------------------------------------------------

BIG = b"HTTP/1.1 200 OK\r\nX: " + b"x" * 100 + b"\r\nContent-Length: 0\r\n\r\n"


def test_a_complete_response_head_over_max_head_is_refused() -> None:
    conn = ClientConnection(server="app:80", max_head=64)
    get(conn)
    conn.receive_data(BIG)  # complete: h11 alone would take it
    with pytest.raises(HTTPProtocolError, match="larger than 64 bytes"):
        conn.next_event()


def test_an_incomplete_response_head_over_max_head_is_refused() -> None:
    conn = ClientConnection(server="app:80", max_head=64)
    get(conn)
    conn.receive_data(BIG[:65])
    with pytest.raises(HTTPProtocolError, match="too long"):
        conn.next_event()
    conn = ClientConnection(server="app:80", max_head=64)
    get(conn)
    conn.receive_data(BIG[:64])
    assert conn.next_event() is NEED_DATA


def test_a_head_of_exactly_max_head_is_taken() -> None:
    conn = ClientConnection(server="app:80", max_head=len(BIG))
    get(conn)
    conn.receive_data(BIG)
    assert type(conn.next_event()) is Response and conn.head_size == len(BIG)
    assert conn.next_event() is END_OF_MESSAGE


def test_informational_heads_count_toward_max_head() -> None:
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: " + b"x" * 10 + b"\r\n\r\n"
    conn = ClientConnection(server="app:80", max_head=64)
    get(conn)
    conn.receive_data(hints + hints + OK_HI)  # each head fits, together they do not
    assert isinstance(conn.next_event(), InformationalResponse)
    assert isinstance(conn.next_event(), InformationalResponse)
    assert conn.head_size == 2 * len(hints)  # the bound is on all heads of the exchange
    with pytest.raises(HTTPProtocolError, match="larger than 64 bytes"):
        conn.next_event()


# --- upgrades (core.upgrade) --------------------------------------------------------------------

_UPGRADE_HEADERS: Headers = [(b"host", b"app"), (b"connection", b"upgrade"), (b"upgrade", b"ws")]
_SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ws\r\nConnection: Upgrade\r\n\r\n"


def test_a_101_to_a_proposed_upgrade_hands_over_the_bytes_after_it() -> None:
    conn = ClientConnection(server="app:80")
    conn.send_request(b"GET", b"/ws", _UPGRADE_HEADERS)
    conn.send_end()
    with pytest.raises(RuntimeError):
        conn.switched_data()  # nothing switched yet
    conn.receive_data(_SWITCH + b"\x81\x02hi")
    event = conn.next_event()
    assert isinstance(event, InformationalResponse) and event.status_code == 101
    assert conn.next_event() is PAUSED and conn.head_size == len(_SWITCH)
    assert conn.switched_data() == (b"\x81\x02hi", False)
    conn.receive_data(b"")
    assert conn.switched_data() == (b"\x81\x02hi", True)
    assert not conn.reusable()


def test_a_101_nobody_proposed_is_a_protocol_error() -> None:
    conn = ClientConnection(server="app:80")
    get(conn)
    conn.receive_data(_SWITCH)
    with pytest.raises(HTTPProtocolError):
        conn.next_event()
