"""Active upstream health checks: one prober task per server of every upstream with ``health``.

Theory of operation. :func:`run_health_checks` starts :func:`watch_server` for each server of
each upstream that has a ``health`` block. A watcher checks its server at once, then every
``interval`` (measured from the start of one check to the start of the next, so a slow server
does not stretch the period; a check that overruns is followed by the next one at once). Each
check is an HTTP/1.1 ``GET health.path`` with ``Host: health.host`` (default: the server
address), a ``User-Agent`` naming gateproxy and no cookies, under its own deadline ``timeout``
covering connect, send and the whole response. A status in ``expected_statuses`` passes;
anything else (refused, reset, timeout, invalid response, other status) fails.

The result feeds the pure :class:`gateproxy.core.health.ServerHealth` (rise/fall); on a change
the verdict goes to ``group.balancer.set_healthy`` and one ``upstream_health`` event line is
logged. Each prober keeps its own keep-alive connection to its server (separate from the
forwarding pool, so probes never queue behind traffic and traffic never counts probes): it is
reused while the server keeps it open; a reused connection that fails before any response byte
is retried once on a fresh connection within the same deadline (the server merely closed an
idle connection). A connection error or timeout closes it; an unexpected status does not.

Probers only read the trio clock through ``trio.sleep_until``/``trio.move_on_at``, so tests run
them under ``MockClock`` with in-memory streams (``connect`` is a parameter).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import trio

from gateproxy.core.config import UpstreamHealthConfig, split_hostport
from gateproxy.core.forwarding import retry_on_fresh_connection
from gateproxy.core.h1_client import ClientConnection
from gateproxy.core.health import ServerHealth
from gateproxy.errors import UpstreamConnectError, UpstreamError
from gateproxy.logs import event
from gateproxy.net.http_client import fetch
from gateproxy.net.upstream_group import UpstreamGroup

__all__ = [
    "CheckResult",
    "Connector",
    "HealthProbe",
    "open_tcp",
    "run_health_checks",
    "watch_server",
]

Connector = Callable[[str], Awaitable[trio.abc.Stream]]
MAX_PROBE_BODY = 64 * 1024  # a longer health body is not read to the end: the connection closes
MAX_PROBE_HEAD = 16 * 1024
USER_AGENT = b"gateproxy-health-check"


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
    """Checks one server: ``await check()`` gives a :class:`CheckResult`; then ``aclose()``."""

    def __init__(
        self, server: str, *, config: UpstreamHealthConfig, connect: Connector = open_tcp
    ) -> None:
        self.server = server
        self.config = config
        self._connect = connect
        self._conn: _Connection | None = None
        self.connections_opened = 0
        self._target = config.path.encode()
        self._headers = [
            (b"host", (config.host or server).encode()),
            (b"user-agent", USER_AGENT),
            (b"accept", b"*/*"),
        ]

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
                reply = await fetch(
                    conn.stream,
                    conn.http,
                    method=b"GET",
                    target=self._target,
                    headers=self._headers,
                    max_body=MAX_PROBE_BODY,
                )
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
            if not reply.reusable:
                await self._drop()  # (a huge body is not read to the end either)
            ok = reply.status in self.config.expected_statuses
            return CheckResult(ok, reply.status, "" if ok else f"status {reply.status}")
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

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    async def aclose(self) -> None:
        await self._drop()


def _reason(exc: UpstreamError) -> str:
    # "upstream 10.0.0.5:8080: connect failed: ..." -> "connect failed: ..."
    return str(exc).removeprefix(f"upstream {exc.server}: ")


async def watch_server(group: UpstreamGroup, server: str, *, connect: Connector = open_tcp) -> None:
    """Check ``server`` of ``group`` forever; its verdicts go to ``group.balancer``."""
    config = group.config.health
    if config is None:
        raise ValueError(f"upstream {group.name!r} has no health config")
    health = ServerHealth(rise=config.rise, fall=config.fall)
    probe = HealthProbe(server, config=config, connect=connect)
    try:
        while True:
            started = trio.current_time()
            result = await probe.check()
            if health.record(result.ok):
                group.balancer.set_healthy(server, healthy=health.healthy)
                event(
                    "upstream_health",
                    upstream=group.name,
                    server=server,
                    healthy=health.healthy,
                    status=result.status,
                    reason=result.reason,
                )
            await trio.sleep_until(started + config.interval)
    finally:
        await probe.aclose()


async def run_health_checks(
    groups: Mapping[str, UpstreamGroup],
    *,
    connect: Connector = open_tcp,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Probe every server of every upstream with a ``health`` block, until cancelled.

    Returns at once (after ``task_status.started()``) when no upstream has active checks.
    """
    async with trio.open_nursery() as nursery:
        for group in groups.values():
            if group.config.health is None:
                continue
            for server in dict.fromkeys(group.config.servers):
                nursery.start_soon(_watch, group, server, connect, name=f"health {server}")
        task_status.started()


async def _watch(group: UpstreamGroup, server: str, connect: Connector) -> None:
    await watch_server(group, server, connect=connect)
