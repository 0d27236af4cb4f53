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
* a request is checked against the rules and limits *before* anything goes upstream, the
  client's request rate (``core.rate_limit``) last, so a refused request takes no token; a
  health check is answered locally and never rate-limited (``LOCAL_BODY`` while its body, if
  any, is read and dropped, then maybe ``HEALTH_WAIT`` for a pass-through answer); anything else
  is routed and forwarded by an :class:`~gateproxy.core.exchange.Exchange` (``FORWARD``).
* after the response, keep-alive continues when both sides allow it and no limit ends the
  connection; whether this response closes the connection is decided once, when its request
  starts (so a limit is counted once).
* an upgrade request (``core.upgrade``) the route allows, under ``max_upgraded_connections``,
  is forwarded with its upgrade headers; when the upstream answers ``101`` the connection is
  ``UPGRADED``: a :class:`~gateproxy.core.upgrade.Tunnel` relays bytes both ways (the pump
  waits on both peers) until either side closes or ``websocket_idle_timeout`` passes with
  nothing moving. It is the connection's last request; its upstream connection is never
  pooled (the pump closes it when the connection ends).

The connection ends in a ``wait`` state: ``CLOSE_NOTIFY`` (a clean end: TLS close_notify, then
close), ``ABORT`` (a response was cut: no close_notify, so a truncated body never looks
complete) or ``LINGER`` (``core.lingering``: the last answer left request bytes unread — an
early 413, 408, 400, 431 — so send close_notify, half-close, read and drop within ``linger``'s
bounds, then close, and the client reads the answer instead of a reset).
"""

from __future__ import annotations

import math
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
    SWITCHED,
    Exchange,
)
from gateproxy.core.forwarding import Forward, prepare_forward
from gateproxy.core.h1_client import ClientConnection
from gateproxy.core.h1_server import ServerConnection
from gateproxy.core.health import HealthAnswer, health_decision
from gateproxy.core.http_events import (
    DONE,
    NEED_DATA,
    Data,
    EndOfMessage,
    Request,
)
from gateproxy.core.limits import ConnectionBudget
from gateproxy.core.lingering import Linger, lingering_close
from gateproxy.core.policy import ListenerPolicy
from gateproxy.core.request_checks import (
    CLOSING_STATUSES,
    REASONS,
    answer_headers,
    error_answer,
    forward_refusal,
    head_refusal,
    protocol_refusal,
)
from gateproxy.core.upgrade import (
    CLOSED,
    Tunnel,
    requested_upgrade,
    upgrade_refusal,
    upstream_upgrade_headers,
)
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
UPGRADED: Final = 5


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
        self.linger: Linger | None = None  # how to linger when ``wait`` is LINGER
        self.health_requests = 0
        self._scheme = "https" if policy.tls else "http"
        self._head_started = True  # the first request's header timeout runs from the start
        self._request: Request | None = None
        self._client = client_ip  # this request's client (trusted_forwarded: from its XFF)
        self._kind = "request"
        self._started_at = now
        self._first_byte_at = -1.0  # when this request's first upstream response byte came
        self._close_after = False
        self._bytes_sent = 0
        self._drained = 0
        self._pending: HealthAnswer | HealthCheckConfig | None = None
        self.tunnel: Tunnel | None = None  # once UPGRADED
        self._upgrade_slot = False  # counted in counters.upgrades_open (core.upgrade)
        self._tunnel_upstream = ""

    # --- events -----------------------------------------------------------------------------

    def client_data(self, data: bytes, *, now: float) -> None:
        """Bytes read from the client (``b""``: it closed its side)."""
        if self.phase == UPGRADED:
            self._tunnel_code(self._tunneled().client_data(data, now=now), now)
            return
        self.server.receive_data(data)
        if self.phase in (LOCAL_BODY, FORWARD):
            self._read_body(now)
        self._settle(now)

    def upstream_ready(self, conn: ClientConnection, *, now: float) -> None:
        """The connection asked for by ``Acquire`` is ready (``conn.reused`` set by the shell)."""
        exchange = self.exchange
        assert exchange is not None
        exchange.ready(conn, now=now)
        self._read_body(now)
        self._settle(now)

    def upstream_failed(self, *, connected: bool, timeout: bool, now: float) -> None:
        """Connecting failed (``connected=False``), or the connection broke (reset, EOF while
        sending, send timeout)."""
        if self.phase == UPGRADED:
            self._tunnel_end(ABORT_CONNECTION, now)
            return
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
        if self.phase == UPGRADED:
            self._tunnel_code(self._tunneled().upstream_data(data, now=now), now)
            return
        exchange = self.exchange
        assert exchange is not None
        if self._first_byte_at < 0.0 and data:
            self._first_byte_at = now
        self._exchange_code(exchange.upstream_data(data, now=now), now)
        self._settle(now)

    def health_answer(self, answer: HealthAnswer, *, now: float) -> None:
        """The answer to a pass-through health check (``PassThrough``)."""
        self._send_health(answer, now)
        self._settle(now)

    def client_gone(self, *, now: float) -> None:
        """The client reset the connection or a write to it failed."""
        if self.phase == UPGRADED:
            self._tunnel_end(ABORT_CONNECTION, now)
            return
        if self.exchange is not None:
            self.exchange.abandon()
        if self._request is not None and self.phase != ENDED:
            self._log(0, now)
        self._end(ABORT_CONNECTION)

    def timer(self, *, now: float) -> None:
        """The deadline passed (the pump may call early: nothing happens before ``deadline``)."""
        if now < self.deadline:
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
        elif phase == UPGRADED:
            self._enforce("websocket_idle_timeout")
            self._tunnel_end(CLOSE_NOTIFY, now)
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
        status, rule = protocol_refusal(self.server, status=exc.status_hint, message=str(exc))
        if rule:
            self._enforce(rule)
        self._error(status, now)

    # --- deciding about a request -----------------------------------------------------------

    def _on_request(self, request: Request, now: float) -> None:
        server, policy = self.server, self.policy
        self._request = request
        self._client = self._request_client(request)
        self._started_at = now
        self._first_byte_at = -1.0
        self._bytes_sent = 0
        self._drained = 0
        self.budget.start_request()
        refused = head_refusal(server, self.limits)
        if refused is not None:
            self._refuse(refused, now)
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
        refused = forward_refusal(request, head_was_fast=server.head_was_fast, limits=self.limits)
        if refused is not None:
            self._refuse(refused, now)
            return
        rates = policy.rate_limits
        if rates is not None and not rates.allow(self._client, probe=self.probe, now=now):
            self._enforce("rate_limit")  # answered after the body, if any, is read: keep-alive
            self._answer_after_body(error_answer(rates.status), now)
            return
        self._forward(request, now)

    def _request_client(self, request: Request) -> str:
        """The connection's client, or for a trusted L7 hop the client its XFF names."""
        trust = self.policy.client_trust
        if not trust.forwarded:
            return self.client_ip
        xff = [v for n, v in request.headers if n == b"x-forwarded-for"]
        return trust.forwarded_client(self.client_ip, xff)

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
        plan = prepare_forward(
            self.policy,
            request,
            client_ip=self.client_ip,
            client=self._client,
            probe=self.probe,
            buffered=self.server.buffered(),
            now=now,
        )
        if plan is None:
            self._answer_after_body(error_answer(404), now)
            return
        if not isinstance(plan, Forward):
            self._refuse(plan, now)
            return
        if not plan.has_body:
            self._consume_end_of_body()
        headers = plan.headers
        upgrade = requested_upgrade(request)
        if upgrade is not None:
            counters = self.policy.counters
            refused = upgrade_refusal(
                route_allows=plan.websocket, upgraded=counters.upgrades_open, limits=self.limits
            )
            if refused is not None:
                self._refuse(refused, now)
                return
            headers = upstream_upgrade_headers(headers, upgrade)
            counters.upgrades_open += 1
            self._upgrade_slot = True
        exchange = Exchange(
            request=request,
            headers=headers,
            has_body=plan.has_body,
            upstream=plan.upstream,
            server_conn=self.server,
            out_client=self.out_client,
            out_upstream=self.out_upstream,
            actions=self.actions,
            close_client=self._close_after,
            guard=plan.guard,
            date=self.policy.service.date,
            upgrade=upgrade,
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

    def _read_body(self, now: float) -> None:
        """Request body pieces: forwarded while an exchange uploads, else read and dropped
        before a local answer; ``max_body_bytes`` and ``body_timeout`` either way."""
        exchange = self.exchange if self.phase == FORWARD else None
        if exchange is not None and not exchange.uploading:
            return
        server, limits = self.server, self.limits
        while True:
            try:
                event = server.next_event()
            except HTTPProtocolError as exc:
                self._body_failed(exc.status_hint, now)
                return
            if type(event) is Data:
                assert isinstance(event, Data)
                self._drained += len(event.data)
                if self._drained > limits.max_body_bytes:
                    self._enforce("max_body_bytes")
                    self._body_failed(413, now)
                    return
                if exchange is not None:
                    exchange.body_data(event.data)
            elif isinstance(event, EndOfMessage):
                if exchange is not None:
                    exchange.body_end(now=now)
                else:
                    self._answer_pending(now)
                return
            else:  # NEED_DATA
                self.deadline = now + limits.body_timeout
                return

    def _body_failed(self, status: int, now: float) -> None:
        if self.exchange is not None:
            self.exchange.abandon()
        if self.server.client_closed:  # it left mid-body: nobody to answer
            self._log(0, now)
            self._end(ABORT_CONNECTION)
            return
        self._error(status, now)

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
        elif code == SWITCHED:
            self._switch(exchange, now)

    # --- an upgraded connection -------------------------------------------------------------

    def _switch(self, exchange: Exchange, now: float) -> None:
        """The upstream answered 101: from now on, bytes go through as they are."""
        conn = exchange.conn
        assert conn is not None
        counters = self.policy.counters
        counters.response(101)
        counters.upgrades_total += 1
        self.exchange = None
        self.phase = UPGRADED
        self._tunnel_upstream = exchange.server
        tunnel = self.tunnel = Tunnel(
            out_client=self.out_client,
            out_upstream=self.out_upstream,
            idle_timeout=self.limits.websocket_idle_timeout,
            now=now,
        )
        from_upstream, upstream_closed = conn.switched_data()
        from_client = self.server.buffered()  # sent after the request, before the 101
        if from_client:
            tunnel.client_data(from_client, now=now)
        if from_upstream:
            tunnel.upstream_data(from_upstream, now=now)
        if upstream_closed or self.server.client_closed:
            self._tunnel_end(CLOSE_NOTIFY, now)

    def _tunneled(self) -> Tunnel:
        tunnel = self.tunnel
        assert tunnel is not None
        return tunnel

    def _tunnel_code(self, code: int, now: float) -> None:
        if code == CLOSED:  # what the other side still has to get leaves first (the pump)
            self._tunnel_end(CLOSE_NOTIFY, now)
        self._update_wait()

    def _tunnel_end(self, how: int, now: float) -> None:
        self._bytes_sent = self._tunneled().bytes_to_client
        self._log(101, now, upstream=self._tunnel_upstream)
        self._end(how)

    # --- local answers ----------------------------------------------------------------------

    def _health_request(self, request: Request, check: HealthCheckConfig, now: float) -> None:
        self.health_requests += 1
        self.policy.counters.health_checks += 1
        self._kind = "health"
        upstream = self.policy.upstreams.get(check.upstream) if check.upstream else None
        answer = health_decision(
            check,
            method=request.method,
            servers_up=upstream.servers_up(now=now) if upstream else None,
            servers_total=len(upstream.config.servers) if upstream else 0,
            draining=self.policy.service.draining,
        )
        self._answer_after_body(answer, now)

    def _answer_after_body(self, answer: HealthAnswer | HealthCheckConfig, now: float) -> None:
        """Answer once the request body (if any) has been read and dropped."""
        self._pending = answer
        self.phase = LOCAL_BODY
        if self.server.waiting_for_100_continue:
            self.out_client += self.server.send_informational(100)
        self._read_body(now)

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
        self._send_answer(answer, close=close)
        self._finish(answer.status, now, keep=not close)

    def _send_answer(self, answer: HealthAnswer, *, close: bool) -> None:
        server, out = self.server, self.out_client
        headers = answer_headers(answer, date=self.policy.service.date, close=close)
        out += server.send_response(answer.status, REASONS.get(answer.status, b""), headers)
        if answer.body and server.request_method != b"HEAD":
            out += server.send_data(answer.body)
            self._bytes_sent += len(answer.body)
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
        self._send_answer(error_answer(status), close=close)
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
        self.linger = lingering_close(
            status=status,
            request_unread=server.their_state != DONE or server.has_buffered(),
            draining=self.policy.service.draining or server.client_closed,
            limits=self.limits,
        )
        self._end(CLOSE_NOTIFY if self.linger is None else LINGER)

    def _log(self, status: int, now: float, *, upstream: str = "") -> None:
        self._release_upgrade_slot()  # every request ends here, whichever way it ends
        request = self._request
        if request is None:
            return
        started, first_byte = self._started_at, self._first_byte_at
        self.actions.append(
            LogRecord(
                kind=self._kind,
                method=request.method,
                target=request.target,
                status=status,
                bytes_sent=self._bytes_sent,
                upstream=upstream,
                duration=now - started,
                first_byte=first_byte - started if first_byte >= 0.0 else -1.0,
                headers=request.headers,
                client=self._client,
            )
        )
        self._request = None

    def _release_upgrade_slot(self) -> None:
        if self._upgrade_slot:
            self._upgrade_slot = False
            self.policy.counters.upgrades_open -= 1

    def closed(self) -> None:
        """The shell let the connection go, however it ended (a bug, a cancellation): give
        back what it held."""
        self._release_upgrade_slot()

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
        elif phase == UPGRADED:
            self.wait = WAIT_BOTH
            self.deadline = self._tunneled().deadline
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
        return self.tunnel is not None or self.server.response_started

    def take_actions(self) -> list[Action]:
        """The actions to execute now (the list the exchange appends to is kept)."""
        actions = list(self.actions)
        self.actions.clear()
        return actions
