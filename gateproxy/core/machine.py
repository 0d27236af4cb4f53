"""One client connection as a sans-IO state machine: bytes and deadlines in, actions out.

Theory of operation. The pump (``net.pump``) feeds a :class:`ConnectionMachine` every event of
one client connection — ``client_data`` (``b""`` at end of file), ``upstream_ready`` /
``upstream_failed`` / ``upstream_data``, ``health_answer``, ``client_gone`` and ``timer`` when
its one deadline passed — and after each event executes what the machine left: the
:mod:`~gateproxy.core.actions` in ``actions``, then the bytes in ``out_upstream`` and
``out_client``; then it waits for what ``wait`` names, until ``deadline``. Every decision of the
request path is taken here, once: the request rules, every limit, health matching, routing,
the session guard, header rewriting, retry (``core.exchange``) and why the connection closes.
Nothing here reads a clock or touches a socket: ``now`` comes with every event.

A connection goes through these phases, for each request:

* ``READING``: waiting for a request head. The first request must be complete within
  ``request_header_timeout`` of the connection's start (a client that said nothing at all is
  closed without a response); later ones have ``keepalive_timeout`` until their first byte, then
  ``request_header_timeout`` for the whole head, so a byte every few seconds does not help.
* a request is checked against the rules and limits *before* anything goes upstream; a health
  check is answered locally (``LOCAL_BODY`` while its body, if any, is read and dropped, then
  maybe ``HEALTH_WAIT`` for a pass-through answer); anything else is routed and forwarded by an
  :class:`~gateproxy.core.exchange.Exchange` (``FORWARD``).
* after the response, keep-alive continues when both sides allow it and no limit ends the
  connection; whether this response closes the connection is decided once, when its request
  starts (so a limit is counted once).

The connection ends in a ``wait`` state: ``CLOSE_NOTIFY`` (a clean end: TLS close_notify, then
close), ``ABORT`` (a response was cut: no close_notify, so a truncated body never looks
complete) or ``LINGER`` (an error answer left request body bytes unread: send close_notify,
half-close, read and drop for a bounded time, then close, so the client reads the answer
instead of a reset).
"""

from __future__ import annotations

import math
from http import HTTPStatus
from typing import Final

from gateproxy.core.actions import (
    RELEASE_TICKETS,
    Action,
    Enforced,
    LogRecord,
    PassThrough,
)
from gateproxy.core.config import HealthCheckConfig
from gateproxy.core.exchange import (
    ABORT,
    ANSWER,
    BROKEN_RESET,
    BROKEN_TIMEOUT,
    COMPLETE,
    Exchange,
    GuardContext,
)
from gateproxy.core.forwarding import header, request_framing, upstream_headers
from gateproxy.core.h1_client import ClientConnection
from gateproxy.core.h1_server import ServerConnection
from gateproxy.core.health import HealthAnswer, answer_health, health_precheck
from gateproxy.core.http_events import (
    DONE,
    NEED_DATA,
    Data,
    EndOfMessage,
    Headers,
    Request,
)
from gateproxy.core.limits import ConnectionBudget
from gateproxy.core.policy import ListenerPolicy
from gateproxy.core.request_rules import chunked_body_problem, raw_head_problem, reject_reason
from gateproxy.core.session_guard import add_cookie
from gateproxy.errors import HTTPProtocolError

# What the pump waits for next (bit flags), and the final states.
WAIT_ACTIONS: Final = 0  # nothing to read: execute the actions (a connect, a health fetch)
WAIT_CLIENT: Final = 1
WAIT_UPSTREAM: Final = 2
WAIT_BOTH: Final = 3
CLOSE_NOTIFY: Final = 8
ABORT_CONNECTION: Final = 9
LINGER: Final = 10

READING: Final = 0
LOCAL_BODY: Final = 1
HEALTH_WAIT: Final = 2
FORWARD: Final = 3
ENDED: Final = 4

#: Error answers after which the connection always closes (the framing cannot be trusted).
CLOSING_STATUSES: Final = frozenset({400, 408, 413, 431, 500, 501, 505})
#: ... and after which unread request body bytes are drained before closing (lingering close).
LINGER_STATUSES: Final = frozenset({400, 408, 413, 431})
STATUS_BODY: Final = {
    400: b"Bad Request\n",
    404: b"Not Found\n",
    405: b"Method Not Allowed\n",
    408: b"Request Timeout\n",
    413: b"Content Too Large\n",
    431: b"Request Header Fields Too Large\n",
    500: b"Internal Server Error\n",
    501: b"Not Implemented\n",
    502: b"Bad Gateway\n",
    503: b"Service Unavailable\n",
    504: b"Gateway Timeout\n",
    505: b"HTTP Version Not Supported\n",
}
REASONS: Final = {status.value: status.phrase.encode() for status in HTTPStatus}
_TEXT: Final = b"text/plain; charset=utf-8"


class ConnectionMachine:
    """The request path of one client connection (see the module docstring)."""

    def __init__(self, policy: ListenerPolicy, *, client_ip: str, probe: bool, now: float) -> None:
        self.policy = policy
        self.limits = limits = policy.limits_for(probe=probe)
        self.client_ip = client_ip
        self.probe = probe
        self.server = ServerConnection(max_header_bytes=limits.max_header_bytes)
        self.budget = ConnectionBudget(limits=limits, opened_at=now)
        self.out_client = bytearray()
        self.out_upstream = bytearray()
        self.actions: list[Action] = []
        self.wait = WAIT_CLIENT
        self.deadline = now + limits.request_header_timeout
        self.phase = READING
        self.exchange: Exchange | None = None
        self.tickets_released = False
        self.health_requests = 0
        self._scheme = "https" if policy.tls else "http"
        self._head_started = True  # the first request's header timeout runs from the start
        self._request: Request | None = None
        self._kind = "request"
        self._started_at = now
        self._close_after = False
        self._bytes_sent = 0
        self._drained = 0
        self._pending: HealthAnswer | HealthCheckConfig | None = None

    # --- events -----------------------------------------------------------------------------

    def client_data(self, data: bytes, *, now: float) -> None:
        """Bytes read from the client (``b""``: it closed its side)."""
        self.server.receive_data(data)
        phase = self.phase
        if phase == LOCAL_BODY:
            self._drain_body(now)
        elif phase == FORWARD:
            self._upload(now)
        self._settle(now)

    def upstream_ready(self, conn: ClientConnection, *, now: float) -> None:
        """The connection asked for by ``Acquire`` is ready (``conn.reused`` set by the shell)."""
        exchange = self.exchange
        assert exchange is not None
        exchange.ready(conn, now=now)
        self._upload(now)
        self._settle(now)

    def upstream_failed(self, *, connected: bool, timeout: bool, now: float) -> None:
        """Connecting failed (``connected=False``), or the connection broke (reset, EOF while
        sending, send timeout)."""
        exchange = self.exchange
        assert exchange is not None
        if connected:
            kind = BROKEN_TIMEOUT if timeout else BROKEN_RESET
            code = exchange.upstream_broken(kind, now=now)
        else:
            code = exchange.connect_failed(timeout=timeout, now=now)
        self._exchange_code(code, now)
        self._settle(now)

    def upstream_data(self, data: bytes, *, now: float) -> None:
        """Bytes read from the upstream (``b""``: it closed)."""
        exchange = self.exchange
        assert exchange is not None
        self._exchange_code(exchange.upstream_data(data, now=now), now)
        self._settle(now)

    def health_answer(self, answer: HealthAnswer, *, now: float) -> None:
        """The answer to a pass-through health check (``PassThrough``)."""
        self._send_health(answer, now)
        self._settle(now)

    def client_gone(self, *, now: float) -> None:
        """The client reset the connection or a write to it failed."""
        if self.exchange is not None:
            self.exchange.abandon()
        if self._request is not None and self.phase != ENDED:
            self._log(0, now)
        self._end(ABORT_CONNECTION)

    def timer(self, *, now: float) -> None:
        """The deadline passed (the pump may call early: nothing happens before ``deadline``)."""
        if now < self.deadline:
            self._wake_idle()
            return
        phase = self.phase
        if phase == READING:
            self._head_timeout(now)
        elif phase == LOCAL_BODY:
            self._client_timeout(now)
        elif phase == FORWARD:
            exchange = self.exchange
            assert exchange is not None
            if exchange.uploading:
                self._client_timeout(now)
            else:
                self._exchange_code(exchange.timed_out(now=now), now)
        self._settle(now)

    def wake(self, *, now: float) -> None:
        """The service state changed (a drain began): an idle connection closes now."""
        self._wake_idle()
        self._update_wait()

    def _settle(self, now: float) -> None:
        # Requests already buffered (pipelined) are read as soon as the connection is back to
        # READING; then the pump learns what to wait for.
        if self.phase == READING:
            self._read_requests(now)
        self._update_wait()

    # --- reading requests -------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Waiting for a request of which nothing has arrived yet (a drain may close it)."""
        return self.phase == READING and not self._head_started

    def _wake_idle(self) -> None:
        if self.idle and self.policy.service.draining:
            self._end(CLOSE_NOTIFY)

    def _read_requests(self, now: float) -> None:
        server = self.server
        while self.phase == READING:
            try:
                event = server.next_event()
            except HTTPProtocolError as exc:
                self._protocol_error(exc, now)
                return
            if event is NEED_DATA:
                if not self._head_started and server.has_buffered():
                    self._head_started = True  # the next request's first byte: its head timer
                    self.deadline = now + self.limits.request_header_timeout
                return
            if type(event) is Request:
                assert isinstance(event, Request)
                self._on_request(event, now)
            else:  # ConnectionClosed between requests
                self._end(CLOSE_NOTIFY)
                return

    def _head_timeout(self, now: float) -> None:
        if not self._head_started:  # idle keep-alive connection
            if not self.policy.service.draining:
                self._enforce("keepalive_timeout")
            self._end(CLOSE_NOTIFY)
            return
        self._enforce("request_header_timeout")
        if self.budget.requests == 0 and not self.server.has_buffered():
            self._end(CLOSE_NOTIFY)  # said nothing at all: close quietly
            return
        self._error(408, now)

    def _client_timeout(self, now: float) -> None:
        self._enforce("body_timeout")
        if self.exchange is not None:
            self.exchange.abandon()
            if self.exchange.response_started:
                self._log(0, now)
                self._end(ABORT_CONNECTION)
                return
        self._error(408, now)

    def _protocol_error(self, exc: HTTPProtocolError, now: float) -> None:
        status = exc.status_hint
        problem = (
            raw_head_problem(self.server.raw_head()) if not self.server.head_was_fast else None
        )
        if problem is not None and status != 431:
            self._enforce(problem[1])
            self._error(problem[0], now)
            return
        if status == 431 or "too long" in str(exc).lower():
            status = 431
            self._enforce("max_header_bytes")
        self._error(status, now)

    # --- deciding about a request -----------------------------------------------------------

    def _on_request(self, request: Request, now: float) -> None:
        server, limits, policy = self.server, self.limits, self.policy
        self._request = request
        self._started_at = now
        self._bytes_sent = 0
        self._drained = 0
        self.budget.start_request()
        if not server.head_was_fast:
            problem = raw_head_problem(server.raw_head())
            if problem is not None:
                self._refuse(problem, now)
                return
        if server.head_size > limits.max_header_bytes:
            self._refuse((431, "max_header_bytes"), now)
            return
        self._close_after = self._close_decision(now)
        check = policy.health.match(request.target)
        if check is not None:
            self._health_request(request, check, now)
            return
        policy.counters.requests_total += 1
        self._kind = "probe" if self.probe else "request"
        if not self.tickets_released:
            self.tickets_released = True
            self.actions.append(RELEASE_TICKETS)
        refused = None if server.head_was_fast else reject_reason(request)
        if refused is not None:
            self._refuse(refused, now)
            return
        fields = request.headers
        if len(fields) > limits.max_headers:
            self._refuse((431, "max_headers"), now)
            return
        length = header(fields, b"content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
            self._refuse((413, "max_body_bytes"), now)
            return
        self._forward(request, now)

    def _close_decision(self, now: float) -> bool:
        """Whether this request's response closes the connection: decided (and a limit
        counted) once, when the request starts."""
        service = self.policy.service
        if service.draining or service.retiring:
            return True
        reason = self.budget.close_reason(now=now)
        if reason is not None:
            self._enforce(reason)
            return True
        return False

    def _forward(self, request: Request, now: float) -> None:
        fields = request.headers
        host = header(fields, b"host")
        route = self.policy.router.match(host=host, path=request.target)
        if route is None:
            self._answer_after_body(_local_answer(404), now)
            return
        upstream = self.policy.upstreams[route.upstream]
        framing, has_body = request_framing(fields)
        if framing and framing[0][0] == b"transfer-encoding":
            problem = chunked_body_problem(self.server.buffered())
            if problem is not None:
                self._refuse(problem, now)
                return
        headers = upstream_headers(
            fields,
            client_ip=self.client_ip,
            scheme=self._scheme,
            host=host,
            framing=framing,
            default_host=route.upstream.encode(),
        )
        guard_context = None
        guard = self.policy.guard
        if guard is not None:
            is_probe = self.probe or self.policy.probes.is_probe_agent(
                header(fields, b"user-agent")
            )
            pin = guard.request_cookie_for(
                client=self.client_ip,
                request_headers=fields,
                is_probe=is_probe,
                method=request.method,
                now=now,
                scope=upstream.name,
            )
            if pin is not None:
                headers = add_cookie(headers, pin)
            guard_context = GuardContext(
                guard=guard,
                fields=fields,
                client=self.client_ip,
                is_probe=is_probe,
                listener=self.policy.name,
                method=request.method,
                path=request.target,
            )
        if not has_body:
            self._consume_end_of_body()
        exchange = Exchange(
            request=request,
            headers=headers,
            has_body=has_body,
            upstream=upstream,
            server_conn=self.server,
            out_client=self.out_client,
            out_upstream=self.out_upstream,
            actions=self.actions,
            close_client=self._close_after,
            guard=guard_context,
            date=self.policy.service.date,
        )
        self.exchange = exchange
        self.phase = FORWARD
        self._exchange_code(exchange.start(now=now), now)

    def _consume_end_of_body(self) -> None:
        # A body-less request's EndOfMessage is already there: take it (their side is DONE).
        if self.server.their_state != DONE:
            event = self.server.next_event()
            assert isinstance(event, EndOfMessage), event

    # --- forwarding -------------------------------------------------------------------------

    def _upload(self, now: float) -> None:
        exchange = self.exchange
        if exchange is None or not exchange.uploading:
            return
        server, limits = self.server, self.limits
        while True:
            try:
                event = server.next_event()
            except HTTPProtocolError as exc:
                self._upload_failed(exc, now)
                return
            if type(event) is Data:
                assert isinstance(event, Data)
                self._drained += len(event.data)
                if self._drained > limits.max_body_bytes:
                    self._body_too_large(now)
                    return
                exchange.body_data(event.data)
            elif isinstance(event, EndOfMessage):
                exchange.body_end(now=now)
                return
            else:  # NEED_DATA
                self.deadline = now + limits.body_timeout
                return

    def _upload_failed(self, exc: HTTPProtocolError, now: float) -> None:
        exchange = self.exchange
        assert exchange is not None
        exchange.abandon()
        if exchange.response_started or self.server.client_closed:
            self._log(0, now)
            self._end(ABORT_CONNECTION)
            return
        self._error(exc.status_hint, now)

    def _body_too_large(self, now: float) -> None:
        self._enforce("max_body_bytes")
        exchange = self.exchange
        if exchange is not None:
            exchange.abandon()
            if exchange.response_started:
                self._log(0, now)
                self._end(ABORT_CONNECTION)
                return
        self._error(413, now)

    def _exchange_code(self, code: int, now: float) -> None:
        exchange = self.exchange
        assert exchange is not None
        if code == COMPLETE:
            self._bytes_sent = exchange.bytes_sent
            self._finish(exchange.status, now, keep=exchange.keep_client, upstream=exchange.server)
        elif code == ANSWER:
            self._error(exchange.error_status, now, upstream=exchange.server)
        elif code == ABORT:
            self._bytes_sent = exchange.bytes_sent
            self._log(0, now, upstream=exchange.server)
            self._end(ABORT_CONNECTION)

    # --- local answers ----------------------------------------------------------------------

    def _health_request(self, request: Request, check: HealthCheckConfig, now: float) -> None:
        self.health_requests += 1
        self.policy.counters.health_checks += 1
        self._kind = "health"
        draining = self.policy.service.draining
        upstream = self.policy.upstreams.get(check.upstream) if check.upstream else None
        answer: HealthAnswer | HealthCheckConfig
        if check.mode == "pass_through" and upstream is not None:
            answer = health_precheck(check, method=request.method, draining=draining) or check
        else:
            answer = answer_health(
                check,
                method=request.method,
                servers_up=upstream.servers_up(now=now) if upstream else [],
                servers_total=len(upstream.config.servers) if upstream else 0,
                draining=draining,
            )
        self._answer_after_body(answer, now)

    def _answer_after_body(self, answer: HealthAnswer | HealthCheckConfig, now: float) -> None:
        """Answer once the request body (if any) has been read and dropped."""
        self._pending = answer
        self.phase = LOCAL_BODY
        if self.server.waiting_for_100_continue:
            self.out_client += self.server.send_informational(100)
        self._drain_body(now)

    def _drain_body(self, now: float) -> None:
        server = self.server
        while self.phase == LOCAL_BODY:
            try:
                event = server.next_event()
            except HTTPProtocolError as exc:
                self._error(exc.status_hint, now)
                return
            if type(event) is Data:
                assert isinstance(event, Data)
                self._drained += len(event.data)
                if self._drained > self.limits.max_body_bytes:
                    self._enforce("max_body_bytes")
                    self._error(413, now)
                    return
            elif isinstance(event, EndOfMessage):
                self._answer_pending(now)
                return
            else:
                self.deadline = now + self.limits.body_timeout
                return

    def _answer_pending(self, now: float) -> None:
        pending = self._pending
        self._pending = None
        if isinstance(pending, HealthCheckConfig):
            self.phase = HEALTH_WAIT
            self.actions.append(PassThrough(pending))
            return
        assert pending is not None
        self._send_health(pending, now)

    def _send_health(self, answer: HealthAnswer, now: float) -> None:
        close = self._close_after
        headers = [*answer.headers, *_date(self.policy.service.date)]
        if close:
            headers.append((b"connection", b"close"))
        self._send_whole(answer.status, headers, answer.body)
        self._finish(answer.status, now, keep=not close)

    def _send_whole(self, status: int, headers: Headers, body: bytes) -> None:
        server = self.server
        out = self.out_client
        out += server.send_response(status, REASONS.get(status, b""), headers)
        if body and server.request_method != b"HEAD":
            out += server.send_data(body)
            self._bytes_sent += len(body)
        out += server.send_end()

    def _refuse(self, rejection: tuple[int, str], now: float) -> None:
        self._enforce(rejection[1])
        self._error(rejection[0], now)

    def _error(self, status: int, now: float, *, upstream: str = "") -> None:
        """A locally generated error; keep-alive survives only when the request was read."""
        server = self.server
        if self.exchange is not None:
            self.exchange.abandon()
        if server.response_started:
            self._log(0, now, upstream=upstream)
            self._end(ABORT_CONNECTION)
            return
        close = status in CLOSING_STATUSES or server.their_state != DONE or self._close_after
        body = STATUS_BODY.get(status, b"Error\n")
        headers = [
            (b"content-type", _TEXT),
            (b"content-length", b"%d" % len(body)),
            *_date(self.policy.service.date),
        ]
        if close:
            headers.append((b"connection", b"close"))
        self._send_whole(status, headers, body)
        self._close_after = self._close_after or close
        self._finish(status, now, keep=not close, upstream=upstream)

    # --- the end of an exchange -------------------------------------------------------------

    def _finish(
        self,
        status: int,
        now: float,
        *,
        keep: bool,
        upstream: str = "",
    ) -> None:
        if self._kind != "health" and status:
            self.policy.counters.response(status)
        self._log(status, now, upstream=upstream)
        self.exchange = None
        server = self.server
        if keep and not self._close_after and server.reusable():
            server.start_next_cycle()
            self.phase = READING
            self._request = None
            self._head_started = server.has_buffered()
            timeout = (
                self.limits.request_header_timeout
                if self._head_started
                else (self.limits.keepalive_timeout)
            )
            self.deadline = now + timeout
            return
        unread = server.their_state != DONE or server.has_buffered()
        if status in LINGER_STATUSES and unread and not server.client_closed:
            self._end(LINGER)
        else:
            self._end(CLOSE_NOTIFY)

    def _log(self, status: int, now: float, *, upstream: str = "") -> None:
        request = self._request
        if request is None:
            return
        self.actions.append(
            LogRecord(
                kind=self._kind,
                method=request.method,
                target=request.target,
                status=status,
                bytes_sent=self._bytes_sent,
                upstream=upstream,
                duration=now - self._started_at,
            )
        )
        self._request = None

    def _enforce(self, reason: str) -> None:
        self.actions.append(Enforced(reason))

    def _end(self, how: int) -> None:
        self.phase = ENDED
        self.wait = how
        self.deadline = math.inf

    def _update_wait(self) -> None:
        phase = self.phase
        if phase == ENDED:
            return
        if phase in (READING, LOCAL_BODY):
            self.wait = WAIT_CLIENT
        elif phase == HEALTH_WAIT:
            self.wait = WAIT_ACTIONS
        else:
            exchange = self.exchange
            assert exchange is not None
            if exchange.conn is None:
                self.wait = WAIT_ACTIONS
                self.deadline = exchange.deadline
            elif exchange.uploading:
                self.wait = WAIT_CLIENT if exchange.response_started else WAIT_BOTH
            else:
                self.wait = WAIT_UPSTREAM
                self.deadline = exchange.deadline

    # --- for the shell ----------------------------------------------------------------------

    @property
    def response_started(self) -> bool:
        return self.server.response_started

    def take_actions(self) -> list[Action]:
        """The actions to execute now (the list the exchange appends to is kept)."""
        actions = list(self.actions)
        self.actions.clear()
        return actions


def _date(date: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"date", date)] if date else []


def _local_answer(status: int) -> HealthAnswer:
    body = STATUS_BODY.get(status, b"Error\n")
    headers = ((b"content-type", _TEXT), (b"content-length", b"%d" % len(body)))
    return HealthAnswer(status, headers, body)
