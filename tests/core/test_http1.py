"""The fast HTTP/1.1 path: it accepts a strict subset of what h11 accepts, agrees with h11 on
everything it accepts, and never lets through a head that ``request_rules`` would refuse."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateproxy.core.http1 import (
    MORE,
    UNUSUAL,
    FastHeaders,
    ResponseHead,
    content_length,
    fast_headers,
    parse_request_head,
    parse_response_head,
    write_request,
    write_response,
)
from gateproxy.core.request_rules import raw_head_problem, reject_reason

MAX = 8192


def h11_request(data: bytes) -> tuple[h11.Request, h11.Event] | None:
    """h11's Request and the event after it for ``data``, or None if h11 refuses it."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        request = conn.next_event()
        after = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    assert isinstance(request, h11.Request)
    return request, after  # type: ignore[return-value]


def h11_response(data: bytes, *, method: bytes = b"GET") -> list[object]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "a")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    events: list[object] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return events
        events.append(event)
        if isinstance(event, h11.EndOfMessage):
            return events


PLAIN_GET = b"GET /a?b=c HTTP/1.1\r\nHost: app.test\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"


def test_a_plain_get_is_parsed_like_h11() -> None:
    parsed = parse_request_head(PLAIN_GET + b"GET /next", max_bytes=MAX)
    assert not isinstance(parsed, str)
    request, size = parsed
    assert size == len(PLAIN_GET)
    reference = h11_request(PLAIN_GET)
    assert reference is not None
    assert request == reference[0]
    assert list(request.headers) == [
        (b"host", b"app.test"),
        (b"user-agent", b"wrk"),
        (b"accept", b"*/*"),
    ]


def test_fast_headers_are_h11_headers_with_the_same_items() -> None:
    fields = [(b"Host", b"a"), (b"X-Seen", b"1"), (b"x-seen", b"2"), (b"content-length", b"0")]
    fast = fast_headers(fields)
    reference = h11.Request(method=b"GET", target=b"/", headers=fields).headers
    assert (
        list(fast)
        == list(reference)
        == [
            (b"host", b"a"),
            (b"x-seen", b"1"),
            (b"x-seen", b"2"),
            (b"content-length", b"0"),
        ]
    )
    assert fast == reference and len(fast) == 4 and fast[1] == (b"x-seen", b"1")
    assert fast.raw_items() == reference.raw_items()  # raw case kept for h11's writer
    request = h11.Request(method=b"GET", target=b"/", headers=fast, _parsed=True)
    assert request.headers is fast


def test_parsed_heads_carry_fast_headers() -> None:
    parsed = parse_request_head(PLAIN_GET, max_bytes=MAX)
    assert not isinstance(parsed, str)
    assert type(parsed[0].headers) is FastHeaders
    head = parse_response_head(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", request_method=b"GET", max_bytes=MAX
    )
    assert isinstance(head, ResponseHead)
    assert type(head.response.headers) is FastHeaders


@pytest.mark.parametrize(
    "head", [b"GET / HTTP/1.0\r\n\r\n", b"HEAD /x HTTP/1.0\r\nHost: a\r\nUser-Agent: c\r\n\r\n"]
)
def test_an_http10_request_is_parsed_like_h11(head: bytes) -> None:
    parsed = parse_request_head(head, max_bytes=MAX)
    assert not isinstance(parsed, str)
    request, size = parsed
    reference = h11_request(head)
    assert reference is not None
    assert (request, size) == (reference[0], len(head))
    assert request.http_version == b"1.0"
    assert reject_reason(request) is None and raw_head_problem(head) is None


@pytest.mark.parametrize(
    "data",
    [b"", b"GET / HTTP/1.1\r\nHost: a\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n\r"],
)
def test_an_incomplete_head_needs_more(data: bytes) -> None:
    assert parse_request_head(data, max_bytes=MAX) == MORE


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\nHost: a\n\n",  # bare LF
        b"GET / HTTP/1.1\r\nHost: a\n\r\n",  # bare LF at the end
        b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",  # HTTP/1.0, two Hosts
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",  # 1.0 keep-alive: h11 decides
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",  # absolute form
        b"GET /#f HTTP/1.1\r\nHost: a\r\n\r\n",  # fragment
        b"get / HTTP/1.1\r\nHost: a\r\n\r\n",  # lower-case method
        b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",  # control character
        b"GET / HTTP/1.1\r\nHost: a\r\nX : 1\r\n\r\n",  # space before the colon
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",  # bare CR
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello: h11 refuses it now
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
)
def test_anything_unusual_is_left_to_h11(data: bytes) -> None:
    assert parse_request_head(data, max_bytes=MAX) == UNUSUAL


def test_a_head_over_the_limit_is_left_to_h11() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"x" * 100 + b"\r\n\r\n"
    assert parse_request_head(head, max_bytes=len(head)) != UNUSUAL
    assert parse_request_head(head, max_bytes=len(head) - 1) == UNUSUAL
    assert parse_request_head(head[:-4], max_bytes=len(head) - 4) == UNUSUAL


def test_content_length_zero_is_a_plain_request() -> None:
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
    parsed = parse_request_head(head, max_bytes=MAX)
    assert not isinstance(parsed, str)
    assert parsed[0].method == b"POST"


def _mostly(good: list[bytes], bad: list[bytes]) -> st.SearchStrategy[bytes]:
    """Usually a valid value, sometimes a hostile one."""
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(bad))


_NAMES = _mostly(
    [b"X-A", b"Cookie", b"Accept", b"Content-Length"],
    [b"Host", b"Connection", b"Transfer-Encoding", b"X ", b" X", b"X\x01"],
)
_VALUES = st.one_of(
    st.sampled_from([b" 0", b" a b", b"1", b"\t", b" x\ty ", b" a\x01b", b"\x7f", b"\xff"]),
    st.binary(max_size=8),
)
_HEADS = st.builds(
    lambda method, target, host, fields, sep, version: (
        b"%s %s HTTP/%s%s" % (method, target, version, sep)
        + b"".join(b"%s:%s%s" % (n, v, sep) for n, v in [*host, *fields])
        + sep
    ),
    _mostly([b"GET", b"POST", b"HEAD"], [b"TRACE", b"get", b"G\x00T", b"CONNECT"]),
    _mostly([b"/", b"/a?b=%20", b"/~x"], [b"*", b"/#x", b"http://h/", b"/\x7f", b"/ /"]),
    st.lists(
        st.tuples(st.just(b"Host"), _mostly([b" a.test", b"a:8", b" [::1]:9"], [b"a/b", b""])),
        min_size=1,
        max_size=2,
    ),
    st.lists(st.tuples(_NAMES, _VALUES), max_size=4),
    _mostly([b"\r\n"], [b"\n", b"\r"]),
    _mostly([b"1.1"], [b"1.0", b"2.0"]),
)


@settings(max_examples=500, deadline=None)
@given(_HEADS)
def test_whatever_the_fast_parser_accepts_h11_and_every_rule_accept_the_same(head: bytes) -> None:
    parsed = parse_request_head(head, max_bytes=MAX)
    if isinstance(parsed, str):
        return
    request, size = parsed
    assert size == len(head)
    reference = h11_request(head)
    assert reference is not None
    assert request == reference[0]
    assert isinstance(reference[1], h11.EndOfMessage)  # never a body on the fast path
    assert raw_head_problem(head) is None
    assert reject_reason(request) is None


def test_a_content_length_response_is_parsed_like_h11() -> None:
    data = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n"
    head = parse_response_head(data + b"hello", request_method=b"GET", max_bytes=MAX)
    assert isinstance(head, ResponseHead)
    assert (head.size, head.body_length, head.keep_alive) == (len(data), 5, True)
    assert head.response == h11_response(data + b"hello")[0]


@pytest.mark.parametrize(
    ("data", "method", "length", "keep_alive"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"GET", 0, True),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", b"GET", 0, True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", b"HEAD", 0, True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: Close\r\n\r\n", b"GET", 3, False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", b"GET", 3, False),
    ],
)
def test_response_framing(data: bytes, method: bytes, length: int, keep_alive: bool) -> None:
    head = parse_response_head(data, request_method=method, max_bytes=MAX)
    assert isinstance(head, ResponseHead)
    assert (head.body_length, head.keep_alive) == (length, keep_alive)


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",  # read until close
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 1\n\n",
        b"HTTP/2 200 OK\r\nContent-Length: 1\r\n\r\n",
        b"garbage\r\n\r\n",
    ],
)
def test_unusual_responses_are_left_to_h11(data: bytes) -> None:
    assert parse_response_head(data, request_method=b"GET", max_bytes=MAX) == UNUSUAL


def test_heads_are_written_as_h11_writes_them() -> None:
    headers = [(b"x-a", b"1"), (b"host", b"h"), (b"content-length", b"0")]
    client = h11.Connection(h11.CLIENT)
    expected = client.send(h11.Request(method=b"GET", target=b"/p", headers=headers))
    assert write_request(b"GET", b"/p", headers) == expected
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    server.next_event()
    response_headers = [(b"content-length", b"2"), (b"via", b"1.1 gateproxy")]
    expected = server.send(h11.Response(status_code=200, headers=response_headers, reason=b"OK"))
    assert write_response(200, b"OK", response_headers) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"content-length", b"12")], 12),
        ([], None),
        ([(b"content-length", b"1"), (b"content-length", b"1")], None),
        ([(b"content-length", b"1"), (b"transfer-encoding", b"chunked")], None),
        ([(b"content-length", b"x")], None),
    ],
)
def test_content_length_of_outgoing_headers(
    headers: list[tuple[bytes, bytes]], expected: int | None
) -> None:
    assert content_length(headers) == expected
