"""The per-upstream group: the pure ``UpstreamState`` plus a keep-alive pool of real sockets.

Theory of operation: which server serves a request is decided in core (the machine asks
``state.balancer``); whether an idle keep-alive connection is reused, or which ones are closed,
is decided by the pure ``core.pool.Pool``. This module executes: :meth:`UpstreamGroup.checkout`
hands out an idle connection (closing the stale ones the pool names), :meth:`connect` opens a
new one (the caller's deadline bounds it: the machine's ``connect_timeout``), :meth:`checkin`
gives one back. Closing a socket never waits, so none of this checkpoints except the connect.
"""

from __future__ import annotations

import trio

from gateproxy.core.balancer import Balancer
from gateproxy.core.config import UpstreamConfig, split_hostport
from gateproxy.core.metrics import UpstreamCounters
from gateproxy.core.pool import Pool
from gateproxy.core.upstream_state import UpstreamState
from gateproxy.errors import UpstreamConnectError, UpstreamTimeout
from gateproxy.net.upstream import UpstreamConnection


class UpstreamGroup:
    """One configured upstream: balancer + pool decisions executed with real sockets."""

    def __init__(self, name: str, config: UpstreamConfig, *, counters: UpstreamCounters) -> None:
        self.state = UpstreamState(name, config, counters=counters)
        self.pool: Pool[UpstreamConnection] = Pool(
            max_idle=config.keepalive,
            idle_timeout=config.keepalive_timeout,
            max_requests=config.keepalive_requests,
        )

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def config(self) -> UpstreamConfig:
        return self.state.config

    @property
    def counters(self) -> UpstreamCounters:
        return self.state.counters

    @property
    def balancer(self) -> Balancer:
        return self.state.balancer

    def checkout(self, server: str, *, fresh: bool, now: float) -> UpstreamConnection | None:
        """An idle connection to ``server`` (``http.reused`` set), or None: open a new one."""
        checkout = self.pool.checkout(server, now=now)
        _close_all(checkout.close)
        conn = checkout.reuse
        if conn is None:
            return None
        if fresh:
            conn.close()
            return None
        conn.http.reused = True
        return conn

    async def connect(self, server: str) -> UpstreamConnection:
        """A new connection (counted as active in the pool); OSError becomes
        UpstreamConnectError. No timeout of its own: the caller's deadline bounds it."""
        host, port = split_hostport(server)
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            self.pool.discard(server)
            raise UpstreamConnectError(server, f"connect failed: {exc.strerror or exc}") from exc
        except BaseException:
            self.pool.discard(server)
            raise
        return UpstreamConnection(stream, server=server)

    async def acquire(self, server: str, *, fresh: bool = False) -> UpstreamConnection:
        """``checkout`` or ``connect`` under ``connect_timeout`` (for callers without a
        machine, e.g. pass-through health answers)."""
        conn = self.checkout(server, fresh=fresh, now=trio.current_time())
        if conn is not None:
            return conn
        with trio.move_on_after(self.config.connect_timeout):
            return await self.connect(server)  # (a cancelled connect un-counts itself)
        raise UpstreamTimeout(server, f"connect timed out after {self.config.connect_timeout:g}s")

    def checkin(self, conn: UpstreamConnection, *, reusable: bool, now: float) -> None:
        """Give a connection back after an exchange; the pool decides keep or close."""
        to_close = self.pool.checkin(
            conn.server,
            conn,
            reusable=reusable,
            requests_served=conn.http.requests_served,
            now=now,
        )
        _close_all(to_close)

    def discard(self, conn: UpstreamConnection) -> None:
        """Drop a broken connection: never reused."""
        self.pool.discard(conn.server)
        conn.close()

    def close_expired(self, *, now: float) -> None:
        _close_all(self.pool.expired(now=now))

    def close_idle(self) -> None:
        _close_all(self.pool.close_all())

    def servers_view(self, *, now: float) -> list[dict[str, object]]:
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

    def servers_up(self, *, now: float) -> list[str]:
        return self.state.servers_up(now=now)


def _close_all(conns: tuple[UpstreamConnection, ...]) -> None:
    for conn in conns:
        conn.close()
