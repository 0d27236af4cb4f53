"""Which server of an upstream serves the next request: round robin plus health state.

Theory of operation
-------------------
One :class:`Balancer` per upstream holds a row of state per server (``"host:port"``; duplicates
in the list are dropped, first occurrence kept) and a round-robin cursor. Two independent signals
decide whether a server may be picked; it is *usable* only when both allow it:

* **Active health** (``healthy``), set by the prober through :meth:`Balancer.set_healthy`.
  Servers start healthy; an unhealthy server is never picked.
* **Passive health** (``available``), nginx's ``max_fails`` / ``fail_timeout``:

  - The first failure opens a window of ``fail_timeout``; ``max_fails`` failures inside the
    window make the server unavailable for ``fail_timeout`` from the last failure. A failure after
    the window has passed (and below ``max_fails``) starts a new window with a count of 1.
  - When the unavailable period ends the server is picked again *on probation*: its count stays
    at ``max_fails``, so one more failure takes it out again at once (nginx does the same).
  - :meth:`Balancer.report_success` resets the count to 0, ending probation. It does not end a
    running unavailable period: a success may come from a request started before the failures.
  - ``max_fails == 0`` turns passive checks off (failures are still counted for the stats).
  - As in nginx, an upstream with a **single server** never marks it unavailable: refusing the
    only server turns one failed connect into ``fail_timeout`` seconds of 502s.

Times are the ``now`` parameters (the shell passes ``trio.current_time()``); a server is
unavailable while ``now < down_until``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

__all__ = ["Balancer", "ServerState"]


@dataclass(frozen=True)
class ServerState:
    """A snapshot of one server: active health, passive availability, failure count."""

    address: str
    healthy: bool
    available: bool
    fails: int


class _Server:
    __slots__ = ("address", "down_until", "fails", "healthy", "window_start")

    def __init__(self, address: str) -> None:
        self.address = address
        self.healthy = True
        self.fails = 0
        self.window_start = 0.0
        self.down_until = float("-inf")


class Balancer:
    """Round robin over the usable servers of one upstream."""

    __slots__ = ("_by_address", "_cursor", "_fail_timeout", "_max_fails", "_passive", "_servers")

    def __init__(self, servers: Sequence[str], *, max_fails: int, fail_timeout: float) -> None:
        if not servers:
            raise ValueError("a balancer needs at least one server, got none")
        if max_fails < 0:
            raise ValueError(f"max_fails must be >= 0, got {max_fails}")
        if fail_timeout < 0:
            raise ValueError(f"fail_timeout must be >= 0, got {fail_timeout}")
        self._by_address: dict[str, _Server] = {}
        for address in servers:
            self._by_address.setdefault(address, _Server(address))
        self._servers = tuple(self._by_address.values())
        self._max_fails = max_fails
        self._fail_timeout = fail_timeout
        self._passive = max_fails > 0 and len(self._servers) > 1
        self._cursor = 0

    def _get(self, address: str) -> _Server:
        try:
            return self._by_address[address]
        except KeyError:
            raise KeyError(f"{address!r} is not a server of this upstream") from None

    def _usable(self, server: _Server, now: float) -> bool:
        return server.healthy and not (self._passive and now < server.down_until)

    def pick(self, *, now: float, exclude: Collection[str] = ()) -> str | None:
        """Return the next usable server not in ``exclude`` (round robin), or None if none is."""
        servers = self._servers
        count = len(servers)
        start = self._cursor
        for step in range(count):
            index = (start + step) % count
            server = servers[index]
            if self._usable(server, now) and server.address not in exclude:
                self._cursor = (index + 1) % count
                return server.address
        return None

    def report_failure(self, server: str, *, now: float) -> None:
        """Count a failed request to ``server``; enough of them make it unavailable for a while."""
        state = self._get(server)
        on_probation = self._max_fails > 0 and state.fails >= self._max_fails
        window_over = now >= state.window_start + self._fail_timeout
        if state.fails == 0 or (window_over and not on_probation):
            state.fails = 1
            state.window_start = now
        else:
            state.fails += 1
        if self._max_fails > 0 and state.fails >= self._max_fails:
            state.down_until = now + self._fail_timeout

    def report_success(self, server: str) -> None:
        """Reset the failure count of ``server`` (a running unavailable period still runs out)."""
        self._get(server).fails = 0

    def set_healthy(self, server: str, *, healthy: bool) -> None:
        """Record the active prober's verdict on ``server``."""
        self._get(server).healthy = healthy

    def servers_state(self, *, now: float) -> list[ServerState]:
        """Return a snapshot of every server, in config order."""
        return [
            ServerState(
                address=s.address,
                healthy=s.healthy,
                available=not (self._passive and now < s.down_until),
                fails=s.fails,
            )
            for s in self._servers
        ]

    def usable_count(self, *, now: float) -> int:
        """Return how many servers are both healthy and available."""
        return sum(1 for s in self._servers if self._usable(s, now))
