"""The pump: executes one client connection's ``ConnectionMachine`` with real sockets.

Theory of operation. After the handshake, :meth:`Pump.run` loops: execute the machine's actions
(get an upstream connection, release one, count a limit, log, send deferred tickets, fetch a
pass-through health answer), send what the machine buffered for the upstream and for the
client, then wait for what ``machine.wait`` names and feed the result back as an event. It
makes no decision of its own.

One deadline per connection. The loop runs inside one ``CancelScope`` whose deadline follows
the machine's ``deadline`` lazily: it is moved only when the machine's is *earlier* (a later one
just lets the scope fire early; the machine then says nothing happened and a new scope starts),
so steady keep-alive traffic re-arms nothing per request. Every wait may be cancelled by it:
reads lose nothing, and writes keep what they did not send (``net.fd_io``). While idle between
requests the scope is registered in ``shared.idle_scopes``, so a drain wakes it at once.

Waiting for both peers (a request body is uploading while the response may come early) first
tries both without blocking, and only then waits on both descriptors in two small tasks.
"""

from __future__ import annotations

import contextlib
import math
import ssl
import traceback

import trio

from gateproxy.core.actions import (
    Acquire,
    Enforced,
    LogRecord,
    PassThrough,
    Release,
    ReleaseTickets,
)
from gateproxy.core.health import unavailable_answer
from gateproxy.core.machine import (
    ABORT_CONNECTION,
    CLOSE_NOTIFY,
    LINGER,
    WAIT_ACTIONS,
    WAIT_BOTH,
    WAIT_CLIENT,
    WAIT_UPSTREAM,
    ConnectionMachine,
)
from gateproxy.errors import UpstreamError, UpstreamTimeout
from gateproxy.logs import ConnectionTLS, event
from gateproxy.net.health_pass import pass_through_answer
from gateproxy.net.lingering import linger_counted
from gateproxy.net.plain_stream import PlainStream
from gateproxy.net.runtime import ListenerRuntime
from gateproxy.net.tls_stream import ServerTLSStream
from gateproxy.net.upstream import UpstreamConnection
from gateproxy.net.upstream_group import UpstreamGroup
from gateproxy.tls.libssl import server_name

CLOSE_GRACE = 1.0  # how long a clean close may wait for a stuck peer
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_INTERNAL_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 22\r\nconnection: close\r\n\r\nInternal Server Error\n"
)


ClientStream = PlainStream | ServerTLSStream


class Pump:
    """Runs one connection's machine (see the module docstring)."""

    def __init__(
        self,
        listener: ListenerRuntime,
        client: ClientStream,
        machine: ConnectionMachine,
        *,
        client_ip: str,
        ssl_object: ssl.SSLObject | None,
    ) -> None:
        self.listener = listener
        self.counters = listener.counters
        self.client = client
        self.machine = machine
        self.client_ip = client_ip
        self.ssl_object = ssl_object
        self.upstream: UpstreamConnection | None = None
        self.group: UpstreamGroup | None = None
        self._scope = trio.CancelScope()
        self._idle = False
        self._first_upstream_read = False
        self._tls: ConnectionTLS | None = None  # read at the first logged line
        self._error: Exception | None = None  # what the first round raised (see first_round)
        self._finished = False

    async def run(self) -> None:
        """Serve the connection until the machine ends it, then close it accordingly."""
        try:
            with trio.CancelScope(deadline=self.machine.deadline) as scope:
                await self.first_round(scope)
            await self.rest(scope)
        finally:
            self.finish()

    async def first_round(self, scope: trio.CancelScope) -> None:
        """The loop's first round under ``scope``, which the caller entered: with TLS, the
        scope the handshake ran under, re-armed here to the machine's deadline (one deadline
        per connection from accept on). Then :meth:`rest`, outside ``scope``; whatever happens,
        the caller calls :meth:`finish` last (a ``finally``)."""
        scope.deadline = self.machine.deadline
        self._scope = scope
        try:
            await self._loop()
        except Exception as exc:  # a bug of ours: answered by rest(), contained
            self._error = exc
        # (a Cancelled goes on: the early fire of ``scope`` is caught by the caller's ``with``
        # and handled in rest(); another one ends the connection through the caller's finally)

    async def rest(self, scope: trio.CancelScope) -> None:
        """After :meth:`first_round`: each passed deadline or drain wake-up is told to the
        machine and the loop goes on under a new deadline; then the connection is closed."""
        machine = self.machine
        try:
            if self._error is not None:
                raise self._error
            while scope.cancelled_caught:
                self._set_idle(False)
                now = trio.current_time()
                if now >= scope.deadline:
                    machine.timer(now=now)
                else:  # cancelled from outside: a drain woke this idle connection
                    machine.wake(now=now)
                with trio.CancelScope(deadline=machine.deadline) as scope:
                    self._scope = scope
                    await self._loop()
        except Exception as exc:  # a bug of ours: contained to this connection
            await self._internal_error(exc)
            return
        finally:
            self.finish()
        await self._close(machine.wait)

    def finish(self) -> None:
        """The loop is over: no more idle, no upstream, the machine told (once)."""
        if self._finished:
            return
        self._finished = True
        self._set_idle(False)
        self._drop_upstream()
        self.machine.closed()

    # --- the loop ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        machine, client, scope = self.machine, self.client, self._scope
        while True:
            if machine.actions:
                await self._execute()
                continue
            if machine.out_upstream:
                await self._send_upstream()
                if machine.actions:
                    continue
            if machine.out_client or client.unsent:
                data = bytes(machine.out_client)
                machine.out_client.clear()
                try:
                    await client.send_all(data)
                except _BROKEN:
                    machine.client_gone(now=trio.current_time())
                else:
                    self.counters.bytes_sent += len(data)
            wait = machine.wait
            if wait >= CLOSE_NOTIFY:
                return
            deadline = machine.deadline
            if deadline < scope.deadline:
                scope.deadline = deadline
            if wait == WAIT_CLIENT:
                await self._read_client()
            elif wait == WAIT_UPSTREAM:
                await self._read_upstream()
            elif wait == WAIT_BOTH:
                await self._read_either()
            elif wait == WAIT_ACTIONS and not machine.actions:
                raise RuntimeError("the machine waits for actions but left none")

    async def _read_client(self) -> None:
        machine = self.machine
        idle = machine.idle
        if idle:
            self._set_idle(True)
        try:
            data = await self.client.receive_some()
        except _BROKEN:
            machine.client_gone(now=trio.current_time())
            return
        finally:
            if idle:
                self._set_idle(False)
        self.counters.bytes_received += len(data)
        machine.client_data(data, now=trio.current_time())

    async def _read_upstream(self) -> None:
        upstream = self.upstream
        assert upstream is not None
        first, self._first_upstream_read = self._first_upstream_read, False
        try:
            data = await upstream.receive(wait_first=first)
        except UpstreamError:
            self.machine.upstream_failed(connected=True, timeout=False, now=trio.current_time())
            return
        self._upstream_received(len(data))
        self.machine.upstream_data(data, now=trio.current_time())

    async def _read_either(self) -> None:
        machine, upstream = self.machine, self.upstream
        assert upstream is not None
        try:
            data = self.client.receive_nowait()
        except _BROKEN:
            machine.client_gone(now=trio.current_time())
            return
        if data is not None:
            self.counters.bytes_received += len(data)
            machine.client_data(data, now=trio.current_time())
            return
        try:
            updata = upstream.receive_nowait()
        except UpstreamError:
            machine.upstream_failed(connected=True, timeout=False, now=trio.current_time())
            return
        if updata is not None:
            self._upstream_received(len(updata))
            machine.upstream_data(updata, now=trio.current_time())
            return
        await _wait_readable_either(self.client.fd, upstream.fd)

    async def _send_upstream(self) -> None:
        machine, upstream = self.machine, self.upstream
        data = bytes(machine.out_upstream)
        machine.out_upstream.clear()
        if upstream is None:
            return  # the exchange was abandoned before its connection came
        self._first_upstream_read = True
        try:
            group = self.group
            send_timeout = group.config.send_timeout if group is not None else math.inf
            await upstream.send(data, send_timeout=send_timeout)
            if group is not None:
                group.counters.bytes_sent += len(data)
        except UpstreamTimeout:
            machine.upstream_failed(connected=True, timeout=True, now=trio.current_time())
        except UpstreamError:
            machine.upstream_failed(connected=True, timeout=False, now=trio.current_time())

    def _upstream_received(self, size: int) -> None:
        group = self.group
        if group is not None:
            group.counters.bytes_received += size

    def _set_idle(self, idle: bool) -> None:
        if idle == self._idle:
            return
        self._idle = idle
        scopes = self.listener.shared.idle_scopes
        if idle:
            scopes.add(self._scope)
        else:
            scopes.discard(self._scope)

    # --- actions ----------------------------------------------------------------------------

    async def _execute(self) -> None:
        for action in self.machine.take_actions():
            kind = type(action)
            if kind is LogRecord:
                assert isinstance(action, LogRecord)
                self._log(action)
            elif kind is Release:
                assert isinstance(action, Release)
                self._release(action.reusable)
            elif kind is Acquire:
                assert isinstance(action, Acquire)
                await self._acquire(action)
            elif kind is Enforced:
                assert isinstance(action, Enforced)
                self.listener.enforced(action.reason, client=self.client_ip)
            elif kind is ReleaseTickets:
                self._release_tickets()
            elif kind is PassThrough:
                assert isinstance(action, PassThrough)
                await self._pass_through(action)
            else:
                raise RuntimeError(f"unknown action {action!r}")

    async def _acquire(self, action: Acquire) -> None:
        group = self.listener.upstreams[action.upstream]
        self.group = group
        conn = group.checkout(action.server, fresh=action.fresh, now=trio.current_time())
        if conn is None:
            deadline = self.machine.deadline
            if deadline < self._scope.deadline:
                self._scope.deadline = deadline  # connect_timeout
            try:
                conn = await group.connect(action.server)
            except UpstreamError:
                self.machine.upstream_failed(
                    connected=False, timeout=False, now=trio.current_time()
                )
                return
        self.upstream = conn
        self.machine.upstream_ready(conn.http, now=trio.current_time())

    def _release(self, reusable: bool) -> None:
        conn, group = self.upstream, self.group
        self.upstream = None
        if conn is None or group is None:
            return
        if reusable:
            group.checkin(conn, reusable=True, now=trio.current_time())
        else:
            group.discard(conn)

    def _drop_upstream(self) -> None:
        if self.upstream is not None:
            self._release(False)

    def _release_tickets(self) -> None:
        engine = self.listener.engine
        if engine is not None and self.ssl_object is not None and not self.machine.probe:
            engine.send_deferred_tickets(self.ssl_object)
            shared = self.listener.shared_sessions
            if shared is not None:  # no prober: its TLS 1.2 session may go to the fleet
                shared.publish(self.ssl_object)

    async def _pass_through(self, action: PassThrough) -> None:
        check = action.check
        assert check.upstream is not None
        group = self.listener.upstreams[check.upstream]
        cache = self.listener.pass_through
        if cache is None:
            answer = unavailable_answer("pass-through answers are not set up")
        else:
            answer = await pass_through_answer(check, group, cache=cache)
        self.machine.health_answer(answer, now=trio.current_time())

    def _log(self, record: LogRecord) -> None:
        if record.kind != "health":
            self._observe(record)
        access_log = self.listener.access_log
        if not access_log.enabled:
            return
        access_log.request(
            client=record.client or self.client_ip,
            method=record.method,
            target=record.target,
            status=record.status,
            bytes_sent=record.bytes_sent,
            upstream=record.upstream,
            duration=record.duration,
            listener=self.listener.name,
            kind=record.kind,
            headers=record.headers,
            tls=self._connection_tls(),
        )

    def _observe(self, record: LogRecord) -> None:
        """The request's latencies into the listener's (and its upstream's) histograms."""
        counters, duration, first_byte = self.counters, record.duration, record.first_byte
        counters.request_seconds.observe(duration)
        if first_byte >= 0.0:
            counters.first_byte_seconds.observe(first_byte)
        group = self.group
        if record.upstream and group is not None:  # this request acquired from ``group``
            upstream = group.counters
            upstream.request_seconds.observe(duration)
            if first_byte >= 0.0:
                upstream.first_byte_seconds.observe(first_byte)

    def _connection_tls(self) -> ConnectionTLS | None:
        ssl_object = self.ssl_object
        if ssl_object is None:
            return None
        if self._tls is None:
            cipher = ssl_object.cipher()
            self._tls = ConnectionTLS(
                version=ssl_object.version() or "",
                cipher=cipher[0] if cipher else "",
                resumed=ssl_object.session_reused,
                sni=server_name(ssl_object),
            )
        return self._tls

    # --- the end ----------------------------------------------------------------------------

    async def _close(self, how: int) -> None:
        if how == ABORT_CONNECTION:
            await self._abort()
            return
        plan = self.machine.linger
        if how == LINGER and plan is not None:
            await linger_counted(self.client, plan, listener=self.listener)
        elif self.client.close_nowait():  # no wait, so no deadline: the usual clean close
            return
        grace = trio.CancelScope(deadline=trio.current_time() + CLOSE_GRACE, shield=True)
        with grace as scope, contextlib.suppress(*_BROKEN):
            await self.client.aclose()
        if scope.cancelled_caught:
            await self._abort()

    async def _abort(self) -> None:
        """Cut the connection without close_notify, so a partial response never looks whole."""
        await trio.aclose_forcefully(self.client.transport_stream)

    async def _internal_error(self, exc: Exception) -> None:
        event(
            "request_error",
            listener=self.listener.name,
            error=repr(exc),
            trace=traceback.format_exc(limit=8),
        )
        if self.machine.response_started:
            await self._abort()
            return
        grace = trio.CancelScope(deadline=trio.current_time() + CLOSE_GRACE, shield=True)
        with grace, contextlib.suppress(*_BROKEN):
            await self.client.send_all(_INTERNAL_ERROR)
            await self.client.aclose()


async def _wait_readable_either(fd_a: int, fd_b: int) -> None:
    """Return once either descriptor is readable."""
    async with trio.open_nursery() as nursery:

        async def wait(fd: int) -> None:
            await trio.lowlevel.wait_readable(fd)
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait, fd_a)
        nursery.start_soon(wait, fd_b)


__all__ = ["ClientStream", "Pump"]
