"""HTTP/1.1 as the client, sans-IO: the upstream-facing half of the parser pair (h11-shaped).

Theory of operation. :class:`ClientConnection` writes requests itself (``core.h1_heads``, the
bytes h11 would write) and parses responses on the strict fast parser first: a final response
head with ``Content-Length`` framing (or none needed: HEAD, 204, 304). Anything else — chunked,
read-until-close, 1xx, a head the fast parser calls unusual — is handed with its bytes to an h11
client connection told about the request that was sent (``core.h11_fallback.client_parser``).
After the exchange the connection goes back to the fast path when it can be reused.

One object lives as long as one upstream connection; the shell keeps the socket, this keeps the
protocol state and the few facts the request path decides on: ``server``, ``reused`` (it came
from the keep-alive pool), ``requests_served`` and ``bytes_received`` in this exchange (a reused
connection that fails before any response byte may be retried).

Where it differs from an h11 client connection, on purpose (tests/core/test_h1_client.py drives
both with the same bytes and checks they agree on everything else): ``max_head`` bounds every
head, complete or not, and all the heads of one exchange together (1xx ones included), where
h11 bounds each incomplete head; :meth:`reusable` is False when the server sent bytes after the
response or closed its side (h11 would start the next cycle with them); after a fast-path
response, :meth:`next_event` says PAUSED until :meth:`start_next_cycle`.
"""

from __future__ import annotations

from typing import Final

import h11

from gateproxy.core import h11_fallback as slow
from gateproxy.core.h1_heads import (
    LAST_CHUNK,
    MORE,
    ResponseHead,
    content_length,
    parse_response_head,
    write_chunk,
    write_request,
)
from gateproxy.core.http_events import (
    DONE,
    END_OF_MESSAGE,
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
    InformationalResponse,
    Request,
    Response,
)
from gateproxy.errors import HTTPProtocolError

MAX_RESPONSE_HEAD: Final = 64 * 1024
_LENGTH: Final = 0
_CHUNKED: Final = 1


class ClientConnection:
    """The client side of one HTTP/1.1 connection to an upstream server."""

    __slots__ = (
        "_body_left",
        "_buf",
        "_eof",
        "_fed",
        "_h11",
        "_keep_alive",
        "_max_head",
        "_out_framing",
        "_out_left",
        "_request",
        "bytes_received",
        "head_size",
        "our_state",
        "requests_served",
        "reused",
        "server",
        "their_state",
    )

    def __init__(self, *, server: str, max_head: int = MAX_RESPONSE_HEAD) -> None:
        self.server = server
        self._max_head = max_head
        self._buf = bytearray()
        self._eof = False
        self._h11: h11.Connection | None = None
        self._fed = 0
        self._request: Request | None = None
        self._body_left = -1  # response body bytes left on the fast path; -1: no head yet
        self._keep_alive = True
        self._out_framing = _LENGTH
        self._out_left = 0
        self.our_state = IDLE
        self.their_state = IDLE
        self.head_size = 0
        self.reused = False
        self.requests_served = 0
        self.bytes_received = 0

    # --- sending ----------------------------------------------------------------------------

    def send_request(self, method: bytes, target: bytes, headers: Headers) -> bytes:
        """The bytes of a request head; its framing comes from ``headers`` (Content-Length,
        ``Transfer-Encoding: chunked``, or neither for an empty body)."""
        if self.our_state != IDLE:
            raise RuntimeError(f"cannot send a request in state {self.our_state}")
        request = Request(method=method, target=target, headers=headers)
        self._request = request
        length = content_length(headers)
        self._out_framing = _CHUNKED if length == -2 else _LENGTH
        self._out_left = max(length, 0)
        self._keep_alive = not _has_close(headers)
        self.our_state = SEND_BODY
        self.their_state = SEND_RESPONSE
        return write_request(method, target, headers)

    def send_data(self, data: bytes) -> bytes:
        if self.our_state != SEND_BODY:
            raise RuntimeError(f"cannot send body data in state {self.our_state}")
        if self._out_framing == _CHUNKED:
            return write_chunk(data)
        if len(data) > self._out_left:
            raise RuntimeError("too much data for the declared Content-Length")
        self._out_left -= len(data)
        return data

    def send_end(self) -> bytes:
        if self.our_state != SEND_BODY:
            raise RuntimeError(f"cannot end a body in state {self.our_state}")
        if self._out_framing == _LENGTH and self._out_left:
            raise RuntimeError("too little data for the declared Content-Length")
        self.our_state = DONE
        return LAST_CHUNK if self._out_framing == _CHUNKED else b""

    # --- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the server; ``b""`` means it closed the connection (a body cut short
        is an error from ``next_event``, once the bytes before the end are read, as in h11)."""
        self.bytes_received += len(data)
        if not data:
            self._eof = True
        if self._h11 is not None:
            self._fed += len(data)
            slow.receive(self._h11, data)
        elif data:
            self._buf += data

    def next_event(self) -> Event:
        """The next event from the server, or NEED_DATA / PAUSED."""
        if self._h11 is not None:
            return self._slow_event()
        if self.their_state == DONE:
            return PAUSED
        if self._request is None:
            if self._buf or self._eof:
                raise HTTPProtocolError("the server sent bytes before any request")
            return NEED_DATA
        if self._body_left < 0:
            return self._head_event()
        return self._body_event()

    def _head_event(self) -> Event:
        assert self._request is not None
        parsed = parse_response_head(
            self._buf, request_method=self._request.method, max_bytes=self._max_head
        )
        if isinstance(parsed, ResponseHead):
            return self._fast_response(parsed)
        if parsed == MORE and not self._eof:
            return NEED_DATA
        self._to_h11()
        return self._slow_event()

    def _fast_response(self, head: ResponseHead) -> Response:
        del self._buf[: head.size]
        self.head_size = head.size
        self._body_left = head.body_length
        self._keep_alive = self._keep_alive and head.keep_alive
        self.their_state = SEND_BODY
        return head.response

    def _body_event(self) -> Event:
        left = self._body_left
        if left == 0:
            self.their_state = DONE
            return END_OF_MESSAGE
        buf = self._buf
        if not buf:
            if self._eof:
                raise HTTPProtocolError("peer closed connection mid-body")
            return NEED_DATA
        if len(buf) <= left:
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:left])
            del buf[:left]
        self._body_left = left - len(data)
        return Data(data)

    def _to_h11(self) -> None:
        assert self._request is not None
        conn = slow.client_parser(self._request, max_header_bytes=self._max_head)
        data = bytes(self._buf)
        self._buf.clear()
        self._fed = len(data)
        self._h11 = conn
        slow.receive(conn, data)
        if self._eof:
            slow.receive(conn, b"")

    def _slow_event(self) -> Event:
        conn = self._h11
        assert conn is not None
        event = slow.next_event(conn)
        if type(event) is Response:
            assert isinstance(event, Response)
            self.head_size = self._fed - len(conn.trailing_data[0])
            if self.head_size > self._max_head:  # (h11 bounds only incomplete heads)
                raise HTTPProtocolError(f"response head larger than {self._max_head} bytes")
            self._keep_alive = self._keep_alive and conn.their_state is not h11.MUST_CLOSE
            self.their_state = SEND_BODY
        elif type(event) is InformationalResponse:
            self.head_size = self._fed - len(conn.trailing_data[0])
        elif isinstance(event, EndOfMessage):
            self._keep_alive = self._keep_alive and conn.their_state is h11.DONE
            self.their_state = DONE
        return event

    def switched_data(self) -> tuple[bytes, bool]:
        """After a ``101 Switching Protocols`` (an upgrade the request proposed): the bytes that
        came after its head, which belong to the new protocol, and whether the server closed.
        A 101 always takes the h11 path (the fast parser takes final responses only)."""
        conn = self._h11
        if conn is None or conn.their_state is not h11.SWITCHED_PROTOCOL:
            raise RuntimeError("switched_data before a 101 Switching Protocols")
        trailing, closed = conn.trailing_data
        return bytes(trailing), closed or self._eof

    def consumed_head_bytes(self) -> int:
        """Bytes received in this exchange that are not parsed yet (a head still arriving)."""
        if self._h11 is not None:
            return len(self._h11.trailing_data[0])
        return len(self._buf)

    # --- cycles -----------------------------------------------------------------------------

    def reusable(self) -> bool:
        """The exchange is complete both ways and the server keeps the connection open."""
        if self.our_state != DONE or self.their_state != DONE or not self._keep_alive:
            return False
        if self._h11 is not None:
            trailing, closed = self._h11.trailing_data
            return not trailing and not closed
        return not self._buf and not self._eof

    def start_next_cycle(self) -> None:
        """Ready for the next request (``reusable()`` must be True)."""
        if not self.reusable():
            raise RuntimeError("start_next_cycle on a connection that is not reusable")
        self._h11 = None
        self._request = None
        self._body_left = -1
        self.our_state = IDLE
        self.their_state = IDLE
        self.requests_served += 1
        self.bytes_received = 0

    @property
    def closing(self) -> bool:
        """The server said the connection closes after this response."""
        return not self._keep_alive or self.their_state == MUST_CLOSE


def _has_close(headers: Headers) -> bool:
    for name, value in headers:
        if name == b"connection":
            for token in value.split(b","):
                if token.strip(b" \t").lower() == b"close":
                    return True
    return False
