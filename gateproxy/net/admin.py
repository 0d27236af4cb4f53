"""The admin listener: ``/stats`` (JSON) and ``/metrics`` (Prometheus) over plain HTTP/1.1.

Theory of operation
-------------------
``serve_admin`` runs trio's accept loop (which backs off on EMFILE) with one handler task per
connection in trio's nursery. Each handler runs an HTTP/1.1 server loop on the parser pair's
server half (``core.h1_server``): wait for a request (idle keep-alive deadline until the first
byte, then a header deadline), answer it from a fresh ``stats()`` snapshot, and start the next
cycle while both sides allow keep-alive. A handler never lets an exception escape: broken
sockets end its connection quietly, anything else is logged, so one client's garbage (or a
failing stats provider) cannot affect another client or the listener.

Routes: ``GET``/``HEAD`` on ``/`` (index), ``/stats`` and ``/metrics``; other paths 404, other
methods on those paths 405 with ``Allow``. A request with a body is answered, then the connection
is closed (the admin endpoint never reads bodies).

``admin.access`` (the rules of ``core.access``, as for a listener) is checked right after accept
by an :class:`AdminGuard`: a denied client is closed before it sends a byte, counted in the stats
tree as ``admin.connections_denied`` and logged once per interval (``admin_access_denied``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus

import trio

from gateproxy.core.access import AccessList
from gateproxy.core.h1_server import ServerConnection
from gateproxy.core.http_events import NEED_DATA, EndOfMessage, Request
from gateproxy.core.limits import RejectionLog
from gateproxy.core.prometheus import render_prometheus
from gateproxy.errors import HTTPProtocolError
from gateproxy.logs import event
from gateproxy.net.listen_slots import open_guarded
from gateproxy.net.listener import trio_listener

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 30.0  # keep-alive: waiting for the first byte of the next request
HEADER_TIMEOUT = 10.0  # from the first byte of a request to the end of its headers
MAX_HEADER_BYTES = 16 * 1024
RECEIVE_SIZE = 64 * 1024

StatsProvider = Callable[[], dict[str, object]]
Refresh = Callable[[], Awaitable[None]] | None

JSON_TYPE = "application/json"
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"
INDEX = b"gateproxy admin\n\n/stats    JSON statistics\n/metrics  Prometheus metrics\n"


class AdminGuard:
    """Who may use the admin API (``admin.access``; ``access`` may be replaced by a reload) and
    how many connections it turned away."""

    def __init__(self, access: AccessList | None = None) -> None:
        self.access = access
        self.denied = 0
        self._log = RejectionLog()

    def admits(self, stream: trio.abc.Stream) -> bool:
        access = self.access
        if not access:
            return True
        client = _peer_ip(stream)
        if access.allows(client):
            return True
        self.denied += 1
        suppressed = self._log.note("*", "admin_access", now=trio.current_time())
        if suppressed is not None:
            event("admin_access_denied", client=client, suppressed_since_last=suppressed)
        return False

    def with_branch(self, stats: StatsProvider) -> StatsProvider:
        """``stats`` plus this guard's ``admin`` branch."""
        return lambda: {**stats(), "admin": {"connections_denied": self.denied}}


def _peer_ip(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    try:
        peer = sock.getpeername() if sock is not None else None
    except OSError:
        peer = None
    return str(peer[0]) if isinstance(peer, tuple) else "unknown"


@dataclass(frozen=True)
class _Reply:
    status: int
    content_type: str
    body: bytes
    extra_headers: tuple[tuple[str, str], ...] = ()


def _text(status: int, message: str, *extra: tuple[str, str]) -> _Reply:
    return _Reply(status, TEXT_TYPE, message.encode() + b"\n", extra)


def _render_stats(stats: StatsProvider) -> bytes:
    return json.dumps(stats(), indent=2, sort_keys=True).encode() + b"\n"


def _render_metrics(stats: StatsProvider) -> bytes:
    return render_prometheus(stats()).encode()


_ROUTES: dict[str, tuple[str, Callable[[StatsProvider], bytes]]] = {
    "/": (TEXT_TYPE, lambda _stats: INDEX),
    "/stats": (JSON_TYPE, _render_stats),
    "/metrics": (PROMETHEUS_TYPE, _render_metrics),
}


def route(method: bytes, target: bytes, stats: StatsProvider) -> _Reply:
    """Decide the reply to one request (the only place that calls ``stats``)."""
    path = target.split(b"?", 1)[0].decode("ascii", "replace")
    found = _ROUTES.get(path)
    if found is None:
        return _text(404, f"not found: {path}")
    if method not in (b"GET", b"HEAD"):
        return _text(405, "method not allowed", ("Allow", "GET, HEAD"))
    content_type, render = found
    try:
        body = render(stats)
    except Exception:
        log.exception("admin: rendering %s failed", path)
        return _text(500, "internal error while collecting stats")
    return _Reply(200, content_type, body)


async def _send_reply(
    stream: trio.abc.Stream,
    conn: ServerConnection,
    reply: _Reply,
    *,
    close: bool,
) -> None:
    headers = [
        (b"content-type", reply.content_type.encode()),
        (b"content-length", b"%d" % len(reply.body)),
        (b"cache-control", b"no-store"),
        *((name.lower().encode(), value.encode()) for name, value in reply.extra_headers),
    ]
    if close:
        headers.append((b"connection", b"close"))
    reason = HTTPStatus(reply.status).phrase.encode()
    data = conn.send_response(reply.status, reason, headers)
    if reply.body and conn.request_method != b"HEAD":  # a HEAD reply keeps the GET's length
        data += conn.send_data(reply.body)
    await stream.send_all(data + conn.send_end())


async def _next_request(stream: trio.abc.Stream, conn: ServerConnection) -> Request | None:
    """The next request's head, or None when the client closed or missed a deadline.

    Like nginx on ``client_header_timeout``, a client that misses a deadline is just disconnected.
    """
    started = conn.has_buffered()  # pipelined bytes already buffered
    deadline = trio.current_time() + (HEADER_TIMEOUT if started else IDLE_TIMEOUT)
    while True:
        event = conn.next_event()
        if type(event) is Request:
            assert isinstance(event, Request)
            return event
        if event is not NEED_DATA:  # ConnectionClosed (PAUSED cannot happen between cycles)
            return None
        with trio.move_on_at(deadline) as scope:
            data = await stream.receive_some(RECEIVE_SIZE)
        if scope.cancelled_caught:
            return None
        if data and not started:
            started = True
            deadline = trio.current_time() + HEADER_TIMEOUT
        conn.receive_data(bytes(data))


async def _serve_connection(
    stream: trio.abc.Stream, stats: StatsProvider, refresh: Refresh = None
) -> None:
    conn = ServerConnection(max_header_bytes=MAX_HEADER_BYTES)
    while True:
        try:
            request = await _next_request(stream, conn)
            if request is None:
                return
            # A body-less request is complete right away; anything else closes after the reply.
            complete = isinstance(conn.next_event(), EndOfMessage)
        except HTTPProtocolError as exc:
            if not conn.response_started:
                reply = _text(exc.status_hint, f"bad request: {exc}")
                await _send_reply(stream, conn, reply, close=True)
            return
        if refresh is not None:
            await refresh()
        reply = route(request.method, request.target, stats)
        await _send_reply(stream, conn, reply, close=not complete)
        if not conn.reusable():
            return
        conn.start_next_cycle()


async def handle_admin_connection(
    stream: trio.abc.Stream,
    *,
    stats: StatsProvider,
    refresh: Refresh = None,
    guard: AdminGuard | None = None,
) -> None:
    """Serve one admin connection until it ends, then close it (at once when ``guard`` denies
    the client).

    Contains every error (logged, never raised) so the listener and other clients go on.
    """
    if guard is not None and not guard.admits(stream):
        await trio.aclose_forcefully(stream)
        return
    async with stream:
        try:
            await _serve_connection(stream, stats, refresh)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("admin: connection handler failed")


async def serve_admin(
    listeners: list[trio.SocketListener],
    *,
    stats: StatsProvider,
    refresh: Refresh = None,
    guard: AdminGuard | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/stats`` and ``/metrics`` on ``listeners`` forever (never returns).

    ``stats`` returns the stats tree (``gateproxy.core.metrics.build_stats`` or ``merge_stats``);
    it is called once per ``/stats`` or ``/metrics`` request. ``task_status.started(listeners)``
    is called once the accept loops run. ``refresh`` (the supervisor's: it asks every worker)
    is awaited before each request, so ``stats`` can return what it gathered. ``guard``
    checks ``admin.access`` and adds its ``admin`` branch to the tree.
    """
    guard = guard if guard is not None else AdminGuard()
    await trio.serve_listeners(
        partial(
            handle_admin_connection, stats=guard.with_branch(stats), refresh=refresh, guard=guard
        ),
        listeners,
        task_status=task_status,
    )


async def open_admin_listeners(bind: str) -> list[trio.SocketListener]:
    """Bind ``admin.bind`` (``"127.0.0.1:9901"``, IPv6 as ``"[::1]:9901"``) like a listener
    (``SO_REUSEPORT``, refused when anybody else listens there, so ``gateproxy check`` passes
    while gateproxy runs); a ListenError names ``admin.bind``."""
    return [trio_listener(open_guarded(bind, key_path="admin.bind"))]
