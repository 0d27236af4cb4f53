"""The request loop of one client connection (after ``net.connection`` admitted it and ran the
TLS handshake).

Theory of operation. :class:`Downstream` serves requests in a loop:

* waiting for a request: ``keepalive_timeout`` until its first byte (``request_header_timeout``
  for the first request), then ``request_header_timeout`` for the whole head (slowloris);
* each request is checked against the limits *before* anything goes upstream; health checks are
  answered locally; everything else is routed and forwarded (``net.forward``);
* after each response the :class:`ConnectionBudget` says whether keep-alive continues.

TLS 1.3 session tickets are deferred until the first request that is not a health check (when the
listener has health checks); a connection that only asked health paths leaves no session behind.
"""

from __future__ import annotations

import contextlib
import ssl
import time
import traceback

import h11
import trio

from gateproxy.core.config import HealthCheckConfig
from gateproxy.core.health import answer_health, health_precheck
from gateproxy.core.http1 import fast_headers
from gateproxy.core.limits import ConnectionBudget
from gateproxy.core.request_rules import chunked_body_problem, raw_head_problem, reject_reason
from gateproxy.errors import (
    ClientBodyTooLarge,
    ClientDisconnected,
    ClientError,
    ClientTimeout,
    UpstreamError,
)
from gateproxy.logs import event
from gateproxy.net.clientio import ClientSide, deadline_after, reason
from gateproxy.net.forward import Exchange
from gateproxy.net.health_pass import pass_through_answer
from gateproxy.net.runtime import ListenerRuntime
from gateproxy.net.upstream_request import apply_guard, body_framing, header, upstream_headers

_CLOSING_STATUSES = frozenset({400, 408, 413, 431, 500})
_STATUS_BODY = {
    400: b"Bad Request\n",
    404: b"Not Found\n",
    408: b"Request Timeout\n",
    413: b"Content Too Large\n",
    431: b"Request Header Fields Too Large\n",
    502: b"Bad Gateway\n",
    503: b"Service Unavailable\n",
    504: b"Gateway Timeout\n",
}


class Downstream:
    """The request loop of one client connection."""

    def __init__(
        self,
        listener: ListenerRuntime,
        stream: trio.abc.Stream,
        *,
        client_ip: str,
        probe: bool,
        ssl_object: ssl.SSLObject | None,
    ) -> None:
        self.listener = listener
        self.limits = listener.limits_for(probe=probe)
        self.client = ClientSide(stream, max_header_bytes=self.limits.max_header_bytes)
        self.client_ip = client_ip
        self.probe = probe
        self.ssl_object = ssl_object
        self.budget = ConnectionBudget(limits=self.limits, opened_at=trio.current_time())
        self.scheme = b"https" if ssl_object is not None else b"http"
        self.tickets_released = False
        self.health_requests = 0

    async def serve(self) -> None:
        """Serve requests until the client leaves or a limit closes the connection."""
        while True:
            request = await self._next_request()
            if request is None:
                return
            keep = await self._handle(request)
            if not keep or not self.client.cycle_reusable():
                return
            self.client.start_next_cycle()

    async def finish(self) -> None:
        """Close (TLS close_notify first), then drop the engine's record of the connection."""
        await self.client.close()
        engine = self.listener.engine
        if engine is not None and self.ssl_object is not None and not self.probe:
            if not self.tickets_released and self.health_requests:
                engine.forget_session(self.ssl_object)
            engine.unregister_connection(self.ssl_object)

    # --- reading a request ----------------------------------------------------------------------

    async def _next_request(self) -> h11.Request | None:
        limits, client = self.limits, self.client
        first = self.budget.requests == 0
        try:
            # Idle keep-alive: wait for the first byte of the next request.
            if not first and client.must_wait_for_data() and await self._wait_idle() == 0:
                return None
            mark = client.start_head()
            event = client.poll_event()  # usually the whole head is here already: no timer
            if event is h11.NEED_DATA:
                event = await self._read_head()
            if client.consumed() - mark > limits.max_header_bytes:
                self._enforce("max_header_bytes")
                await self._send_error(431)
                return None
        except ClientTimeout as exc:
            self._enforce(exc.limit)
            if not client.request_started and first:
                return None  # said nothing at all: close quietly
            await self._send_error(408)
            return None
        except ClientDisconnected:
            return None
        except h11.RemoteProtocolError as exc:
            await self._protocol_error(exc)
            return None
        if isinstance(event, h11.Request):
            problem = None if client.head_was_fast else raw_head_problem(client.raw_head())
            if problem is not None:
                self._enforce(problem[1])
                await self._send_error(problem[0])
                return None
            return event
        return None  # ConnectionClosed between requests

    async def _read_head(self) -> object:
        # The whole head must arrive within request_header_timeout (from its first byte on
        # keep-alive connections): a byte every few seconds (slowloris) does not reset it.
        deadline = deadline_after(self.limits.request_header_timeout)
        with trio.CancelScope(deadline=deadline):
            return await self.client.next_event(max_wait=0, limit="request_header_timeout")
        raise ClientTimeout("request_header_timeout")

    async def _wait_idle(self) -> int:
        shared = self.listener.shared
        if shared.draining:
            return 0
        deadline = trio.current_time() + self.limits.keepalive_timeout  # (move_on_after costs more)
        with trio.CancelScope(deadline=deadline) as scope:
            shared.idle_scopes.add(scope)  # a drain cancels it: idle connections close at once
            try:
                return await self.client.receive(max_wait=0, limit="keepalive_timeout")
            finally:
                shared.idle_scopes.discard(scope)
        if not shared.draining:
            self._enforce("keepalive_timeout")
        return 0

    async def _protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        status = exc.error_status_hint
        problem = raw_head_problem(self.client.raw_head())
        if problem is not None and status != 431:
            self._enforce(problem[1])
            await self._send_error(problem[0])
            return
        if status == 431 or "too long" in str(exc).lower():
            status = 431
            self._enforce("max_header_bytes")
        await self._send_error(status)

    async def _send_error(self, status: int) -> None:
        """A locally generated error; keep-alive survives only when the request was fully read."""
        client = self.client
        if not client.can_send_response:
            return
        close = (
            status in _CLOSING_STATUSES
            or not client.request_complete
            or self._close_reason() is not None
        )
        with contextlib.suppress(ClientError, h11.LocalProtocolError):
            await client.send_simple(status, _STATUS_BODY.get(status, b"Error\n"), close=close)

    # --- handling a request ---------------------------------------------------------------------

    async def _handle(self, request: h11.Request) -> bool:
        listener, counters = self.listener, self.listener.counters
        started = time.monotonic()
        self.budget.start_request()
        check = listener.health.match(request.target)
        if check is not None:
            keep_alive, status = await self._answer_health(request, check)
            listener.access_log.request(  # sampled: health lines are rarely written
                client=self.client_ip,
                method=request.method,
                target=request.target,
                status=status,
                bytes_sent=self.client.bytes_sent,
                upstream="",
                duration=time.monotonic() - started,
                listener=listener.name,
                kind="health",
            )
            self.client.bytes_sent = 0
            return keep_alive
        counters.requests_total += 1
        self._release_tickets()
        try:
            status, server = await self._proxy(request)
        except Exception as exc:  # a bug of ours: answer 500, keep the TLS session, go on serving
            event(
                "request_error",
                listener=listener.name,
                error=repr(exc),
                trace=traceback.format_exc(limit=8),
            )
            if not self.client.response_started:
                await self.client.send_simple(500, b"Internal Server Error\n", close=True)
                status, server = 500, ""
            else:
                await self.client.abort()
                status, server = 0, ""
        if status:
            cls = f"{status // 100}xx"
            counters.responses_by_class[cls] = counters.responses_by_class.get(cls, 0) + 1
        listener.access_log.request(
            client=self.client_ip,
            method=request.method,
            target=request.target,
            status=status,
            bytes_sent=self.client.bytes_sent,
            upstream=server,
            duration=time.monotonic() - started,
            listener=listener.name,
            kind="probe" if self.probe else "request",
        )
        self.client.bytes_sent = 0
        return status != 0 and not self.client.aborted

    def _enforce(self, reason: str) -> None:
        self.listener.enforced(reason, client=self.client_ip)

    def _release_tickets(self) -> None:
        if self.tickets_released:
            return
        self.tickets_released = True
        engine = self.listener.engine
        if engine is not None and self.ssl_object is not None and not self.probe:
            engine.send_deferred_tickets(self.ssl_object)

    async def _answer_health(
        self, request: h11.Request, check: HealthCheckConfig
    ) -> tuple[bool, int]:
        """Answer a health check ourselves: (keep the connection, status sent; 0 if none)."""
        self.health_requests += 1
        self.listener.counters.health_checks += 1
        group = self.listener.upstreams.get(check.upstream) if check.upstream else None
        draining = self.listener.shared.draining
        cache = self.listener.pass_through
        if check.mode == "pass_through" and group is not None and cache is not None:
            answer = health_precheck(
                check, method=request.method, draining=draining
            ) or await pass_through_answer(check, group, cache=cache)
        else:
            answer = answer_health(
                check,
                method=request.method,
                servers_up=group.servers_up() if group else [],
                servers_total=len(group.config.servers) if group else 0,
                draining=draining,
            )
        if not await self._drain_request_body():
            return False, 0
        close = self._close_reason() is not None
        body = b"" if request.method == b"HEAD" else answer.body
        try:
            self.client.queue(
                h11.Response(
                    status_code=answer.status,
                    reason=reason(answer.status),
                    headers=[*answer.headers, *([(b"connection", b"close")] if close else [])],
                )
            )
            if body:
                self.client.queue(h11.Data(data=body))
            await self.client.send(h11.EndOfMessage())
        except ClientError:
            return False, 0
        return not close, answer.status

    async def _drain_request_body(self) -> bool:
        """Read and drop a (small) request body of a locally answered request."""
        received = 0
        try:
            while True:
                event = await self.client.next_event(
                    max_wait=self.limits.body_timeout, limit="body_timeout"
                )
                if isinstance(event, h11.EndOfMessage):
                    return True
                if isinstance(event, h11.Data):
                    received += len(event.data)
                    if received > self.limits.max_body_bytes:
                        await self._send_error(413)
                        return False
                else:
                    return False
        except (ClientError, h11.RemoteProtocolError):
            return False

    def _close_reason(self) -> str | None:
        shared = self.listener.shared
        if shared.draining:
            return "draining"
        if shared.retiring:
            return "retiring"  # a reload replaced this worker: close after this response
        reason = self.budget.close_reason(now=trio.current_time())
        if reason is not None:
            self._enforce(reason)
        return reason

    async def _proxy(self, request: h11.Request) -> tuple[int, str]:
        """Route and forward; returns (status sent, upstream server) — status 0 if aborted."""
        rejection = self._reject_before_forwarding(request)
        if rejection:
            await self._send_error(rejection)
            return rejection, ""
        fields = list(request.headers)  # h11's Headers is slow to iterate: once only
        host = header(fields, b"host")
        route = self.listener.router.match(host=host, path=request.target)
        if route is None:
            if await self._drain_request_body():
                await self._send_error(404)
            return 404, ""
        group = self.listener.upstreams[route.upstream]
        framing, has_body = body_framing(fields)
        if framing and framing[0][0] == b"transfer-encoding":
            problem = chunked_body_problem(self.client.buffered())
            if problem is not None:
                self._enforce(problem[1])
                await self._send_error(problem[0])
                return problem[0], ""
        if not has_body and not await self._drain_request_body():
            return 0, ""  # (h11 already holds the EndOfMessage: this returns at once)
        headers = upstream_headers(
            fields,
            client_ip=self.client_ip,
            scheme=self.scheme.decode(),
            host=host,
            framing=framing,
            default_host=route.upstream.encode(),
        )
        hook = None
        guard = self.listener.guard
        if guard is not None:
            user_agent = header(fields, b"user-agent")
            headers, hook = apply_guard(
                guard,
                headers,
                request=request,
                fields=fields,
                client_ip=self.client_ip,
                is_probe=self.probe or self.listener.probes.is_probe_agent(user_agent),
                listener=self.listener.name,
                scope=group.name,
            )
        # Every value was validated already (parsed from the client, or made by core.headers).
        upstream_request = h11.Request(
            method=request.method,
            target=request.target,
            headers=fast_headers(headers),
            _parsed=True,
        )
        close = self._close_reason() is not None
        exchange = Exchange(
            self.client,
            group=group,
            request=upstream_request,
            has_body=has_body,
            limits=self.limits,
            close_client=close,
            response_headers_hook=hook,
        )
        try:
            outcome = await exchange.run()
        except UpstreamError as exc:
            await self._send_error(exc.status)
            return exc.status, getattr(exc, "server", "")
        except ClientTimeout as exc:
            self._enforce(exc.limit)
            await self._send_error(408)
            return 408, exchange.outcome.server
        except ClientBodyTooLarge:
            self._enforce("max_body_bytes")
            await self._send_error(413)
            return 413, exchange.outcome.server
        except h11.RemoteProtocolError as exc:
            if self.client.response_started:
                await self.client.abort()
                return 0, exchange.outcome.server
            await self._send_error(exc.error_status_hint)
            return exc.error_status_hint, exchange.outcome.server
        except ClientError:
            await self.client.abort()
            return 0, exchange.outcome.server
        return outcome.status, outcome.server

    def _reject_before_forwarding(self, request: h11.Request) -> int:
        # A head the fast parser took passes every rule (tests/core/test_http1 proves it).
        refused = None if self.client.head_was_fast else reject_reason(request)
        if refused is not None:
            status, rule = refused
            self._enforce(rule)
            return status
        if len(request.headers) > self.limits.max_headers:
            self._enforce("max_headers")
            return 431
        length = header(request.headers, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.max_body_bytes:
            self._enforce("max_body_bytes")
            return 413
        return 0
