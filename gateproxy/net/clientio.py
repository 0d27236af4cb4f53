"""The client side of one downstream connection: HTTP/1.1 server state plus the byte stream.

Every failure of the client (reset, EOF mid-message, too slow) is translated here into the
``ClientError`` family; protocol violations stay ``h11.RemoteProtocolError`` so the caller can
answer with h11's status hint. Timeouts are passed per call by the caller, who knows which limit
applies (header, body, keep-alive idle).
"""

from __future__ import annotations

import contextlib
import math
from http import HTTPStatus

import h11
import trio

from gateproxy.core.http1 import (
    END_OF_MESSAGE,
    MORE,
    content_length,
    parse_request_head,
    with_connection_close,
    write_response,
)
from gateproxy.errors import ClientDisconnected, ClientTimeout
from gateproxy.net.dates import date_now

RECEIVE_SIZE = 64 * 1024
# h11 states of a client whose request was read to its end (MUST_CLOSE: it said "close").
_REQUEST_READ = frozenset({h11.DONE, h11.MUST_CLOSE, h11.CLOSED})
# States of the response on the fast path.
_IDLE, _BODY, _DONE = 0, 1, 2


def deadline_after(max_wait: float) -> float:
    """The trio deadline ``max_wait`` seconds from now (0 or less: no deadline)."""
    return trio.current_time() + max_wait if max_wait > 0 else math.inf


def reason(status: int) -> bytes:
    """The standard reason phrase (h11 sends an empty one unless told)."""
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class ClientSide:
    """The server side of HTTP/1.1 on one client stream (TLS or plain).

    Plain body-less HTTP/1.1 requests answered with a ``Content-Length`` response are parsed and
    written by ``core.http1`` (the *fast* path). Anything else goes to h11 (the *general* path):
    at the start of a request the buffered bytes are handed to a fresh h11 connection; in the
    middle of a fast exchange (a response the fast writer does not frame) the request head is
    replayed into it first, so h11 ends up in exactly the state it would have reached itself.
    After an exchange on the general path, the next request starts on the fast path again.
    """

    __slots__ = (
        "_buf",
        "_capture",
        "_close_after",
        "_eof",
        "_fast_head",
        "_fast_http10",
        "_h11",
        "_head",
        "_max_header_bytes",
        "_out",
        "_request_done",
        "_response_left",
        "_response_state",
        "aborted",
        "bytes_received",
        "bytes_sent",
        "request_method",
        "response_status",
        "stream",
    )

    def __init__(self, stream: trio.abc.Stream, *, max_header_bytes: int) -> None:
        self.stream = stream
        self._max_header_bytes = max_header_bytes
        self._h11: h11.Connection | None = None  # None: the fast path
        self._buf = bytearray()  # received, not yet parsed (fast path only)
        self._eof = False
        self._fast_head: bytes | None = None  # the head of the current fast-path request
        self._fast_http10 = False  # ... and it was HTTP/1.0 (the connection closes after it)
        self._request_done = False
        self._response_state = _IDLE
        self._response_left = 0
        self._close_after = False
        self.bytes_sent = 0
        self.bytes_received = 0
        self.aborted = False
        self._out = bytearray()
        self._head = bytearray()
        self._capture = False
        self.request_method = b""
        self.response_status = 0  # of the response of the current exchange (0: none yet)

    # --- the general path ------------------------------------------------------------------

    def _general(self) -> h11.Connection:
        """The h11 connection (switching this exchange to the general path if needed)."""
        if self._h11 is None:
            self._h11 = self._switch_to_h11()
        return self._h11

    def _switch_to_h11(self) -> h11.Connection:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_header_bytes)
        if self._fast_head is not None:  # mid-exchange: replay the request head
            conn.receive_data(self._fast_head)
            conn.next_event()  # the Request
            if self._request_done:
                conn.next_event()  # its EndOfMessage
        elif self._capture:
            self._head = bytearray(self._buf)
        if self._buf:
            conn.receive_data(bytes(self._buf))
            self._buf.clear()
        if self._eof:
            conn.receive_data(b"")
        return conn

    def _back_to_fast(self) -> None:
        assert self._h11 is not None
        buffered, closed = self._h11.trailing_data
        self._h11 = None
        self._buf = bytearray(buffered)
        self._eof = closed

    # --- state -----------------------------------------------------------------------------

    @property
    def request_complete(self) -> bool:
        """The whole current request has been read."""
        if self._h11 is not None:
            return self._h11.their_state in _REQUEST_READ
        return self._request_done

    @property
    def request_started(self) -> bool:
        """Some of the current request has been read (or is buffered)."""
        if self._h11 is not None:
            return self._h11.their_state is not h11.IDLE or bool(self._h11.trailing_data[0])
        return self._fast_head is not None or bool(self._buf)

    @property
    def can_send_response(self) -> bool:
        """No response head has been sent for the current request yet."""
        if self._h11 is not None:
            return self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE)
        return self._response_state == _IDLE

    @property
    def response_started(self) -> bool:
        return not self.can_send_response

    def cycle_reusable(self) -> bool:
        """Request and response both complete, and the connection may serve another one."""
        if self._h11 is not None:
            return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE
        return self._request_done and self._response_state == _DONE and not self._close_after

    def start_next_cycle(self) -> None:
        """Ready the connection for the next request (``cycle_reusable`` must be True)."""
        if self._h11 is not None:
            self._h11.start_next_cycle()
            self._back_to_fast()
        self._fast_head = None
        self._request_done = False
        self._response_state = _IDLE
        self.response_status = 0

    @property
    def request_unread(self) -> bool:
        """The client may still be sending: the current request was started and not read to its
        end, or bytes after it are buffered; and the client has not closed its side."""
        if self._h11 is not None:
            buffered, closed = bool(self._h11.trailing_data[0]), self._h11.trailing_data[1]
        else:
            buffered, closed = bool(self._buf), self._eof
        return not closed and (buffered or (self.request_started and not self.request_complete))

    def has_buffered_bytes(self) -> bool:
        """True when bytes of the next request are already buffered (pipelining)."""
        if self._h11 is not None:
            return bool(self._h11.trailing_data[0])
        return bool(self._buf)

    def must_wait_for_data(self) -> bool:
        """Nothing buffered and the client has not closed: the next request needs a read."""
        if self._h11 is not None:
            buffered, closed = self._h11.trailing_data  # (looking must not consume an event)
            return not buffered and not closed
        return not self._buf and not self._eof

    def buffered(self) -> bytes:
        """The received bytes not parsed yet (the start of a request body, say)."""
        if self._h11 is not None:
            return bytes(self._h11.trailing_data[0])
        return bytes(self._buf)

    @property
    def waiting_for_100_continue(self) -> bool:
        return self._h11 is not None and bool(self._h11.they_are_waiting_for_100_continue)

    # --- the request head ------------------------------------------------------------------

    def start_head(self) -> int:
        """Start recording the raw bytes of the next request head (h11 accepts a few forms,
        bare LF, obs-fold, repeated Content-Length, that ``raw_head_problem`` refuses) and
        return the ``consumed()`` mark. The fast path keeps the head itself."""
        self._capture = True
        self.request_method = b""
        if self._h11 is None:
            self._head.clear()
            return self.bytes_received - len(self._buf)
        buffered = self._h11.trailing_data[0]
        self._head = bytearray(buffered)
        return self.bytes_received - len(buffered)

    def raw_head(self) -> bytes:
        """The bytes received since ``start_head`` (the head, maybe followed by body bytes)."""
        self._capture = False
        if self._h11 is None and self._fast_head is not None:
            return self._fast_head
        head, self._head = bytes(self._head), bytearray()
        return head

    @property
    def head_was_fast(self) -> bool:
        """The current request head passed the strict fast parser (so ``raw_head_problem``
        has nothing to find in it: see ``core.http1``)."""
        return self._h11 is None and self._fast_head is not None

    def consumed(self) -> int:
        """Bytes parsed so far. h11 bounds only *incomplete* heads, so the size of a head that
        arrived whole in one read is measured as the difference of two calls."""
        if self._h11 is None:
            return self.bytes_received - len(self._buf)
        return self.bytes_received - len(self._h11.trailing_data[0])

    # --- receiving -------------------------------------------------------------------------

    async def next_event(self, *, max_wait: float, limit: str) -> h11.Event:
        """The next event from the client; more than ``max_wait`` between reads -> ClientTimeout."""
        while True:
            event = self._poll_event()
            if event is not h11.NEED_DATA:
                if type(event) is h11.Request:
                    self.request_method = event.method
                return event  # type: ignore[return-value]  # h11 types NEED_DATA as a sentinel class
            await self.receive(max_wait=max_wait, limit=limit)

    def poll_event(self) -> object:
        """The next event if it needs no read, else ``h11.NEED_DATA``."""
        event = self._poll_event()
        if type(event) is h11.Request:
            self.request_method = event.method
        return event

    def _poll_event(self) -> object:
        if self._h11 is None:
            if self._fast_head is not None:
                if self._request_done:
                    return h11.PAUSED
                self._request_done = True
                return END_OF_MESSAGE
            if not self._eof:
                parsed = parse_request_head(self._buf, max_bytes=self._max_header_bytes)
                if parsed == MORE:
                    return h11.NEED_DATA
                if not isinstance(parsed, str):
                    request, size = parsed
                    self._fast_head = bytes(self._buf[:size])
                    self._fast_http10 = request.http_version == b"1.0"
                    del self._buf[:size]
                    self._capture = False
                    return request
        return self._general().next_event()

    async def receive(self, *, max_wait: float, limit: str) -> int:
        """Read once from the client; returns the number of bytes read (0 = EOF)."""
        # A bare CancelScope: trio.fail_after is a generator context manager, and this is the
        # per-read hot path. No scope at all when the caller's own scope bounds the wait.
        scope = trio.CancelScope(deadline=deadline_after(max_wait)) if max_wait > 0 else None
        try:
            if scope is None:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            else:
                with scope:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ClientDisconnected(f"client connection lost: {exc}") from exc
        if scope is not None and scope.cancelled_caught:
            raise ClientTimeout(limit)
        self.bytes_received += len(data)
        if self._h11 is None:
            if data:
                self._buf += data
            else:
                self._eof = True
            return len(data)
        if self._capture and len(self._head) < 2 * RECEIVE_SIZE:
            self._head += data
        self._h11.receive_data(bytes(data))
        return len(data)

    # --- sending ---------------------------------------------------------------------------

    async def send(self, event: h11.Event) -> None:
        """Send one event (and anything queued before it) to the client now."""
        self.queue(event)
        await self.flush()

    def queue(self, event: h11.Event) -> None:
        """Serialise an event without sending it: several events leave in one write (one TLS
        record, one syscall) at the next ``flush``. Callers flush before they wait for input."""
        if self._h11 is None and self._fast_head is not None and self._queue_fast(event):
            return
        data = self._general().send(event)
        if data:
            self._out += data
        kind = type(event)
        if kind is h11.Data:
            self.bytes_sent += len(event.data)  # type: ignore[attr-defined]
        elif kind is h11.Response:
            self.response_status = event.status_code  # type: ignore[attr-defined]

    def _queue_fast(self, event: h11.Event) -> bool:
        """Write ``event`` on the fast path; False when only h11 can frame it."""
        kind = type(event)
        if kind is h11.Data:
            data = event.data  # type: ignore[attr-defined]
            if self._response_state != _BODY or len(data) > self._response_left:
                raise h11.LocalProtocolError("Too much data for declared Content-Length")
            self._response_left -= len(data)
            self._out += data
            self.bytes_sent += len(data)
            return True
        if kind is h11.EndOfMessage:
            if self._response_state != _BODY or self._response_left:
                raise h11.LocalProtocolError("Too little data for declared Content-Length")
            self._response_state = _DONE
            return True
        if kind is not h11.Response or self._response_state != _IDLE:
            return False
        return self._queue_fast_head(event)  # type: ignore[arg-type]

    def _queue_fast_head(self, response: h11.Response) -> bool:
        headers = list(response.headers)
        length = content_length(headers)
        if length is None:
            return False
        status = self.response_status = response.status_code
        if status in (204, 304) or self.request_method == b"HEAD":
            length = 0
        if self._fast_http10:  # h11 has no HTTP/1.0 keep-alive: close, and say so
            headers = with_connection_close(headers)
            self._close_after = True
        else:
            self._close_after = any(
                name == b"connection" and b"close" in value.lower() for name, value in headers
            )
        self._out += write_response(status, response.reason, headers)
        self._response_state, self._response_left = _BODY, length
        return True

    @property
    def queued(self) -> int:
        return len(self._out)

    async def flush(self) -> None:
        """Send what is queued; a vanished client raises ClientDisconnected."""
        if not self._out:
            return
        data, self._out = self._out, bytearray()
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ClientDisconnected(f"client went away while receiving: {exc}") from exc

    async def send_simple(
        self,
        status: int,
        body: bytes,
        *,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        close: bool = False,
        content_type: bytes = b"text/plain; charset=utf-8",
    ) -> None:
        """Send a whole small response generated by gateproxy itself."""
        all_headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"date", date_now()),
            *headers,
        ]
        if close:
            all_headers.append((b"connection", b"close"))
        self.queue(h11.Response(status_code=status, headers=all_headers, reason=reason(status)))
        if body and self.request_method != b"HEAD":
            self.queue(h11.Data(data=body))
        await self.send(h11.EndOfMessage())

    async def abort(self) -> None:
        """Cut the connection without close_notify, so a partial response never looks complete."""
        self.aborted = True
        transport = getattr(self.stream, "transport_stream", self.stream)
        await trio.aclose_forcefully(transport)

    async def close(self) -> None:
        """Close cleanly (TLS close_notify when TLS), bounded so a stuck peer cannot hold us."""
        if self.aborted:
            return
        quiet = contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError)
        with trio.CancelScope(deadline=trio.current_time() + 1, shield=True) as scope, quiet:
            await self.stream.aclose()
        if scope.cancelled_caught:
            await trio.aclose_forcefully(getattr(self.stream, "transport_stream", self.stream))
