"""core.h1_server: ServerConnection against a plain h11 server connection.

Random request streams (valid and hostile, pipelined, cut at random points, with or without an
end of file) go through both; they must agree on every event, body byte, error (and its status
hint), head size and keep-alive decision. Random responses after the same request must be
written byte for byte as h11's ``send()`` writes them. Then tables for the states and cycles.
"""

from __future__ import annotations

from typing import Any

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateproxy.core.h1_server import ServerConnection
from gateproxy.core.http_events import (
    CONNECTION_CLOSED,
    DONE,
    IDLE,
    MUST_CLOSE,
    NEED_DATA,
    PAUSED,
    SEND_BODY,
    SEND_RESPONSE,
    Data,
    EndOfMessage,
    Event,
    Headers,
    Request,
)
from gateproxy.core.request_rules import raw_head_problem, reject_reason
from gateproxy.errors import HTTPProtocolError
from tests.helpers.h1_streams import (
    SOMETIMES,
    H11Side,
    describe,
    feeds,
    key_property,
    merge_data,
    next_fed,
    request_message,
)

MAX = 8192
ANSWER = (404, b"Not Found", [(b"content-length", b"2")], b"no")


class Ours:
    """The ServerConnection under test, with the checks only it can make."""

    def __init__(self, max_header_bytes: int) -> None:
        self.conn = ServerConnection(max_header_bytes=max_header_bytes)
        self.received = b""

    def receive(self, data: bytes) -> None:
        self.received += data
        self.conn.receive_data(data)

    def next_event(self) -> Any:
        event = self.conn.next_event()
        assert event is not PAUSED  # (only asked before the end of each request)
        if type(event) is Request:
            self._check_head(event)
        return None if event is NEED_DATA else event

    def _check_head(self, request: Request) -> None:
        conn = self.conn
        end = len(self.received) - len(conn.buffered())
        head = self.received[end - conn.head_size : end]
        if conn.head_was_fast:  # nothing left for request_rules to find
            assert raw_head_problem(head) is None and reject_reason(request) is None
        else:
            assert conn.raw_head()[: conn.head_size] == head

    def head_size(self) -> int:
        return self.conn.head_size

    def waiting(self) -> bool:
        return self.conn.waiting_for_100_continue

    def send_100(self) -> bytes:
        return self.conn.send_informational(100)

    def respond(self, method: bytes) -> bytes:
        status, reason, headers, body = ANSWER
        out = self.conn.send_response(status, reason, headers)
        if method != b"HEAD":
            out += self.conn.send_data(body)
        return out + self.conn.send_end()

    def reusable(self) -> bool:
        return self.conn.reusable()

    def next_cycle(self) -> None:
        self.conn.start_next_cycle()


class Reference(H11Side):
    """A plain h11 server connection, driven the same way."""

    def __init__(self, max_header_bytes: int) -> None:
        super().__init__(h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes))
        self.cycle_start = 0

    def head_size(self) -> int:
        return self.consumed() - self.cycle_start

    def waiting(self) -> bool:
        return bool(self.conn.they_are_waiting_for_100_continue)

    def send_100(self) -> bytes:
        # h11 writes the reason it is given; ServerConnection picks the standard phrase.
        informational = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
        return self.conn.send(informational) or b""

    def respond(self, method: bytes) -> bytes:
        status, reason, headers, body = ANSWER
        out = self.conn.send(h11.Response(status_code=status, reason=reason, headers=headers))
        if method != b"HEAD":
            out += self.conn.send(h11.Data(data=body)) or b""
        return (out or b"") + (self.conn.send(h11.EndOfMessage()) or b"")

    def reusable(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    def next_cycle(self) -> None:
        self.conn.start_next_cycle()
        self.cycle_start = self.consumed()


def hint(exc: Exception) -> int:
    if isinstance(exc, HTTPProtocolError):
        return exc.status_hint
    assert isinstance(exc, h11.RemoteProtocolError)
    return exc.error_status_hint


def transcript(side: Ours | Reference, groups: list[list[bytes]], send_100: bool) -> list[Any]:
    """What ``side`` makes of the stream: events (Data merged), what is sent back (100
    Continue when ``send_100`` and the client waits, then one small answer per request),
    whether the connection is kept, and how it ends."""
    out: list[Any] = []
    pending = list(groups)
    method = b""
    try:
        while (event := next_fed(side, pending)) is not None:
            entry = describe(event)
            if entry[0] == "Request":
                method = entry[1]
                merge_data(out, (*entry, side.head_size(), side.waiting()))
                if send_100 and side.waiting():
                    out.append(("sent", side.send_100()))
            elif entry[0] == "EndOfMessage":
                out += [(*entry, side.waiting()), ("sent", side.respond(method))]
                out.append(("reusable", side.reusable()))
                if not side.reusable():
                    return out
                side.next_cycle()
            elif entry[0] == "ConnectionClosed":
                return [*out, entry]
            else:
                merge_data(out, entry)
    except (HTTPProtocolError, h11.RemoteProtocolError) as exc:
        return [*out, ("error", hint(exc))]
    return [*out, ("need-data",)]


@st.composite
def request_streams(draw: st.DrawFn) -> tuple[list[list[bytes]], int, bool]:
    """Pipelined requests, cut into groups of pieces, maybe ending with an end of file
    (anywhere: a truncated stream is a client that closed early)."""
    stream = b"".join(draw(st.lists(request_message(), min_size=1, max_size=3)))
    if draw(SOMETIMES):
        stream = stream[: draw(st.integers(0, len(stream)))]
    return draw(feeds(stream)), draw(st.sampled_from([MAX, MAX, MAX, 40])), draw(st.booleans())


@key_property(200)
@given(request_streams())
def test_requests_are_read_as_h11_reads_them(case: tuple[list[list[bytes]], int, bool]) -> None:
    groups, max_header_bytes, send_100 = case
    ours = transcript(Ours(max_header_bytes), groups, send_100)
    assert ours == transcript(Reference(max_header_bytes), groups, send_100)


# --- responses, byte for byte --------------------------------------------------------------

REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"HEAD / HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",  # slow
    b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",  # slow
]

_TOKENS = st.sampled_from([b"close", b"keep-alive", b"Keep-Alive", b"x-a", b"upgrade"])
_CONNECTION = st.lists(_TOKENS, min_size=1, max_size=3).map(b", ".join)
_OTHER = st.tuples(st.sampled_from([b"x-a", b"set-cookie", b"date", b"via"]), st.just(b"1"))


@st.composite
def responses(draw: st.DrawFn) -> tuple[int, bytes, Headers, list[bytes]]:
    """A status, reason, headers (as the request path hands them over: lowercase names,
    valid values; the upstream's Transfer-Encoding kept or dropped) and body pieces."""
    status = draw(st.sampled_from([200, 200, 201, 204, 304, 404, 500]))
    pieces = draw(st.lists(st.binary(max_size=8), max_size=3))
    headers = draw(st.lists(_OTHER, max_size=2))
    headers += [(b"connection", value) for value in draw(st.lists(_CONNECTION, max_size=2))]
    if draw(st.booleans()):
        headers.append((b"content-length", b"%d" % sum(map(len, pieces))))
    if draw(SOMETIMES):
        headers.append((b"transfer-encoding", b"chunked"))
    return status, draw(st.sampled_from([b"OK", b""])), draw(st.permutations(headers)), pieces


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


@key_property(200)
@given(st.sampled_from(REQUESTS), responses())
def test_responses_are_written_byte_for_byte_as_h11_writes_them(
    request: bytes, response: tuple[int, bytes, Headers, list[bytes]]
) -> None:
    status, reason, headers, pieces = response
    ours = ServerConnection(max_header_bytes=MAX)
    reference = h11.Connection(h11.SERVER)
    method = read_request(ours, request)
    assert read_request(reference, request) == method
    if ours.waiting_for_100_continue:
        assert reference.they_are_waiting_for_100_continue
        # h11 writes the reason phrase it is given; ServerConnection picks the standard one.
        sent = reference.send(h11.InformationalResponse(status_code=100, reason=b"Continue"))
        assert ours.send_informational(100) == sent
    assert ours.send_response(status, reason, list(headers)) == reference.send(
        h11.Response(status_code=status, reason=reason, headers=headers)
    )
    if method != b"HEAD" and status not in (204, 304):
        for piece in pieces:
            assert ours.send_data(piece) == reference.send(h11.Data(data=piece))
    assert ours.send_end() == reference.send(h11.EndOfMessage())
    assert (ours.our_state, ours.reusable()) == (
        DONE if reference.our_state is h11.DONE else MUST_CLOSE,
        reference.our_state is reference.their_state is h11.DONE,
    )


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


def test_informational_responses_carry_the_standard_reason_phrase() -> None:
    conn = ServerConnection(max_header_bytes=MAX)
    conn.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
    )
    assert type(conn.next_event()) is Request and conn.waiting_for_100_continue
    assert conn.send_informational(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert not conn.waiting_for_100_continue
    early = conn.send_informational(103, [(b"link", b"</a>")])
    assert early == b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
    assert conn.send_informational(199) == b"HTTP/1.1 199 \r\n\r\n"  # (no phrase known)


# --- tables ----------------------------------------------------------------------------------

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
CHUNKED_UPLOAD = (
    b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
)


def events(conn: ServerConnection) -> list[Event]:
    out: list[Event] = []
    while True:
        event = conn.next_event()
        out.append(event)
        if event is NEED_DATA or event is PAUSED or event is CONNECTION_CLOSED:
            return out


def answer(conn: ServerConnection, headers: Headers | None = None) -> bytes:
    out = conn.send_response(200, b"OK", headers or [(b"content-length", b"2")])
    return out + conn.send_data(b"ok") + conn.send_end()


def test_a_plain_exchange_walks_h11s_states() -> None:
    conn = ServerConnection(max_header_bytes=MAX)
    assert (conn.their_state, conn.our_state) == (IDLE, IDLE)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(GET)
    assert type(conn.next_event()) is Request and conn.head_was_fast
    assert (conn.their_state, conn.our_state, conn.head_size) == (
        SEND_BODY,
        SEND_RESPONSE,
        len(GET),
    )
    assert isinstance(conn.next_event(), EndOfMessage)
    assert conn.their_state == DONE and not conn.reusable() and not conn.response_started
    assert conn.next_event() is PAUSED
    conn.send_response(200, b"OK", [(b"content-length", b"2")])
    assert conn.our_state == SEND_BODY and conn.response_started and not conn.reusable()
    conn.send_data(b"ok")
    conn.send_end()
    assert conn.our_state == DONE and conn.reusable()
    conn.start_next_cycle()
    assert (conn.their_state, conn.our_state, conn.request_method) == (IDLE, IDLE, None)
    conn.receive_data(b"")
    assert events(conn) == [CONNECTION_CLOSED] and conn.client_closed


@pytest.mark.parametrize(
    ("request_bytes", "headers"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", None),
        (b"GET / HTTP/1.0\r\n\r\n", None),
        (GET, [(b"content-length", b"2"), (b"connection", b"close")]),  # our side closes
        (CHUNKED_UPLOAD.replace(b"Host: a", b"Host: a\r\nConnection: close"), None),
    ],
)
def test_a_connection_that_must_close_is_not_reusable(
    request_bytes: bytes, headers: Headers | None
) -> None:
    conn = ServerConnection(max_header_bytes=MAX)
    read_request(conn, request_bytes)
    sent = answer(conn, headers)
    assert b"\r\nConnection: close\r\n" in sent or b"\r\nconnection: close\r\n" in sent
    assert conn.our_state == MUST_CLOSE and not conn.keep_alive and not conn.reusable()
    with pytest.raises(RuntimeError, match="not reusable"):
        conn.start_next_cycle()


def test_sending_out_of_turn_or_off_length_is_refused() -> None:
    conn = ServerConnection(max_header_bytes=MAX)
    with pytest.raises(RuntimeError, match="body data"):
        conn.send_data(b"x")
    with pytest.raises(RuntimeError, match="end a body"):
        conn.send_end()
    read_request(conn, GET)
    conn.send_response(200, b"OK", [(b"content-length", b"2")])
    with pytest.raises(RuntimeError, match="response head"):
        conn.send_response(200, b"OK", [])
    with pytest.raises(RuntimeError, match="too much data"):
        conn.send_data(b"abc")
    conn.send_data(b"a")
    with pytest.raises(RuntimeError, match="too little data"):
        conn.send_end()


def test_a_complete_head_over_the_limit_is_measured_and_an_incomplete_one_refused() -> None:
    big = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"x" * 100 + b"\r\n\r\n"
    conn = ServerConnection(max_header_bytes=64)
    conn.receive_data(big + GET)
    request = conn.next_event()
    assert type(request) is Request and not conn.head_was_fast  # h11 took it whole...
    assert conn.head_size == len(big) > 64  # ... and the caller sees its size (431)
    assert conn.raw_head().startswith(big)

    conn = ServerConnection(max_header_bytes=64)
    conn.receive_data(big[:65])
    with pytest.raises(HTTPProtocolError) as caught:
        conn.next_event()
    assert caught.value.status_hint == 431

    conn = ServerConnection(max_header_bytes=64)
    conn.receive_data(big[:64])  # at the limit: h11 waits, as it would
    assert conn.next_event() is NEED_DATA


def test_a_slow_path_request_keeps_its_raw_head_and_hands_the_rest_back() -> None:
    conn = ServerConnection(max_header_bytes=MAX)
    conn.receive_data(CHUNKED_UPLOAD[:40])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(CHUNKED_UPLOAD[40:] + GET)
    request = conn.next_event()
    assert type(request) is Request and not conn.head_was_fast
    head_end = CHUNKED_UPLOAD.index(b"\r\n\r\n") + 4
    assert conn.head_size == head_end
    assert conn.raw_head().startswith(CHUNKED_UPLOAD[:head_end])
    assert conn.buffered() == CHUNKED_UPLOAD[head_end:] + GET and conn.has_buffered()
    body = events(conn)
    assert [type(e) for e in body] == [Data, EndOfMessage, type(PAUSED)]
    assert isinstance(body[0], Data) and body[0].data == b"abc"
    answer(conn)
    conn.start_next_cycle()
    assert conn.buffered() == GET  # the pipelined request is back on the fast path
    assert type(conn.next_event()) is Request and conn.head_was_fast
    assert conn.raw_head() == b""


@pytest.mark.parametrize(
    ("request_bytes", "waiting"),
    [
        (b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n", True),
        (b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", False),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n", False),
    ],
)
def test_the_client_waits_for_100_continue_as_h11_says(request_bytes: bytes, waiting: bool) -> None:
    conn = ServerConnection(max_header_bytes=MAX)
    conn.receive_data(request_bytes)
    assert type(conn.next_event()) is Request
    assert conn.waiting_for_100_continue is waiting
    conn.send_response(417 if waiting else 200, b"", [(b"content-length", b"0")])
    assert not conn.waiting_for_100_continue


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


@pytest.mark.parametrize(
    "data",
    [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab",  # fast path
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",  # slow path
    ],
)
def test_an_end_of_file_mid_body_is_a_400_after_the_bytes_that_came(data: bytes) -> None:
    conn = ServerConnection(max_header_bytes=MAX)
    conn.receive_data(data)
    conn.receive_data(b"")
    assert type(conn.next_event()) is Request
    body = conn.next_event()
    assert isinstance(body, Data) and body.data == b"ab"
    with pytest.raises(HTTPProtocolError, match="peer closed connection") as caught:
        conn.next_event()
    assert caught.value.status_hint == 400
