"""Forwarding one request upstream and its response back, streamed, with back-pressure.

Theory of operation. The request head is sent first. A request without a body is finished at
once and the response read. A request with a body runs two tasks in one nursery: the *pump*
moves client body chunks upstream (answering ``Expect: 100-continue`` itself, enforcing
``body_timeout`` and ``max_body_bytes``), while the *relay* waits for the response head and
streams the response body to the client. Neither side ever holds more than one chunk: each
``send_all`` waits for the peer, which is the back-pressure.

The response-head wait is unbounded while the client is still uploading (a long upload is not an
upstream timeout, as in nginx) and bounded by ``read_timeout`` once the request is fully sent.
If the upstream answers before the upload ends, the pump is cancelled and both connections close.

Failure rules (nginx users' expectations):
* an upstream error before the response head reaches the client propagates as ``UpstreamError``
  (the caller answers 502/503/504);
* an upstream error after that aborts the client connection (no close_notify, so a truncated body
  never looks complete), and the upstream connection is discarded, never reused;
* a client error abandons the upstream request and discards its connection.
A stale reused keep-alive connection that fails before any response byte is retried once on a
fresh connection when the request has no body.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import h11
import trio

from gateproxy.core.config import LimitsConfig
from gateproxy.core.headers import prepare_response_headers
from gateproxy.core.http1 import END_OF_MESSAGE, fast_headers
from gateproxy.errors import (
    ClientBodyTooLarge,
    ClientError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from gateproxy.net.clientio import ClientSide
from gateproxy.net.dates import date_now
from gateproxy.net.upstream import MAX_UPSTREAM_HEADER_BYTES, UpstreamConnection
from gateproxy.net.upstream_group import UpstreamGroup, failure_reason

Headers = list[tuple[bytes, bytes]]
FLUSH_SIZE = 64 * 1024  # queued response bytes that are sent without waiting for more


@dataclass(slots=True)
class Outcome:
    """What happened, for the access log and the keep-alive decision."""

    status: int = 0
    server: str = ""
    keep_client: bool = True


class Exchange:
    """One request/response exchange between a client and an upstream group."""

    def __init__(
        self,
        client: ClientSide,
        *,
        group: UpstreamGroup,
        request: h11.Request,
        has_body: bool,
        limits: LimitsConfig,
        close_client: bool,
        response_headers_hook: Callable[[Headers], Headers] | None = None,
    ) -> None:
        self.client = client
        self.group = group
        self.request = request
        self.has_body = has_body
        self.limits = limits
        self.close_client = close_client
        self.response_headers_hook = response_headers_hook
        self.outcome = Outcome()
        self._upload_done = not has_body
        self._head_scope: trio.CancelScope | None = None  # only an upload needs one

    async def run(self) -> Outcome:
        """Forward; raises UpstreamError/ClientError only while nothing reached the client."""
        for attempt in range(2):
            conn = await self.group.acquire(fresh=attempt > 0)
            self.outcome.server = conn.server
            try:
                await self._exchange(conn)
            except UpstreamError as exc:
                await self.group.discard(conn)
                if self._may_retry(conn, attempt):
                    continue
                self._note_failure(conn, exc)
                if self.client.response_started:
                    await self.client.abort()
                    self.outcome.keep_client = False
                    return self.outcome
                raise
            except BaseException:
                await self.group.discard(conn)
                raise
            await self.group.release(conn, reusable=self._upload_done)
            self.outcome.keep_client = self.outcome.keep_client and self._upload_done
            return self.outcome
        raise AssertionError("unreachable: the second attempt always returns or raises")

    def _may_retry(self, conn: UpstreamConnection, attempt: int) -> bool:
        return (
            attempt == 0
            and conn.reused
            and conn.bytes_received == 0
            and not self.has_body
            and not self.client.response_started
        )

    def _note_failure(self, conn: UpstreamConnection, exc: UpstreamError) -> None:
        reason = failure_reason(exc)
        if reason in ("connect", "timeout"):
            self.group.report_failure(conn.server, reason=reason)
        else:
            self.group.counters.failures[reason] = self.group.counters.failures.get(reason, 0) + 1

    async def _exchange(self, conn: UpstreamConnection) -> None:
        send_timeout = self.group.config.send_timeout
        self.group.counters.requests += 1
        await conn.send(self.request, max_wait=send_timeout)
        if not self.has_body:
            await conn.send(END_OF_MESSAGE, max_wait=send_timeout)
            await self._relay(conn)
            return
        self._head_scope = trio.CancelScope()  # one per attempt: a scope serves one `with` only
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, conn)
                await self._relay(conn)
                if not self._upload_done:
                    # The upstream answered before the upload ended: neither side is reusable.
                    self.outcome.keep_client = False
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise _first_cause(group) from None

    async def _pump(self, conn: UpstreamConnection) -> None:
        client, limits = self.client, self.limits
        if client.waiting_for_100_continue:
            await client.send(h11.InformationalResponse(status_code=100, headers=[]))
        received = 0
        while True:
            event = await client.next_event(max_wait=limits.body_timeout, limit="body_timeout")
            if isinstance(event, h11.Data):
                received += len(event.data)
                if received > limits.max_body_bytes:
                    raise ClientBodyTooLarge(limits.max_body_bytes)
                try:
                    await conn.send(
                        h11.Data(data=event.data), max_wait=self.group.config.send_timeout
                    )
                except UpstreamError:
                    return  # the upstream stopped reading; its response (or error) tells the rest
            elif isinstance(event, h11.EndOfMessage):
                try:
                    await conn.send(h11.EndOfMessage(), max_wait=self.group.config.send_timeout)
                except UpstreamError:
                    return
                self._upload_done = True
                assert self._head_scope is not None
                self._head_scope.deadline = trio.current_time() + self.group.config.read_timeout
                return
            else:  # ConnectionClosed before the body ended
                raise ClientError("client closed the connection mid-body")

    async def _relay(self, conn: UpstreamConnection) -> None:
        response = await self._response_head(conn)
        read_timeout = self.group.config.read_timeout
        headers = prepare_response_headers(response.headers, date=date_now())
        if self.response_headers_hook is not None:
            headers = self.response_headers_hook(headers)
        if _is_chunked(response.headers):
            # prepare_response_headers already dropped Content-Length (chunked wins, RFC 9112
            # 6.3); h11 needs the framing header back to re-chunk the body.
            headers.append((b"transfer-encoding", b"chunked"))
        if self.close_client:
            headers.append((b"connection", b"close"))
        self.outcome.status = response.status_code
        client = self.client
        client.queue(
            h11.Response(
                status_code=response.status_code,
                headers=fast_headers(headers),  # from the upstream, rewritten by core.headers
                reason=response.reason,
                _parsed=True,
            )
        )
        # Whatever the upstream has already sent leaves in one write (one TLS record run, one
        # syscall); the client is flushed before every wait on the upstream, so streaming is
        # never delayed.
        while True:
            event = conn.poll_event()
            if event is h11.NEED_DATA:
                if conn.receive_ready():
                    continue
                await client.flush()
                event = await conn.next_event(max_wait=read_timeout, wait_first=True)
            if type(event) is h11.Data:
                client.queue(event)
                if client.queued >= FLUSH_SIZE:
                    await client.flush()
            elif type(event) is h11.EndOfMessage:
                client.queue(event)
                await client.flush()
                return
            else:
                raise UpstreamProtocolError(conn.server, f"unexpected {type(event).__name__}")

    async def _response_head(self, conn: UpstreamConnection) -> h11.Response:
        if not self.has_body:  # read_timeout bounds each read: no scope of our own needed
            return await self._read_response_head(conn, self.group.config.read_timeout)
        # With an upload, read_timeout starts when the upload ends (_pump sets the deadline).
        assert self._head_scope is not None
        with self._head_scope:
            return await self._read_response_head(conn, math.inf)
        raise UpstreamTimeout(
            conn.server, f"no response within {self.group.config.read_timeout:g}s"
        )

    async def _read_response_head(self, conn: UpstreamConnection, max_wait: float) -> h11.Response:
        wait_first = True  # the request has just left: no answer can be there yet
        while True:
            mark = conn.consumed()
            event = await conn.next_event(max_wait=max_wait, wait_first=wait_first)
            wait_first = False
            if conn.consumed() - mark > MAX_UPSTREAM_HEADER_BYTES:
                raise UpstreamProtocolError(
                    conn.server,
                    f"response head larger than {MAX_UPSTREAM_HEADER_BYTES} bytes",
                )
            if isinstance(event, h11.InformationalResponse):
                continue  # 1xx from upstream: our own 100 Continue was already sent
            if isinstance(event, h11.Response):
                if event.status_code == 101:
                    raise UpstreamProtocolError(conn.server, "protocol upgrade is not supported")
                return event
            raise UpstreamProtocolError(conn.server, f"unexpected {type(event).__name__}")


def _is_chunked(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" and value.lower().endswith(b"chunked"):
            return True
    return False


def _first_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that ended the pump/relay pair (trio wraps it in an ExceptionGroup); the
    callers' ``except ClientTimeout`` / ``except UpstreamError`` clauses expect it bare."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    return real[0] if real else leaves[0]
