"""core.machine against h11: random client and upstream byte streams, the same framing.

Requests: a random sequence of requests (body-less, Content-Length and chunked bodies, HTTP/1.0,
``Connection: close``), pipelined, split at random points, goes through the machine (the
upstream answers each with a short response); h11 parses the same client bytes. The requests
the machine forwarded, parsed back by h11, must be those h11 read from the client — same
methods, targets and bodies, in order — up to where h11 says the connection ends.

Responses: a random response (Content-Length, chunked, read-until-close, 204/304, HEAD) split at
random points goes through the machine; h11 parses what the client got: the same status and
body as h11 reads from the upstream's bytes.
"""

from __future__ import annotations

from typing import Any

import h11
from hypothesis import given, settings
from hypothesis import strategies as st

from gateproxy.core.actions import Acquire
from gateproxy.core.machine import WAIT_ACTIONS, WAIT_UPSTREAM
from tests.helpers.machine import Play

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

_BODIES = st.binary(max_size=40)


@st.composite
def _request(draw: Any) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD"]))
    target = draw(st.sampled_from([b"/", b"/a?b=c", b"/x/y"]))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    headers = [b"Host: app.test"] if version == b"1.1" or draw(st.booleans()) else []
    body = b""
    if method in (b"POST", b"PUT"):
        body = draw(_BODIES)
        if version == b"1.1" and draw(st.booleans()):
            headers.append(b"Transfer-Encoding: chunked")
            cut = draw(st.integers(0, len(body)))
            chunks = [c for c in (body[:cut], body[cut:]) if c]
            body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        else:
            headers.append(b"Content-Length: %d" % len(body))
    if draw(st.integers(0, 5)) == 0:
        headers.append(b"Connection: close")
    if draw(st.integers(0, 5)) == 0:
        headers.append(b"X-Extra: 1")
    return b"%s %s HTTP/%s\r\n%s\r\n\r\n%s" % (
        method,
        target,
        version,
        b"\r\n".join(headers),
        body,
    )


def _h11_requests(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(method, target, body) of every request h11 reads from a client's bytes, in order."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    out: list[tuple[bytes, bytes, bytes]] = []
    current: list[Any] = []
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return out
        if event is h11.NEED_DATA or event is h11.PAUSED:
            if conn.our_state is h11.SEND_RESPONSE:
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
                continue
            return out
        if isinstance(event, h11.Request):
            current = [bytes(event.method), bytes(event.target), b""]
        elif isinstance(event, h11.Data):
            current[2] += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            out.append((current[0], current[1], current[2]))
        else:
            return out


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return [p for p in pieces if p]


@settings(max_examples=150, deadline=None)
@given(st.lists(_request(), min_size=1, max_size=4), st.lists(st.integers(0, 10**6), max_size=5))
def test_the_machine_forwards_exactly_the_requests_h11_reads(
    requests: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(requests)
    play = Play()
    upstream = bytearray()
    for piece in _split(data, cuts):
        play.client(piece)
        while play.machine.wait == WAIT_ACTIONS and play.of(Acquire)[len(play.conns) :]:
            play.ready(reused=bool(play.conns))
        upstream += play.to_upstream()
        if play.machine.wait == WAIT_UPSTREAM:
            play.upstream(OK)
            while play.machine.wait == WAIT_ACTIONS and play.of(Acquire)[len(play.conns) :]:
                play.ready(reused=True)
                upstream += play.to_upstream()
                if play.machine.wait == WAIT_UPSTREAM:
                    play.upstream(OK)
    forwarded = _h11_requests(bytes(upstream))
    expected = _h11_requests(data)
    assert forwarded == expected[: len(forwarded)]
    if play.machine.wait == WAIT_UPSTREAM or len(forwarded) < len(expected):
        return  # the machine is still on it (its last request had no EOF), or closed early
    assert forwarded == expected


_RESPONSES = st.one_of(
    st.builds(
        lambda body: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        _BODIES,
    ),
    st.builds(
        lambda body: (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"%x\r\n%s\r\n" % (len(body), body) if body else b"")
            + b"0\r\n\r\n"
        ),
        _BODIES,
    ),
    st.builds(lambda body: b"HTTP/1.0 200 OK\r\n\r\n" + body, _BODIES),
    st.just(b"HTTP/1.1 204 No Content\r\n\r\n"),
    st.just(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
)


def _h11_response(data: bytes, *, method: bytes, eof: bool) -> tuple[int, bytes] | None:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "a")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    status, body = 0, b""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return None
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return status, body
        else:
            return None


@settings(max_examples=150, deadline=None)
@given(_RESPONSES, st.sampled_from([b"GET", b"HEAD"]), st.lists(st.integers(0, 10**6), max_size=4))
def test_the_client_gets_the_response_h11_reads_from_the_upstream(
    response: bytes, method: bytes, cuts: list[int]
) -> None:
    play = Play().client(b"%s / HTTP/1.1\r\nHost: a\r\n\r\n" % method)
    play.ready()
    for piece in _split(response, cuts):
        if play.machine.wait == WAIT_UPSTREAM:  # (the pump stops reading once it is complete)
            play.upstream(piece)
    if play.machine.wait == WAIT_UPSTREAM:
        play.upstream(b"")  # read-until-close: the upstream's EOF ends it
    expected = _h11_response(response, method=method, eof=True)
    got = _h11_response(play.to_client(), method=method, eof=True)
    assert expected is not None and got == expected
