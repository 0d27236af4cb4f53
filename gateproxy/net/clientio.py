"""The client side of one downstream connection: h11 server state plus the byte stream.

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

from gateproxy.errors import ClientDisconnected, ClientTimeout

RECEIVE_SIZE = 64 * 1024


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
    """h11 server connection bound to one client stream (TLS or plain)."""

    __slots__ = (
        "_head",
        "_out",
        "aborted",
        "bytes_received",
        "bytes_sent",
        "h11",
        "request_method",
        "stream",
    )

    def __init__(self, stream: trio.abc.Stream, *, max_header_bytes: int) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.aborted = False
        self._out = bytearray()
        self._head: bytearray | None = None
        self.request_method = b""

    def start_head(self) -> int:
        """Start recording the raw bytes of the next request head (h11 accepts a few forms,
        bare LF, obs-fold, repeated Content-Length, that ``raw_head_problem`` refuses) and
        return the ``consumed()`` mark, from the same single copy of h11's buffer."""
        buffered = self.h11.trailing_data[0]
        self._head = bytearray(buffered)
        self.request_method = b""
        return self.bytes_received - len(buffered)

    def raw_head(self) -> bytes:
        """The bytes received since ``start_head`` (the head, maybe followed by body bytes)."""
        head, self._head = bytes(self._head or b""), None
        return head

    def consumed(self) -> int:
        """Bytes h11 has parsed so far. h11 bounds only *incomplete* heads, so the size of a
        head that arrived whole in one read is measured as the difference of two calls."""
        return self.bytes_received - len(self.h11.trailing_data[0])

    async def send(self, event: h11.Event) -> None:
        """Send one event (and anything queued before it) to the client now."""
        self.queue(event)
        await self.flush()

    def queue(self, event: h11.Event) -> None:
        """Serialise an event without sending it: several events leave in one write (one TLS
        record, one syscall) at the next ``flush``. Callers flush before they wait for input."""
        data = self.h11.send(event)
        if data:
            self._out += data
        if isinstance(event, h11.Data):
            self.bytes_sent += len(event.data)

    @property
    def queued(self) -> int:
        return len(self._out)

    async def flush(self) -> None:
        """Send what is queued; a vanished client raises ClientDisconnected."""
        if not self._out:
            return
        data = bytes(self._out)
        self._out.clear()
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ClientDisconnected(f"client went away while receiving: {exc}") from exc

    async def next_event(self, *, max_wait: float, limit: str) -> h11.Event:
        """The next event from the client; more than ``timeout`` between reads -> ClientTimeout."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                if isinstance(event, h11.Request):
                    self.request_method = event.method
                return event  # type: ignore[return-value]  # h11 types NEED_DATA as a sentinel class
            await self.receive(max_wait=max_wait, limit=limit)

    async def receive(self, *, max_wait: float, limit: str) -> int:
        """Read once from the client into h11; returns the number of bytes read (0 = EOF)."""
        # A bare CancelScope: trio.fail_after is a generator context manager, and this is the
        # per-read hot path.
        scope = trio.CancelScope(deadline=deadline_after(max_wait))
        try:
            with scope:
                data = await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ClientDisconnected(f"client connection lost: {exc}") from exc
        if scope.cancelled_caught:
            raise ClientTimeout(limit)
        self.bytes_received += len(data)
        if self._head is not None and len(self._head) < 2 * RECEIVE_SIZE:
            self._head += data
        self.h11.receive_data(bytes(data))
        return len(data)

    def has_buffered_bytes(self) -> bool:
        """True when h11 already holds bytes of the next request (pipelining)."""
        return bool(self.h11.trailing_data[0])

    @property
    def waiting_for_100_continue(self) -> bool:
        return bool(self.h11.they_are_waiting_for_100_continue)

    @property
    def response_started(self) -> bool:
        return self.h11.our_state is not h11.SEND_RESPONSE and self.h11.our_state is not h11.IDLE

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
        with trio.move_on_after(1) as scope:
            scope.shield = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self.stream.aclose()
        if scope.cancelled_caught:
            await trio.aclose_forcefully(getattr(self.stream, "transport_stream", self.stream))
