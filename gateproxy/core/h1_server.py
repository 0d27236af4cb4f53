"""HTTP/1.1 as the server, sans-IO: the client-facing half of the parser pair (h11-shaped).

Theory of operation. :class:`ServerConnection` has h11's interface and semantics —
``receive_data`` / ``next_event`` / ``send_*`` / ``start_next_cycle``, ``their_state`` and
``our_state`` — over two parsers. Each request head is tried on the strict fast parser of
``core.h1_heads`` first; a head it calls unusual (chunked bodies, ``Expect``, ``Upgrade``, odd
forms) is handed, with every byte of it, to a fresh h11 connection for that one request, whose
events are converted (``core.h11_fallback``). When the exchange is over, the bytes h11 did not
consume go back to the fast parser. Responses are always written here, with h11's framing rules
(``send_response``): ``Content-Length`` kept, a body of unknown length chunked for HTTP/1.1
clients and close-delimited for HTTP/1.0 ones, ``Connection: close`` merged in when the
connection cannot be kept, and no body for HEAD, 204 and 304.

A head is bounded by ``max_header_bytes`` on both paths (h11 bounds only incomplete heads, so
the size of every head is measured here: :attr:`head_size`). For the request rules that look at
raw bytes (``core.request_rules.raw_head_problem``), :meth:`raw_head` returns the head as it
arrived; a head the fast parser accepted has nothing for them to find.

Where it differs from an h11 server connection, on purpose (tests/core/test_h1_server.py drives
both with the same bytes and checks they agree on everything else):

* Once the request is complete (``their_state`` DONE), :meth:`next_event` says PAUSED until
  :meth:`start_next_cycle`; h11 says NEED_DATA while nothing is buffered, and
  ConnectionClosed at end of file. Here the close shows as :attr:`client_closed` at once, and
  as ConnectionClosed in the next cycle.
* :meth:`send_informational` writes the standard reason phrase (``100 Continue``); h11 writes
  whatever reason its caller passes.
* Header names are lowercase, as everywhere in ``core.http_events``: ``send_response``
  recognises the framing fields (Content-Length, Transfer-Encoding, Connection) by their
  lowercase names, where h11 would lowercase them first.
"""

from __future__ import annotations

from typing import Final

import h11

from gateproxy.core import h11_fallback as slow
from gateproxy.core.h1_heads import (
    LAST_CHUNK,
    MORE,
    RequestHead,
    connection_close,
    content_length,
    parse_request_head,
    without,
    write_chunk,
    write_response,
)
from gateproxy.core.http_events import (
    CLOSED,
    CONNECTION_CLOSED,
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
    Request,
)
from gateproxy.errors import HTTPProtocolError

_LENGTH: Final = 0  # response framing: Content-Length
_CHUNKED: Final = 1
_UNTIL_CLOSE: Final = 2
_NO_BODY_STATUSES: Final = frozenset({204, 304})
_MAX_RAW_CAPTURE: Final = 128 * 1024
_REASONS: Final = {100: b"Continue", 101: b"Switching Protocols", 103: b"Early Hints"}


class ServerConnection:
    """The server side of one HTTP/1.1 connection (see the module docstring)."""

    __slots__ = (
        "_body_left",
        "_buf",
        "_capture",
        "_eof",
        "_fed",
        "_h11",
        "_max_header_bytes",
        "_out_framing",
        "_out_left",
        "head_size",
        "head_was_fast",
        "keep_alive",
        "our_state",
        "request_method",
        "their_http_version",
        "their_state",
        "waiting_for_100_continue",
    )

    def __init__(self, *, max_header_bytes: int) -> None:
        self._max_header_bytes = max_header_bytes
        self._buf = bytearray()  # received, not parsed (fast path)
        self._eof = False
        self._h11: h11.Connection | None = None  # the slow path of the current request
        self._capture = bytearray()  # raw bytes of a head on the slow path
        self._fed = 0  # bytes given to h11 in this cycle
        self._body_left = 0
        self._out_framing = _LENGTH
        self._out_left = 0
        self.their_state = IDLE
        self.our_state = IDLE
        self.keep_alive = True
        self.request_method: bytes | None = None
        self.their_http_version: bytes | None = None
        self.head_size = 0
        self.head_was_fast = False
        self.waiting_for_100_continue = False

    # --- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` means it closed its side."""
        if not data:
            self._eof = True
        if self._h11 is not None:
            if len(self._capture) < _MAX_RAW_CAPTURE and self.request_method is None:
                self._capture += data
            self._fed += len(data)
            slow.receive(self._h11, data)
        elif data:
            self._buf += data

    def next_event(self) -> Event:
        """The next event, or NEED_DATA / PAUSED; raises HTTPProtocolError for bad bytes."""
        if self._h11 is not None:
            return self._slow_event()
        state = self.their_state
        if state == SEND_BODY:
            return self._body_event()
        if state == IDLE:
            return self._head_event()
        if state == DONE:
            return PAUSED
        return CONNECTION_CLOSED if state == CLOSED else NEED_DATA

    def _head_event(self) -> Event:
        buf = self._buf
        if not buf:
            if self._eof:
                self.their_state = CLOSED
                return CONNECTION_CLOSED
            return NEED_DATA
        parsed = parse_request_head(buf, max_bytes=self._max_header_bytes)
        if isinstance(parsed, RequestHead):
            return self._fast_request(parsed)
        if parsed == MORE and not self._eof:
            return NEED_DATA
        self._to_h11()
        return self._slow_event()

    def _fast_request(self, head: RequestHead) -> Request:
        del self._buf[: head.size]
        request = head.request
        self.head_size = head.size
        self.head_was_fast = True
        self.request_method = request.method
        self.their_http_version = request.http_version
        self.keep_alive = head.keep_alive
        self._body_left = head.body_length
        self.their_state = SEND_BODY
        if self.our_state == IDLE:
            self.our_state = SEND_RESPONSE
        return request

    def _body_event(self) -> Event:
        left = self._body_left
        if left == 0:
            self.their_state = DONE
            return END_OF_MESSAGE
        buf = self._buf
        if not buf:
            if self._eof:
                raise HTTPProtocolError(
                    "peer closed connection without sending complete message body"
                )
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
        conn = slow.server_parser(max_header_bytes=self._max_header_bytes)
        data = bytes(self._buf)
        self._buf.clear()
        self._capture = bytearray(data[:_MAX_RAW_CAPTURE])
        self._fed = len(data)
        self._h11 = conn
        self.head_was_fast = False
        slow.receive(conn, data)
        if self._eof:
            slow.receive(conn, b"")

    def _slow_event(self) -> Event:
        conn = self._h11
        assert conn is not None
        event = slow.next_event(conn)
        if type(event) is Request:
            assert isinstance(event, Request)
            self.head_size = self._fed - len(conn.trailing_data[0])
            self.request_method = event.method
            self.their_http_version = event.http_version
            self.keep_alive = conn.their_state is not h11.MUST_CLOSE and _keeps_alive(event)
            self.waiting_for_100_continue = bool(conn.they_are_waiting_for_100_continue)
            self.their_state = SEND_BODY
            if self.our_state == IDLE:
                self.our_state = SEND_RESPONSE
        elif type(event) is EndOfMessage or isinstance(event, EndOfMessage):
            self.their_state = DONE
            self.waiting_for_100_continue = False  # (as h11: the body came unasked)
        elif type(event) is Data:
            self.waiting_for_100_continue = False
        elif event is CONNECTION_CLOSED:
            self.their_state = CLOSED
        return event

    # --- what was received ------------------------------------------------------------------

    def raw_head(self) -> bytes:
        """The current request's head as received (slow path; maybe with bytes after it)."""
        return bytes(self._capture)

    def buffered(self) -> bytes:
        """Received bytes not parsed yet (the start of a body, a pipelined request)."""
        if self._h11 is not None:
            return bytes(self._h11.trailing_data[0])
        return bytes(self._buf)

    def has_buffered(self) -> bool:
        if self._h11 is not None:
            return bool(self._h11.trailing_data[0])
        return bool(self._buf)

    @property
    def client_closed(self) -> bool:
        """The client closed its side (end of file was received)."""
        return self._eof

    # --- sending ----------------------------------------------------------------------------

    def send_informational(self, status: int, headers: Headers | None = None) -> bytes:
        """A 1xx response (``100 Continue``); clears ``waiting_for_100_continue``."""
        self.waiting_for_100_continue = False
        return write_response(status, _REASONS.get(status, b""), headers or [])

    def send_response(self, status: int, reason: bytes, headers: Headers) -> bytes:
        """The bytes of a final response head, framed by h11's rules (module docstring)."""
        if self.our_state not in (IDLE, SEND_RESPONSE):
            raise RuntimeError(f"cannot send a response head in state {self.our_state}")
        self.waiting_for_100_continue = False
        method = self.request_method
        length = content_length(headers)
        if status in _NO_BODY_STATUSES or length >= 0:
            framing = _LENGTH  # (h11 frames the headers of a HEAD answer as a GET's)
        elif length == -2 and any(n == b"transfer-encoding" for n, _ in headers):
            framing = _CHUNKED
        else:
            framing = _UNTIL_CLOSE
        need_close = False
        if framing != _LENGTH:
            headers = without(headers, b"content-length")
            if self.their_http_version is None or self.their_http_version < b"1.1":
                headers = without(headers, b"transfer-encoding")
                need_close = method != b"HEAD"
                framing = _UNTIL_CLOSE
            else:
                headers = without(headers, b"transfer-encoding")
                headers.append((b"Transfer-Encoding", b"chunked"))
                framing = _CHUNKED
        if not self.keep_alive or need_close:
            headers = connection_close(headers)
            self.keep_alive = False
        elif _has_close(headers):
            self.keep_alive = False
        if status in _NO_BODY_STATUSES or method == b"HEAD":
            framing, length = _LENGTH, 0
        self._out_framing = framing
        self._out_left = max(length, 0)
        self.our_state = SEND_BODY
        return write_response(status, reason, headers)

    def send_data(self, data: bytes) -> bytes:
        """The bytes of a piece of the response body."""
        if self.our_state != SEND_BODY:
            raise RuntimeError(f"cannot send body data in state {self.our_state}")
        framing = self._out_framing
        if framing == _LENGTH:
            if len(data) > self._out_left:
                raise RuntimeError("too much data for the declared Content-Length")
            self._out_left -= len(data)
            return data
        if framing == _CHUNKED:
            return write_chunk(data)
        return data

    def send_end(self) -> bytes:
        """The bytes that end the response body; our side is then DONE or MUST_CLOSE."""
        if self.our_state != SEND_BODY:
            raise RuntimeError(f"cannot end a body in state {self.our_state}")
        framing = self._out_framing
        if framing == _LENGTH and self._out_left:
            raise RuntimeError("too little data for the declared Content-Length")
        self.our_state = DONE if self.keep_alive and framing != _UNTIL_CLOSE else MUST_CLOSE
        return LAST_CHUNK if framing == _CHUNKED else b""

    # --- cycles -----------------------------------------------------------------------------

    @property
    def response_started(self) -> bool:
        return self.our_state not in (IDLE, SEND_RESPONSE)

    def reusable(self) -> bool:
        """Request and response both complete, and the connection may serve another one."""
        return self.our_state == DONE and self.their_state == DONE and self.keep_alive

    def start_next_cycle(self) -> None:
        """Ready the connection for the next request (``reusable()`` must be True)."""
        if not self.reusable():
            raise RuntimeError("start_next_cycle on a connection that is not reusable")
        conn = self._h11
        if conn is not None:
            trailing, closed = conn.trailing_data
            self._buf = bytearray(trailing)
            self._eof = self._eof or closed
            self._h11 = None
            self._capture = bytearray()
        self.their_state = IDLE
        self.our_state = IDLE
        self.request_method = None
        self.waiting_for_100_continue = False


def _keeps_alive(request: Request) -> bool:
    # As h11 (and RFC 9110 2.5): a later 1.x minor version is read as 1.1.
    return request.http_version >= b"1.1" and not _has_close(request.headers)


def _has_close(headers: Headers) -> bool:
    for name, value in headers:
        if name.lower() == b"connection":
            for token in value.split(b","):
                if token.strip(b" \t").lower() == b"close":
                    return True
    return False
