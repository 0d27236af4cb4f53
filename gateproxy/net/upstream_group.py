"""The per-upstream group that hands out connections, and how its failures are labelled.

Theory of operation: an :class:`UpstreamGroup` owns one upstream of the config. Which server
serves the next request is decided by the pure ``core.balancer.Balancer`` (round robin, passive
failure marking, active health state); whether an idle keep-alive connection is reused, opened or
closed is decided by the pure ``core.pool.Pool``. This module only executes those decisions:
it connects (under ``connect_timeout``), tries the next server when one refuses or resets, and
closes what the pool says to close. The connections themselves are ``net.upstream``.
"""

from __future__ import annotations

import trio

from gateproxy.core.balancer import Balancer
from gateproxy.core.config import UpstreamConfig, split_hostport
from gateproxy.core.metrics import UpstreamCounters
from gateproxy.core.pool import Pool
from gateproxy.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from gateproxy.net.upstream import UpstreamConnection


class NoServerAvailable(UpstreamError):
    """Every server of the upstream is down or was just tried: answered with 503 at once."""

    status = 503


class UpstreamGroup:
    """One configured upstream: balancer + pool decisions executed with real sockets."""

    def __init__(self, name: str, config: UpstreamConfig, *, counters: UpstreamCounters) -> None:
        self.name = name
        self.config = config
        self.counters = counters
        self.balancer = Balancer(
            config.servers, max_fails=config.max_fails, fail_timeout=config.fail_timeout
        )
        self.pool: Pool[UpstreamConnection] = Pool(
            max_idle=config.keepalive,
            idle_timeout=config.keepalive_timeout,
            max_requests=config.keepalive_requests,
        )

    async def acquire(self, *, fresh: bool = False) -> UpstreamConnection:
        """A connection to a usable server: reused from the pool, or newly opened.

        Servers that refuse or reset are marked (passive checks) and the next one is tried.
        ``fresh`` skips the pool (a retry after a stale keep-alive connection).
        """
        tried: set[str] = set()
        last_error: UpstreamError | None = None
        while True:
            now = trio.current_time()
            server = self.balancer.pick(now=now, exclude=tried)
            if server is None:
                if last_error is not None:
                    raise last_error
                raise NoServerAvailable(self.name, "no server of this upstream is available")
            tried.add(server)
            checkout = self.pool.checkout(server, now=now)
            await _close_all(checkout.close)
            if checkout.reuse is not None and not fresh:
                checkout.reuse.reused = True
                return checkout.reuse
            if checkout.reuse is not None:
                await checkout.reuse.aclose()
            try:
                return await self._open(server)
            except UpstreamError as exc:
                self.pool.discard(server)
                self.report_failure(
                    server, reason="connect" if not isinstance(exc, UpstreamTimeout) else "timeout"
                )
                last_error = exc

    async def _open(self, server: str) -> UpstreamConnection:
        host, port = split_hostport(server)
        try:
            with trio.fail_after(self.config.connect_timeout):
                stream = await trio.open_tcp_stream(host, port)
        except trio.TooSlowError as exc:
            raise UpstreamTimeout(
                server, f"connect timed out after {self.config.connect_timeout:g}s"
            ) from exc
        except OSError as exc:
            raise UpstreamConnectError(server, f"connect failed: {exc.strerror or exc}") from exc
        return UpstreamConnection(stream, server=server)

    async def release(self, conn: UpstreamConnection, *, reusable: bool) -> None:
        """Give a connection back after a request; the pool decides keep or close."""
        reusable = reusable and conn.finish_cycle()
        to_close = self.pool.checkin(
            conn.server,
            conn,
            reusable=reusable,
            requests_served=conn.requests_served,
            now=trio.current_time(),
        )
        if reusable:
            self.balancer.report_success(conn.server)
        await _close_all(to_close)

    async def discard(self, conn: UpstreamConnection) -> None:
        """Drop a broken connection: never reused."""
        self.pool.discard(conn.server)
        await conn.aclose()

    def report_failure(self, server: str, *, reason: str) -> None:
        self.counters.failures[reason] = self.counters.failures.get(reason, 0) + 1
        self.balancer.report_failure(server, now=trio.current_time())

    async def close_expired(self) -> None:
        await _close_all(self.pool.expired(now=trio.current_time()))

    async def close_idle(self) -> None:
        await _close_all(self.pool.close_all())

    def servers_view(self) -> list[dict[str, object]]:
        now = trio.current_time()
        out: list[dict[str, object]] = []
        for state in self.balancer.servers_state(now=now):
            active, idle = self.pool.counts(state.address)
            out.append(
                {
                    "address": state.address,
                    "healthy": state.healthy and state.available,
                    "active": active,
                    "idle": idle,
                }
            )
        return out

    def servers_up(self) -> list[str]:
        now = trio.current_time()
        return [
            s.address for s in self.balancer.servers_state(now=now) if s.healthy and s.available
        ]


async def _close_all(conns: tuple[UpstreamConnection, ...]) -> None:
    for conn in conns:
        await conn.aclose()


def failure_reason(exc: UpstreamError) -> str:
    """Label for ``gateproxy_upstream_failures_total{reason=...}``."""
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamProtocolError):
        return "protocol"
    if isinstance(exc, NoServerAvailable):
        return "no_server"
    return "connect"
