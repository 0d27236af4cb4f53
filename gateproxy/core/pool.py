"""Keep-alive decisions for one upstream's connections: reuse, open, keep idle, close.

Theory of operation
-------------------
httpcore's idea with the clock as a parameter: this module decides, the shell (``net/upstream.py``)
opens and closes. The connection type ``C`` is opaque here (a stream, an h11 pair, a test int);
the pool only stores and hands back handles, and every method that drops one returns it so the
caller closes it (under a shield) -- the pool never leaks a connection it was given.

Per server (``"host:port"``) the pool keeps an ``active`` count (checked out, or being opened) and
a deque of idle connections with the time each was returned, oldest on the left:

* :meth:`Pool.checkout` takes from the *right* (most recently returned first, LIFO, like nginx),
  so the warmest connection is reused and cold ones age out. An idle connection is expired when
  ``now >= returned_at + idle_timeout``; expired ones met on the way are handed back to close.
  ``active`` goes up by one whether a connection is reused or must be opened (``reuse is None``).
* :meth:`Pool.checkin` brings ``active`` down by one and keeps the connection idle if it is
  reusable, has served fewer than ``max_requests`` requests (0 = unlimited) and ``max_idle > 0``;
  if that makes more than ``max_idle`` idle, the oldest idle one is evicted.
* :meth:`Pool.discard` brings ``active`` down for a connection the caller dropped itself.
* Checking in or discarding with no active connection is a caller bug: :class:`RuntimeError`.

Invariants (tested with hypothesis): ``0 <= active`` and ``idle <= max_idle`` for every server at
every instant. Servers with nothing active or idle are forgotten, so the table does not grow.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Checkout", "Pool"]

C = TypeVar("C")


@dataclass(frozen=True)
class Checkout(Generic[C]):
    """The decision of :meth:`Pool.checkout`: a connection to reuse (None: open one) and the
    expired idle connections the caller must close."""

    reuse: C | None
    close: tuple[C, ...]


class _Slot(Generic[C]):
    __slots__ = ("active", "idle")

    def __init__(self) -> None:
        self.active = 0
        self.idle: deque[tuple[C, float]] = deque()  # (connection, returned at), oldest first


class Pool(Generic[C]):
    """Idle-connection bookkeeping for one upstream, keyed by server."""

    __slots__ = ("_idle_timeout", "_max_idle", "_max_requests", "_slots")

    def __init__(self, *, max_idle: int, idle_timeout: float, max_requests: int) -> None:
        if max_idle < 0:
            raise ValueError(f"max_idle must be >= 0, got {max_idle}")
        if idle_timeout < 0:
            raise ValueError(f"idle_timeout must be >= 0, got {idle_timeout}")
        if max_requests < 0:
            raise ValueError(f"max_requests must be >= 0 (0 = unlimited), got {max_requests}")
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._max_requests = max_requests
        self._slots: dict[str, _Slot[C]] = {}

    def _forget_if_empty(self, server: str, slot: _Slot[C]) -> None:
        if slot.active == 0 and not slot.idle:
            del self._slots[server]

    def _release(self, server: str, what: str) -> _Slot[C]:
        slot = self._slots.get(server)
        if slot is None or slot.active == 0:
            raise RuntimeError(f"{what} for {server!r} with no active connection")
        slot.active -= 1
        return slot

    def checkout(self, server: str, *, now: float) -> Checkout[C]:
        """Reuse the newest live idle connection to ``server`` or ask for a new one.

        Counts one more active connection either way; expired idle connections met on the way
        are removed and returned in ``close``.
        """
        slot = self._slots.get(server)
        if slot is None:
            slot = self._slots[server] = _Slot()
        slot.active += 1
        close: list[C] = []
        idle = slot.idle
        while idle:
            conn, returned_at = idle.pop()
            if now < returned_at + self._idle_timeout:
                return Checkout(reuse=conn, close=tuple(close))
            close.append(conn)
        return Checkout(reuse=None, close=tuple(close))

    def checkin(
        self, server: str, conn: C, *, reusable: bool, requests_served: int, now: float
    ) -> tuple[C, ...]:
        """Return ``conn`` to the pool; give back the connections the caller must close.

        ``conn`` is kept idle if ``reusable``, under ``max_requests`` and ``max_idle > 0``
        (evicting the oldest idle one if the server is then over ``max_idle``); otherwise it is
        itself in the result.
        """
        slot = self._release(server, "checkin")
        under_limit = self._max_requests == 0 or requests_served < self._max_requests
        if not (reusable and under_limit and self._max_idle > 0):
            self._forget_if_empty(server, slot)
            return (conn,)
        slot.idle.append((conn, now))
        if len(slot.idle) > self._max_idle:
            return (slot.idle.popleft()[0],)
        return ()

    def discard(self, server: str) -> None:
        """Forget one active connection to ``server`` that the caller dropped (failed, broken)."""
        slot = self._release(server, "discard")
        self._forget_if_empty(server, slot)

    def expired(self, *, now: float) -> tuple[C, ...]:
        """Remove and return every idle connection that has passed ``idle_timeout``."""
        out: list[C] = []
        timeout = self._idle_timeout
        for server, slot in list(self._slots.items()):
            if not any(now >= at + timeout for _, at in slot.idle):
                continue
            keep: deque[tuple[C, float]] = deque()
            for item in slot.idle:
                if now >= item[1] + timeout:
                    out.append(item[0])
                else:
                    keep.append(item)
            slot.idle = keep
            self._forget_if_empty(server, slot)
        return tuple(out)

    def close_all(self) -> tuple[C, ...]:
        """Remove and return every idle connection (active counts are kept)."""
        out: list[C] = []
        for server, slot in list(self._slots.items()):
            out.extend(conn for conn, _ in slot.idle)
            slot.idle.clear()
            self._forget_if_empty(server, slot)
        return tuple(out)

    def counts(self, server: str) -> tuple[int, int]:
        """Return ``(active, idle)`` for ``server`` (``(0, 0)`` for one never seen)."""
        slot = self._slots.get(server)
        if slot is None:
            return (0, 0)
        return (slot.active, len(slot.idle))
