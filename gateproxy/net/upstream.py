"""Upstream connections: HTTP/1.1 as the client, over the socket's file descriptor.

Body-less requests answered with a plain ``Content-Length`` response take the fast path of
``core.http1``; anything else is handed to h11 with the same request and bytes. The group that
picks servers and pools these connections is ``net.upstream_group``.

Every OS or protocol failure is translated here into the ``UpstreamError`` family, so callers map
them to 502/504 without knowing about sockets.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import h11
import trio

from gateproxy.core.http1 import END_OF_MESSAGE, MORE, parse_response_head, write_request
from gateproxy.errors import (
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from gateproxy.net.clientio import deadline_after

RECEIVE_SIZE = 64 * 1024
MAX_UPSTREAM_HEADER_BYTES = 64 * 1024


class UpstreamConnection:
    """One keep-alive connection to one upstream server, speaking HTTP/1.1 as the client.

    Body-less requests answered with a plain ``Content-Length`` (or body-less) response take the
    fast path of ``core.http1``; any other exchange, or any response the fast parser calls
    unusual, is handed to an h11 connection that is given the same request and the same bytes,
    so h11 decides everything beyond the common case. Events are h11 events either way.
    """

    __slots__ = (
        "_body_left",
        "_buf",
        "_fd",
        "_h11",
        "_keep_alive",
        "_request",
        "bytes_received",
        "requests_served",
        "reused",
        "server",
        "stream",
    )

    def __init__(self, stream: trio.SocketStream, *, server: str) -> None:
        self.stream = stream
        self._fd = stream.socket.fileno()  # the socket is non-blocking (trio made it so)
        self.server = server
        self._h11: h11.Connection | None = None  # None: the fast path serves this exchange
        self._buf = bytearray()
        self._request: h11.Request | None = None
        self._body_left = -1  # -1: waiting for the response head; 0: response complete
        self._keep_alive = False
        self.requests_served = 0
        self.reused = False
        self.bytes_received = 0

    def _general(self) -> h11.Connection:
        """The h11 connection of this exchange (created on demand: the slow, general path)."""
        if self._h11 is None:
            self._h11 = self._h11_from_fast_state()
        return self._h11

    def _h11_from_fast_state(self) -> h11.Connection:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_UPSTREAM_HEADER_BYTES)
        if self._request is not None:  # replay the request sent on the fast path
            conn.send(self._request)
            conn.send(h11.EndOfMessage())
        if self._buf:
            conn.receive_data(bytes(self._buf))
            self._buf.clear()
        return conn

    async def send(self, event: h11.Event, *, max_wait: float) -> None:
        """Send one h11 event; failures become UpstreamError."""
        if self._h11 is None and self._request is None and type(event) is h11.Request:
            if _bodyless(event.headers):
                self._request = event
                await self._send_bytes(
                    write_request(event.method, event.target, list(event.headers)),
                    max_wait=max_wait,
                )
                return
        elif self._h11 is None and self._request is not None and type(event) is h11.EndOfMessage:
            return  # a body-less request is already complete
        try:
            data = self._general().send(event)
        except h11.LocalProtocolError as exc:
            raise UpstreamProtocolError(self.server, f"cannot forward request: {exc}") from exc
        if data:
            await self._send_bytes(data, max_wait=max_wait)

    async def _send_bytes(self, data: bytes, *, max_wait: float) -> None:
        # Straight to the socket first: a request head nearly always fits its send buffer, and
        # then no timeout scope and no trip through the scheduler are needed.
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise UpstreamConnectError(
                self.server, f"connection lost while sending: {exc}"
            ) from exc
        if sent == len(data):
            return
        scope = trio.CancelScope(deadline=deadline_after(max_wait))
        try:
            with scope:
                await self.stream.send_all(data[sent:])
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise UpstreamConnectError(
                self.server, f"connection lost while sending: {exc}"
            ) from exc
        if scope.cancelled_caught:
            raise UpstreamTimeout(self.server, f"send timed out after {max_wait:g}s")

    def poll_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        """The next event if it needs no read (else ``h11.NEED_DATA``)."""
        if self._h11 is None and self._request is not None:
            event = self._fast_event()
            if event is not None:
                return event
            if self._h11 is None:
                return h11.NEED_DATA
        try:
            return self._general().next_event()
        except h11.RemoteProtocolError as exc:
            raise UpstreamProtocolError(self.server, f"invalid response: {exc}") from exc

    def _fast_event(self) -> h11.Event | None:
        """The fast path's next event; None when it needs data or must hand over to h11."""
        buf = self._buf
        if self._body_left < 0:
            assert self._request is not None
            head = parse_response_head(
                buf, request_method=self._request.method, max_bytes=MAX_UPSTREAM_HEADER_BYTES
            )
            if head == MORE:
                return None
            if isinstance(head, str):
                self._h11 = self._h11_from_fast_state()
                return None
            del buf[: head.size]
            self._body_left, self._keep_alive = head.body_length, head.keep_alive
            return head.response
        if self._body_left == 0:
            self._request = None
            return END_OF_MESSAGE
        if not buf:
            return None
        if len(buf) <= self._body_left:
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[: self._body_left])
            del buf[: self._body_left]
        self._body_left -= len(data)
        return h11.Data(data=data)

    async def next_event(self, *, max_wait: float, wait_first: bool = False) -> h11.Event:
        """The next h11 event from the server; ``max_wait`` bounds each read (nginx semantics).
        ``wait_first``: the caller knows nothing can have arrived yet (a request just left), so
        the first read waits for readiness instead of trying (and failing) first."""
        if wait_first and self._h11 is None and self._request is not None and not self._buf:
            # The fast path with nothing buffered: no head to look for yet.
            self._take(await self._read(max_wait=max_wait, wait_first=True))
            wait_first = False
        while True:
            event = self.poll_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]  # h11 types NEED_DATA as a sentinel class
            self._take(await self._read(max_wait=max_wait, wait_first=wait_first))
            wait_first = False

    def receive_ready(self) -> bool:
        """Take what the server already sent, without waiting; False if nothing was there."""
        try:
            data = os.read(self._fd, RECEIVE_SIZE)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise UpstreamConnectError(self.server, f"connection reset: {exc}") from exc
        self._take(data)
        return True

    async def _read(self, *, max_wait: float, wait_first: bool) -> bytes:
        """One read from the socket: at once when data is waiting, else after ``wait_readable``
        under ``max_wait`` (trio's ``receive_some`` would add two scheduler round trips)."""
        scope: trio.CancelScope | None = None
        try:
            while True:
                if not wait_first:
                    try:
                        return os.read(self._fd, RECEIVE_SIZE)
                    except BlockingIOError:
                        pass
                wait_first = False
                if scope is None:
                    scope = trio.CancelScope(deadline=deadline_after(max_wait))
                with scope:
                    await trio.lowlevel.wait_readable(self._fd)
                if scope.cancelled_caught:
                    raise UpstreamTimeout(self.server, f"no data for {max_wait:g}s")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise UpstreamConnectError(self.server, f"connection reset: {exc}") from exc

    def _take(self, data: bytes) -> None:
        """Feed one read's bytes (``b""``: EOF) to the parser in use."""
        self.bytes_received += len(data)
        if self._h11 is None and self._request is not None:
            if data:
                self._buf += data
                return
            if self._body_left > 0:
                raise UpstreamProtocolError(
                    self.server, "invalid response: peer closed connection mid-body"
                )
            self._h11 = self._h11_from_fast_state()  # EOF: h11 says what it means here
        try:
            self._general().receive_data(data)
        except h11.RemoteProtocolError as exc:
            raise UpstreamProtocolError(self.server, f"invalid response: {exc}") from exc

    def consumed(self) -> int:
        """Bytes parsed in this cycle (see ``ClientSide.consumed``)."""
        if self._h11 is None:
            return self.bytes_received - len(self._buf)
        return self.bytes_received - len(self._h11.trailing_data[0])

    def finish_cycle(self) -> bool:
        """After a complete exchange: ready the connection for reuse; False if it must close."""
        if self._h11 is None:
            if self._request is not None or not self._keep_alive or self._buf:
                return False
        elif self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            if self._h11.trailing_data[0]:
                return False
            self._h11 = None  # back to the fast path for the next exchange
            self._request = None
        else:
            return False
        self._body_left, self._keep_alive = -1, False
        self.requests_served += 1
        self.bytes_received = 0
        return True

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)


def _bodyless(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request with these (outgoing) headers has no body: the fast path's case."""
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return False
    return True
