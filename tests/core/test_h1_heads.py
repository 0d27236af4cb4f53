"""core.h1_heads: the strict fast parsers accept a subset of what h11 accepts, agree with h11 on
everything they accept (the head, the body framing and length, keep-alive), and never let
through a request head that ``request_rules`` would refuse; the writers write h11's bytes."""

from __future__ import annotations

from typing import Any

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateproxy.core.h1_heads import (
    LAST_CHUNK,
    MORE,
    UNUSUAL,
    RequestHead,
    ResponseHead,
    connection_close,
    content_length,
    parse_request_head,
    parse_response_head,
    without,
    write_chunk,
    write_request,
    write_response,
)
from gateproxy.core.http_events import Headers
from gateproxy.core.request_rules import raw_head_problem, reject_reason
from tests.helpers.h1_streams import describe, key_property, request_message, response_message

MAX = 8192
PLAIN_GET = b"GET /a?b=c HTTP/1.1\r\nHost: app.test\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"


def h11_events(conn: h11.Connection, data: bytes) -> list[Any]:
    """Every event h11 makes of ``data`` until it needs more or pauses (None: it refused)."""
    conn.receive_data(data)
    events: list[Any] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return events
        events.append(event)
        if isinstance(event, h11.EndOfMessage):
            return events


def h11_server() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX)


def h11_client(method: bytes) -> h11.Connection:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "a")]))
    conn.send(h11.EndOfMessage())
    return conn


def assert_framed_like_h11(
    conn: h11.Connection, head: bytes, *, first: Any, body_length: int, keep_alive: bool
) -> None:
    """h11 reads ``head`` as ``first``, then exactly ``body_length`` body bytes, then the end
    of the message, and keeps the connection alive exactly when the fast parser said so."""
    events = h11_events(conn, head + b"b" * body_length)
    assert describe(events[0]) == describe(first)
    assert [type(e) for e in events[1:-1]] == [h11.Data] * (len(events) - 2)
    assert sum(len(e.data) for e in events[1:-1]) == body_length
    assert type(events[-1]) is h11.EndOfMessage
    assert conn.trailing_data == (b"", False)
    assert (conn.their_state is h11.DONE) == keep_alive


# --- request heads -----------------------------------------------------------------------


def test_a_plain_get_is_parsed_like_h11() -> None:
    parsed = parse_request_head(PLAIN_GET + b"GET /next", max_bytes=MAX)
    assert isinstance(parsed, RequestHead)
    assert (parsed.size, parsed.body_length, parsed.keep_alive) == (len(PLAIN_GET), 0, True)
    assert parsed.request.headers == [
        (b"host", b"app.test"),
        (b"user-agent", b"wrk"),
        (b"accept", b"*/*"),
    ]
    assert_framed_like_h11(
        h11_server(), PLAIN_GET, first=parsed.request, body_length=0, keep_alive=True
    )


@pytest.mark.parametrize(
    ("head", "body_length", "keep_alive"),
    [
        (b"GET / HTTP/1.0\r\n\r\n", 0, False),
        (b"HEAD /x HTTP/1.0\r\nHost: a\r\nUser-Agent: c\r\n\r\n", 0, False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 0, False),  # as h11: 1.0 closes
        (b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", 5, True),
        (b"PUT /u HTTP/1.1\r\nHost: a\r\ncontent-length: 007\r\n\r\n", 7, True),
        (b"POST /u HTTP/1.0\r\nContent-Length: 3\r\n\r\n", 3, False),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 0, True),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 0, True),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 0, False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, CLOSE\r\n\r\n", 0, False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", 0, True),
    ],
)
def test_plain_requests_are_framed_like_h11(
    head: bytes, body_length: int, keep_alive: bool
) -> None:
    parsed = parse_request_head(head, max_bytes=MAX)
    assert isinstance(parsed, RequestHead)
    assert (parsed.size, parsed.body_length, parsed.keep_alive) == (
        len(head),
        body_length,
        keep_alive,
    )
    assert_framed_like_h11(
        h11_server(), head, first=parsed.request, body_length=body_length, keep_alive=keep_alive
    )
    assert reject_reason(parsed.request) is None and raw_head_problem(head) is None


def test_an_incomplete_head_needs_more() -> None:
    for data in [b"", b"G", b"GET / HTTP/1.1\r\nHost: a\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n\r"]:
        assert parse_request_head(data, max_bytes=MAX) == MORE, data


UNUSUAL_REQUESTS = [
    b"GET / HTTP/1.1\nHost: a\n\n",  # bare LF
    b"GET / HTTP/1.1\r\nHost: a\n\r\n",  # bare LF at the end
    b"GET / HTTP/1.1\r\nHost: a\n\r\nX: 1\r\n\r\n",  # h11 ends the head at the bare LF
    b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n",  # obs-fold
    b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",  # HTTP/1.0, two Hosts
    b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",  # absolute form
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",  # asterisk form
    b"GET /#f HTTP/1.1\r\nHost: a\r\n\r\n",  # fragment
    b"get / HTTP/1.1\r\nHost: a\r\n\r\n",  # lower-case method
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # no Host
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",  # control character
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX : 1\r\n\r\n",  # space before the colon
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",  # bare CR
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",  # a body on GET
    b"HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1234567890123456789\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n",  # names a header
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, x-secret\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close,\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello: h11 refuses it now
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
]


def test_anything_unusual_is_left_to_h11() -> None:
    decided = [d for d in UNUSUAL_REQUESTS if parse_request_head(d, max_bytes=MAX) != UNUSUAL]
    assert decided == []


def test_a_head_over_the_limit_is_left_to_h11() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"x" * 100 + b"\r\n\r\n"
    assert isinstance(parse_request_head(head, max_bytes=len(head)), RequestHead)
    assert parse_request_head(head, max_bytes=len(head) - 1) == UNUSUAL
    assert parse_request_head(head[:-4], max_bytes=len(head) - 4) == UNUSUAL
    assert parse_request_head(head[:-4], max_bytes=len(head) - 3) == MORE


@key_property(200)
@given(request_message())
def test_whatever_the_fast_parser_accepts_h11_and_every_rule_accept_the_same(
    message: bytes,
) -> None:
    parsed = parse_request_head(message, max_bytes=MAX)
    if not isinstance(parsed, RequestHead):
        assert parsed in (MORE, UNUSUAL)
        return
    head = message[: parsed.size]
    assert head.endswith(b"\r\n\r\n") and head.count(b"\r\n\r\n") == 1
    assert_framed_like_h11(
        h11_server(),
        head,
        first=parsed.request,
        body_length=parsed.body_length,
        keep_alive=parsed.keep_alive,
    )
    assert raw_head_problem(head) is None
    assert reject_reason(parsed.request) is None


# --- response heads ----------------------------------------------------------------------


def test_a_content_length_response_is_parsed_like_h11() -> None:
    data = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n"
    head = parse_response_head(data + b"hello", request_method=b"GET", max_bytes=MAX)
    assert isinstance(head, ResponseHead)
    assert (head.size, head.body_length, head.keep_alive) == (len(data), 5, True)
    assert head.response.reason == b"OK" and head.response.http_version == b"1.1"
    assert_framed_like_h11(
        h11_client(b"GET"), data, first=head.response, body_length=5, keep_alive=True
    )


@pytest.mark.parametrize(
    ("data", "method", "length", "keep_alive"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"GET", 0, True),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", b"GET", 0, True),
        (b"HTTP/1.1 304 Not Modified\r\n\r\n", b"GET", 0, True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", b"HEAD", 0, True),
        (b"HTTP/1.1 200 OK\r\n\r\n", b"HEAD", 0, True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: Close\r\n\r\n", b"GET", 3, False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", b"GET", 3, False),
        (b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", b"POST", 0, True),  # no reason phrase
        (b"HTTP/1.1 500 \t\xff\r\nContent-Length: 1\r\n\r\n", b"GET", 1, True),
    ],
)
def test_response_framing_is_h11s(
    data: bytes, method: bytes, length: int, keep_alive: bool
) -> None:
    head = parse_response_head(data, request_method=method, max_bytes=MAX)
    assert isinstance(head, ResponseHead)
    assert (head.size, head.body_length, head.keep_alive) == (len(data), length, keep_alive)
    assert_framed_like_h11(
        h11_client(method), data, first=head.response, body_length=length, keep_alive=keep_alive
    )


UNUSUAL_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 204 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n",  # read until close
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"HTTP/1.1 600 Odd\r\nContent-Length: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 1\n\n",
    b"HTTP/1.1 200 OK\r\nX: a\x7f\r\nContent-Length: 1\r\n\r\n",
    b"HTTP/2 200 OK\r\nContent-Length: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n: empty name\r\nContent-Length: 1\r\n\r\n",
    b"garbage\r\n\r\n",
]


def test_unusual_responses_are_left_to_h11() -> None:
    decided = [
        data
        for data in UNUSUAL_RESPONSES
        if parse_response_head(data, request_method=b"GET", max_bytes=MAX) != UNUSUAL
    ]
    assert decided == []


def test_an_incomplete_response_head_needs_more_and_a_long_one_is_left_to_h11() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"
    assert parse_response_head(data[:-1], request_method=b"GET", max_bytes=MAX) == MORE
    assert isinstance(
        parse_response_head(data, request_method=b"GET", max_bytes=len(data)), ResponseHead
    )
    assert parse_response_head(data, request_method=b"GET", max_bytes=len(data) - 1) == UNUSUAL


@key_property(150)
@given(response_message(), st.sampled_from([b"GET", b"HEAD", b"POST"]))
def test_whatever_the_fast_response_parser_accepts_h11_frames_the_same(
    message: bytes, method: bytes
) -> None:
    parsed = parse_response_head(message, request_method=method, max_bytes=MAX)
    if not isinstance(parsed, ResponseHead):
        assert parsed in (MORE, UNUSUAL)
        return
    assert_framed_like_h11(
        h11_client(method),
        message[: parsed.size],
        first=parsed.response,
        body_length=parsed.body_length,
        keep_alive=parsed.keep_alive,
    )


# --- writers -----------------------------------------------------------------------------

_NAME = st.sampled_from([b"X-A", b"x-b", b"Accept", b"VIA", b"set-cookie", b"Date", b"a"])
_VALUE = st.lists(st.sampled_from([b"a", b"1", b" ", b"\t", b"\xff", b"=", b"/"]), max_size=6).map(
    lambda parts: b"".join(parts).strip(b" \t")
)
_FIELDS = st.lists(st.tuples(_NAME, _VALUE), max_size=5)


@key_property(100)
@given(
    st.sampled_from([b"GET", b"POST", b"X-Y"]),
    st.sampled_from([b"/", b"/a?b=%20c", b"/~"]),
    _FIELDS,
    st.integers(0, 5),
    st.sampled_from([[], [(b"Content-Length", b"5")], [(b"transfer-encoding", b"chunked")]]),
)
def test_a_request_head_is_written_as_h11_writes_it(
    method: bytes,
    target: bytes,
    fields: Headers,
    host_at: int,
    framing: Headers,
) -> None:
    # Other names keep their case, as in h11; "host" comes lowercase, as every header name
    # that the parsers and core.headers make (the writer puts it first by that name).
    headers = [*fields, *framing]
    headers.insert(min(host_at, len(headers)), (b"host", b"app.test:8"))
    client = h11.Connection(h11.CLIENT)
    expected = client.send(h11.Request(method=method, target=target, headers=headers))
    assert write_request(method, target, headers) == expected


def h11_server_after(request: bytes) -> h11.Connection:
    """An h11 server that has read ``request`` (a body-less one)."""
    conn = h11.Connection(h11.SERVER)
    events = h11_events(conn, request)
    assert type(events[-1]) is h11.EndOfMessage
    return conn


@key_property(100)
@given(
    st.sampled_from([200, 204, 304, 404, 503, 599]),
    st.sampled_from([b"OK", b"", b"Not Found", b"a\tb \xff"]),
    _FIELDS,
    st.integers(0, 5),
)
def test_a_response_head_is_written_as_h11_writes_it(
    status: int, reason: bytes, fields: Headers, length_at: int
) -> None:
    headers = list(fields)
    headers.insert(min(length_at, len(headers)), (b"content-length", b"0"))  # h11 keeps it
    server = h11_server_after(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    expected = server.send(h11.Response(status_code=status, headers=headers, reason=reason))
    assert write_response(status, reason, headers) == expected


@pytest.mark.parametrize("status", [100, 103])
def test_an_informational_head_is_written_as_h11_writes_it(status: int) -> None:
    server = h11_server_after(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    headers = [(b"link", b"</a>; rel=preload")]
    expected = server.send(
        h11.InformationalResponse(status_code=status, headers=headers, reason=b"Continue")
    )
    assert write_response(status, b"Continue", headers) == expected


@given(st.lists(st.binary(max_size=20), max_size=4))
def test_chunks_are_written_as_h11_writes_them(pieces: list[bytes]) -> None:
    server = h11_server_after(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    server.send(h11.Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")]))
    for piece in pieces:
        assert write_chunk(piece) == server.send(h11.Data(data=piece))
    assert server.send(h11.EndOfMessage()) == LAST_CHUNK


_TOKENS = st.sampled_from([b"close", b"keep-alive", b"Keep-Alive", b"x-a", b"Upgrade", b""])


@key_property(100)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"connection", b"x-a"]),
            st.lists(_TOKENS, max_size=3).map(lambda t: b", ".join(t).strip(b", ")),
        ),
        max_size=4,
    ),
    st.integers(0, 4),
)
def test_connection_close_merges_tokens_as_h11_does(fields: Headers, length_at: int) -> None:
    headers = list(fields)
    headers.insert(min(length_at, len(headers)), (b"content-length", b"3"))
    server = h11_server_after(b"GET / HTTP/1.0\r\n\r\n")  # HTTP/1.0: h11 adds Connection: close
    expected = server.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
    assert write_response(200, b"OK", connection_close(headers)) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"content-length", b"12")], 12),
        ([(b"content-length", b"012")], 12),
        ([], -1),
        ([(b"x-a", b"1")], -1),
        ([(b"content-length", b"1"), (b"content-length", b"1")], -2),
        ([(b"content-length", b"1"), (b"transfer-encoding", b"chunked")], -2),
        ([(b"transfer-encoding", b"chunked")], -2),
        ([(b"content-length", b"x")], -2),
        ([(b"content-length", b"1, 1")], -2),
    ],
)
def test_content_length_of_outgoing_headers(headers: Headers, expected: int) -> None:
    assert content_length(headers) == expected


def test_without_drops_every_field_of_that_name() -> None:
    headers = [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]
    assert without(headers, b"a") == [(b"b", b"2")]
    assert without(headers, b"c") == headers
