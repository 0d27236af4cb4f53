"""Active upstream health checks: one prober task per server of every upstream with ``health``.

Theory of operation. :func:`run_health_checks` starts :func:`watch_server` for each server of
each upstream that has a ``health`` block. It runs once per daemon: in a plain ``Daemon``, or in
the supervisor of ``gateproxy run`` (``net.fleet_health``), never in each worker (N workers
would make N checks and N app sessions). A watcher checks its server at once, then every
``interval`` (measured from the start of one check to the start of the next, so a slow server
does not stretch the period; a check that overruns is followed by the next one at once). Each
check is an HTTP/1.1 ``GET health.path`` with ``Host: health.host`` (default: the server
address) and a ``User-Agent`` naming gateproxy, under its own deadline ``timeout`` covering
connect, send and the whole response. A status in ``expected_statuses`` passes; anything else
(refused, reset, timeout, invalid response, other status) fails.

A check is one of gateproxy's own health requests for the session guard (``guard``): it sends
back the session cookie the app gave gateproxy's health requests to that server before (so the
app keeps at most one session per server for them) and reports every session cookie it is set
(``SessionGuard.on_own_response``), so the checker is never the leak it exists to prevent.

The result feeds the daemon's :class:`gateproxy.core.health.HealthBoard` (rise/fall per
server); on a change ``on_change`` gets the :class:`~gateproxy.core.health.Verdict` (a plain
daemon sets its balancers, :func:`apply_verdict`; the supervisor tells every worker) and one
``upstream_health`` event line is logged. Each prober keeps its own keep-alive connection to
its server (separate from the forwarding pool, so probes never queue behind traffic and traffic
never counts probes): it is reused while the server keeps it open; a reused connection that
fails before any response byte is retried once on a fresh connection within the same deadline
(the server merely closed an idle connection). A connection error or timeout closes it; an
unexpected status does not.

Probers only read the trio clock through ``trio.sleep_until``/``trio.move_on_at``, so tests run
them under ``MockClock`` with in-memory streams (``connect`` is a parameter). The session guard
gets ``time.monotonic()``: its pins are shared with other processes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial

import trio

from gateproxy.core.config import UpstreamConfig, UpstreamHealthConfig, split_hostport
from gateproxy.core.forwarding import retry_on_fresh_connection
from gateproxy.core.h1_client import ClientConnection
from gateproxy.core.health import HealthBoard, Verdict
from gateproxy.core.session_guard import OWN_CLIENT, SessionGuard
from gateproxy.errors import UpstreamConnectError, UpstreamError
from gateproxy.logs import event
from gateproxy.net.http_client import fetch
from gateproxy.net.upstream_group import UpstreamGroup

__all__ = [
    "CheckResult",
    "Connector",
    "HealthProbe",
    "apply_verdict",
    "open_tcp",
    "run_health_checks",
    "watch_server",
]

Connector = Callable[[str], Awaitable[trio.abc.Stream]]
MAX_PROBE_BODY = 64 * 1024  # a longer health body is not read to the end: the connection closes
MAX_PROBE_HEAD = 16 * 1024
USER_AGENT = OWN_CLIENT.encode()
OnChange = Callable[[Verdict], None]


async def open_tcp(server: str) -> trio.abc.Stream:
    """The default connector: a TCP connection to ``"host:port"``."""
    host, port = split_hostport(server)
    return await trio.open_tcp_stream(host, port)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check: passed or not, the status seen (0 if none) and why it failed."""

    ok: bool
    status: int = 0
    reason: str = ""


class _Connection:
    """One kept-alive probe connection: the stream and its HTTP state (the parser pair)."""

    __slots__ = ("http", "stream")

    def __init__(self, stream: trio.abc.Stream, *, server: str) -> None:
        self.stream = stream
        self.http = ClientConnection(server=server, max_head=MAX_PROBE_HEAD)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)


class HealthProbe:
    """Checks one server: ``await check()`` gives a :class:`CheckResult`; then ``aclose()``.

    With a ``guard``, checks carry and report the app's session cookie for ``server`` of
    ``upstream`` (module docstring).
    """

    def __init__(
        self,
        server: str,
        *,
        config: UpstreamHealthConfig,
        connect: Connector = open_tcp,
        guard: SessionGuard | None = None,
        upstream: str = "",
    ) -> None:
        self.server = server
        self.config = config
        self._connect = connect
        self._guard = guard
        self._upstream = upstream
        self._conn: _Connection | None = None
        self.connections_opened = 0
        self._target = config.path.encode()
        host = (config.host or server).encode()
        self._headers = [(b"host", host), (b"user-agent", USER_AGENT), (b"accept", b"*/*")]

    async def check(self) -> CheckResult:
        """One check under the ``timeout`` deadline; never raises for a server's failure."""
        result = CheckResult(False, reason=f"no response within {self.config.timeout:g}s")
        with trio.move_on_after(self.config.timeout) as scope:
            result = await self._check_once()
        if scope.cancelled_caught:
            await self._drop()  # cut mid-exchange: the connection cannot be reused
        return result

    async def _check_once(self) -> CheckResult:
        for attempt in range(2):
            reused = self._conn is not None
            try:
                conn = await self._connection()
                status = await self._exchange(conn)
            except UpstreamError as exc:
                received = self._conn.http.bytes_received if self._conn is not None else 0
                await self._drop()
                if retry_on_fresh_connection(
                    attempt=attempt,
                    reused=reused,
                    bytes_received=received,
                    has_body=False,
                    response_started=False,
                ):
                    continue  # the server closed an idle keep-alive connection: try a fresh one
                return CheckResult(False, reason=_reason(exc))
            ok = status in self.config.expected_statuses
            return CheckResult(ok, status, "" if ok else f"status {status}")
        raise AssertionError("unreachable: the second attempt always returns")

    async def _connection(self) -> _Connection:
        if self._conn is None:
            try:
                stream = await self._connect(self.server)
            except OSError as exc:
                raise UpstreamConnectError(
                    self.server, f"connect failed: {exc.strerror or exc}"
                ) from exc
            self.connections_opened += 1
            self._conn = _Connection(stream, server=self.server)
        return self._conn

    async def _exchange(self, conn: _Connection) -> int:
        guard, cookie = self._guard, None
        headers = self._headers
        if guard is not None:
            cookie = guard.own_request_cookie(
                upstream=self._upstream, server=self.server, now=time.monotonic()
            )
            headers = headers if cookie is None else [*headers, (b"cookie", cookie)]
        reply = await fetch(
            conn.stream,
            conn.http,
            method=b"GET",
            target=self._target,
            headers=headers,
            max_body=MAX_PROBE_BODY,
        )
        if guard is not None:
            guard.on_own_response(
                sent=cookie,
                response_headers=reply.headers,
                path=self._target,
                upstream=self._upstream,
                server=self.server,
                now=time.monotonic(),
            )
        if not reply.reusable:
            await self._drop()  # (a huge body is not read to the end either)
        return reply.status

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    async def aclose(self) -> None:
        await self._drop()


def _reason(exc: UpstreamError) -> str:
    # "upstream 10.0.0.5:8080: connect failed: ..." -> "connect failed: ..."
    return str(exc).removeprefix(f"upstream {exc.server}: ")


async def watch_server(
    upstream: str,
    server: str,
    config: UpstreamHealthConfig,
    *,
    board: HealthBoard,
    on_change: OnChange,
    guard: SessionGuard | None = None,
    connect: Connector = open_tcp,
) -> None:
    """Check ``server`` of ``upstream`` forever; each changed verdict goes to ``on_change``."""
    probe = HealthProbe(server, config=config, connect=connect, guard=guard, upstream=upstream)
    try:
        while True:
            started = trio.current_time()
            result = await probe.check()
            verdict = board.record(
                upstream, server, ok=result.ok, rise=config.rise, fall=config.fall
            )
            if verdict is not None:
                on_change(verdict)
                event(
                    "upstream_health",
                    upstream=upstream,
                    server=server,
                    healthy=verdict.healthy,
                    status=result.status,
                    reason=result.reason,
                )
            await trio.sleep_until(started + config.interval)
    finally:
        await probe.aclose()


def checked_servers(upstreams: Mapping[str, UpstreamConfig]) -> list[tuple[str, str]]:
    """Every (upstream, server) that active checks watch, in config order."""
    return [
        (name, server)
        for name, upstream in upstreams.items()
        if upstream.health is not None
        for server in dict.fromkeys(upstream.servers)
    ]


async def run_health_checks(
    upstreams: Mapping[str, UpstreamConfig],
    *,
    board: HealthBoard,
    on_change: OnChange,
    guard: SessionGuard | None = None,
    connect: Connector = open_tcp,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Probe every server of every upstream with a ``health`` block, until cancelled.

    Returns at once (after ``task_status.started()``) when no upstream has active checks.
    """
    board.keep_only(checked_servers(upstreams))
    async with trio.open_nursery() as nursery:
        for name, server in checked_servers(upstreams):
            config = upstreams[name].health
            assert config is not None
            nursery.start_soon(
                partial(
                    watch_server,
                    name,
                    server,
                    config,
                    board=board,
                    on_change=on_change,
                    guard=guard,
                    connect=connect,
                ),
                name=f"health {server}",
            )
        task_status.started()


def apply_verdict(groups: Mapping[str, UpstreamGroup], verdict: Verdict) -> None:
    """Give ``verdict`` to the balancer of its upstream (ignored for one this process lacks)."""
    group = groups.get(verdict.upstream)
    if group is not None and verdict.server in group.config.servers:
        group.balancer.set_healthy(verdict.server, healthy=verdict.healthy)
