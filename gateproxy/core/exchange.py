"""One forwarded request/response exchange, sans-IO: server choice, retry, relay, failures.

Theory of operation. The connection machine (``core.machine``) makes an :class:`Exchange` for a
request it decided to forward, with the upstream head already assembled. The exchange picks a
server (the upstream's balancer, skipping servers already tried), asks the shell for a
connection (:class:`~gateproxy.core.actions.Acquire`), writes the request head into the
machine's upstream buffer, and relays: request body pieces the machine hands it go upstream,
the response comes back through :meth:`upstream_data`. Each method returns a code telling the
machine what happened: :data:`PENDING`, :data:`COMPLETE` (the response was relayed whole),
:data:`ANSWER` (nothing reached the client: answer ``error_status`` locally) or :data:`ABORT`
(a response had started: cut the client connection, so a truncated body never looks complete)
or :data:`SWITCHED` (an upgrade request was answered ``101``: its head is relayed and the
connection becomes a ``core.upgrade.Tunnel``).

Failure rules (nginx users' expectations):

* connect refused/reset: the server is marked (passive checks) and the next one tried at once;
  no server left: 502 (or 504 after a connect timeout); none usable at all: 503;
* a reused keep-alive connection that fails before any response byte, for a request without a
  body, is retried once on a fresh connection (``core.forwarding.retry_on_fresh_connection``);
* other failures before the response head: 502 (504 for a timeout); after it: abort;
* while the client is still uploading, the response head has no deadline (a long upload is not
  an upstream timeout); after the upload, ``read_timeout`` bounds every wait for upstream bytes.

If the upstream answers before the upload is complete, the upload stops, the response is relayed
with ``Connection: close`` and neither connection is reused.
"""

from __future__ import annotations

import math
from typing import Final

from gateproxy.core.actions import RELEASE_CLOSE, RELEASE_REUSABLE, Acquire, Action
from gateproxy.core.forwarding import GuardContext, client_headers, retry_on_fresh_connection
from gateproxy.core.h1_client import ClientConnection
from gateproxy.core.h1_server import ServerConnection
from gateproxy.core.http_events import (
    NEED_DATA,
    Data,
    EndOfMessage,
    Headers,
    InformationalResponse,
    Request,
    Response,
)
from gateproxy.core.upgrade import switched_headers
from gateproxy.core.upstream_state import UpstreamState
from gateproxy.errors import HTTPProtocolError

PENDING: Final = 0
COMPLETE: Final = 1
ANSWER: Final = 2
ABORT: Final = 3
SWITCHED: Final = 4

# Ways an established upstream connection fails (upstream_broken).
BROKEN_RESET: Final = 0  # reset / unexpected EOF / send failed
BROKEN_TIMEOUT: Final = 1  # send_timeout
BROKEN_PROTOCOL: Final = 2  # not a valid response


class Exchange:
    """One request forwarded to one upstream (see the module docstring)."""

    __slots__ = (
        "_actions",
        "_attempt",
        "_fresh",
        "_guard",
        "_last_status",
        "_out_client",
        "_out_upstream",
        "_server",
        "_tried",
        "bytes_sent",
        "close_client",
        "conn",
        "date",
        "deadline",
        "error_status",
        "has_body",
        "headers",
        "keep_client",
        "request",
        "response_done",
        "response_started",
        "server",
        "status",
        "upgrade",
        "upload_done",
        "upstream",
    )

    def __init__(
        self,
        *,
        request: Request,
        headers: Headers,
        has_body: bool,
        upstream: UpstreamState,
        server_conn: ServerConnection,
        out_client: bytearray,
        out_upstream: bytearray,
        actions: list[Action],
        close_client: bool,
        guard: GuardContext | None,
        date: bytes,
        upgrade: bytes | None = None,
    ) -> None:
        self.request = request
        self.upgrade = upgrade  # the protocol an upgrade request asks for (core.upgrade)
        self.headers = headers
        self.has_body = has_body
        self.upstream = upstream
        self._server = server_conn
        self._out_client = out_client
        self._out_upstream = out_upstream
        self._actions = actions
        self.close_client = close_client
        self._guard = guard
        self.date = date
        self._tried: set[str] = set()
        self._attempt = 0
        self._fresh = False
        self._last_status = 503
        self.conn: ClientConnection | None = None
        self.server = ""
        self.status = 0
        self.error_status = 0
        self.bytes_sent = 0
        self.deadline = math.inf
        self.upload_done = not has_body
        self.response_started = False
        self.response_done = False
        self.keep_client = True

    # --- getting a connection -----------------------------------------------------------------

    def start(self, *, now: float) -> int:
        """Pick a server and ask for a connection (or give up: ANSWER)."""
        server = self.upstream.balancer.pick(now=now, exclude=self._tried)
        if server is None:
            self.error_status = self._last_status
            return ANSWER
        self._tried.add(server)
        self.server = server
        self.deadline = now + self.upstream.config.connect_timeout
        self._actions.append(Acquire(upstream=self.upstream.name, server=server, fresh=self._fresh))
        return PENDING

    def connect_failed(self, *, timeout: bool, now: float) -> int:
        """The connection to ``server`` could not be made: mark it, try the next one."""
        self.upstream.report_failure(
            self.server, reason="timeout" if timeout else "connect", now=now
        )
        self._last_status = 504 if timeout else 502
        return self.start(now=now)

    def ready(self, conn: ClientConnection, *, now: float) -> int:
        """A connection is ready: write the request head upstream."""
        self.conn = conn
        self.upstream.counters.requests += 1
        request = self.request
        self._out_upstream += conn.send_request(request.method, request.target, self.headers)
        if not self.has_body:
            self._out_upstream += conn.send_end()
            self.deadline = now + self.upstream.config.read_timeout
        else:
            self.deadline = math.inf  # the machine bounds the upload with body_timeout
            if self._server.waiting_for_100_continue:
                self._out_client += self._server.send_informational(100)
        return PENDING

    # --- the request body ---------------------------------------------------------------------

    @property
    def uploading(self) -> bool:
        """Request body pieces are wanted from the client now."""
        return self.conn is not None and not self.upload_done and not self.response_started

    def body_data(self, data: bytes) -> None:
        assert self.conn is not None
        self._out_upstream += self.conn.send_data(data)

    def body_end(self, *, now: float) -> None:
        assert self.conn is not None
        self._out_upstream += self.conn.send_end()
        self.upload_done = True
        if not self.response_started:
            self.deadline = now + self.upstream.config.read_timeout

    # --- the response -------------------------------------------------------------------------

    def upstream_data(self, data: bytes, *, now: float) -> int:
        """Bytes from the upstream (``b""``: it closed); relay what they complete."""
        conn = self.conn
        assert conn is not None
        try:
            conn.receive_data(data)
            return self._relay(conn, now=now)
        except HTTPProtocolError:
            return self.upstream_broken(BROKEN_PROTOCOL if data else BROKEN_RESET, now=now)

    def _relay(self, conn: ClientConnection, *, now: float) -> int:
        out = self._out_client
        server = self._server
        while True:
            event = conn.next_event()
            kind = type(event)
            if kind is Data:
                assert isinstance(event, Data)
                out += server.send_data(event.data)
                self.bytes_sent += len(event.data)
            elif event is NEED_DATA:
                if self.upload_done or self.response_started:
                    self.deadline = now + self.upstream.config.read_timeout
                return PENDING
            elif kind is Response:
                assert isinstance(event, Response)
                self._response_head(event, now=now)
            elif isinstance(event, EndOfMessage):
                out += server.send_end()
                return self._complete(conn)
            elif isinstance(event, InformationalResponse):
                if event.status_code == 101:
                    if self.upgrade is None:  # (h11 already refuses a 101 nobody asked for)
                        raise HTTPProtocolError("101 Switching Protocols without an upgrade")
                    self._switched_head(event, now=now)
                    return SWITCHED
                # other 1xx: gateproxy already answered the client's Expect itself
            else:
                raise HTTPProtocolError(f"unexpected {event!r}")

    def _response_head(self, response: Response, *, now: float) -> None:
        if not self.upload_done:
            self.keep_client = False  # answered before the upload ended: neither is reusable
            self.close_client = True
        headers = client_headers(
            self._guarded(response.headers, now=now), close=self.close_client, date=self.date
        )
        self._out_client += self._server.send_response(
            response.status_code, response.reason, headers
        )
        self.status = response.status_code
        self.response_started = True

    def _switched_head(self, response: InformationalResponse, *, now: float) -> None:
        """Relay a 101 (the guard sees its Set-Cookie like any response's)."""
        rewritten = client_headers(self._guarded(response.headers, now=now), close=False, date=b"")
        headers = switched_headers(response.headers, rewritten)
        self._out_client += self._server.send_informational(101, headers)
        self.status = 101
        self.response_started = True
        self.response_done = True
        self.keep_client = False
        self.upstream.balancer.report_success(self.server)

    def _guarded(self, headers: Headers, *, now: float) -> Headers:
        g = self._guard
        if g is None:
            return headers
        action = g.guard.on_response(
            request_headers=g.fields,
            response_headers=headers,
            path=g.path,
            client=g.client,
            is_probe=g.is_probe,
            method=g.method,
            now=now - g.clock_offset,
            listener=g.listener,
            scope=self.upstream.name,
        )
        return action.apply(headers)

    def _complete(self, conn: ClientConnection) -> int:
        self.response_done = True
        reusable = self.upload_done and conn.reusable()
        if reusable:
            conn.start_next_cycle()
            self.upstream.balancer.report_success(self.server)
        self._actions.append(RELEASE_REUSABLE if reusable else RELEASE_CLOSE)
        self.conn = None
        self.keep_client = self.keep_client and self.upload_done
        return COMPLETE

    # --- failures -----------------------------------------------------------------------------

    def upstream_broken(self, kind: int, *, now: float) -> int:
        """The upstream connection failed after it was ready (reset, timeout, bad bytes)."""
        conn = self.conn
        self.conn = None
        self._actions.append(RELEASE_CLOSE)
        if conn is not None and retry_on_fresh_connection(
            attempt=self._attempt,
            reused=conn.reused,
            bytes_received=conn.bytes_received,
            has_body=self.has_body,
            response_started=self.response_started,
        ):
            self._attempt += 1
            self._fresh = True
            self._tried = set()
            return self.start(now=now)
        reason = ("connect", "timeout", "protocol")[kind]
        if kind == BROKEN_PROTOCOL:
            self.upstream.counters.failed(reason)
        else:
            self.upstream.report_failure(self.server, reason=reason, now=now)
        if self.response_started:
            return ABORT
        self.error_status = 504 if kind == BROKEN_TIMEOUT else 502
        return ANSWER

    def timed_out(self, *, now: float) -> int:
        """The exchange's deadline passed: a connect or an upstream read took too long."""
        if self.conn is None:
            return self.connect_failed(timeout=True, now=now)
        return self.upstream_broken(BROKEN_TIMEOUT, now=now)

    def abandon(self) -> None:
        """The client went away or broke a limit: drop the upstream side, never reuse it."""
        if self.conn is not None:
            self._actions.append(RELEASE_CLOSE)
            self.conn = None
