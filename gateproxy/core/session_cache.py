"""A bounded TLS session cache: true LRU, fixed lifetime, per-client budgets.

Theory of operation
-------------------
OpenSSL's internal cache evicts the oldest-*created* entry and never refreshes an entry on a hit,
and it has no notion of "who" filled it, so one prober that never resumes can push out every real
client's session. The TLS bridge therefore runs OpenSSL in ``NO_INTERNAL`` mode and keeps the
sessions here, as opaque DER bytes keyed by session id. This module is sans-IO: it never reads a
clock (every time-dependent call takes ``now``) and never touches OpenSSL.

Three views of the same entries, all kept in step by :meth:`SessionCache._drop`, the only place an
entry leaves the cache:

``_lru``         ``OrderedDict[id, _Entry]`` in recency order (first = least recently used).
                 A ``get`` hit moves the entry to the end. Capacity evictions pop the front.
``_by_expiry``   ``OrderedDict[id, None]`` in put order. The timeout is the same for every entry,
                 so put order *is* expiry order and ``sweep`` pops from the front until it meets
                 a live entry: O(expired), not O(n). (If ``now`` ever ran backwards, ``sweep``
                 might stop early; lazy expiry in ``get`` still never returns an expired entry.)
``_per_client``  ``dict[client, OrderedDict[id, None]]`` in per-client recency order, so the
                 budget eviction of a client's least recently used entry is O(1). A client whose
                 last entry leaves is deleted, so the map never grows with addresses seen long ago.

Rules:

* Hard cap: room is made *before* inserting, so ``len(cache) <= max_entries`` holds at every
  instant, not just after ``put`` returns.
* An entry lives from its ``put`` until ``put time + timeout`` (expired when ``now >= that``);
  a hit does not extend its life, as in OpenSSL.
* Per-client budget (``max_per_client > 0``): a client already holding its budget loses its *own*
  least recently used entry first (``evictions_budget``); only then, if the cache is still full,
  the global least recently used entry goes (``evictions_capacity``).
* An entry that is already expired when it is removed to make room is counted under ``expired``,
  not as an eviction; and when the cache is full, an expired entry (the oldest put) is reclaimed
  before any live entry is evicted.
* Re-putting an existing id replaces the entry (new bytes, new client, new lifetime).
* ``remove`` and ``clear`` (OpenSSL's remove callback, a reload) are not counted as evictions.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["SessionCache", "SessionCacheStats"]


@dataclass(frozen=True)
class SessionCacheStats:
    """A snapshot of the cache's size and counters (counters are totals since creation)."""

    entries: int
    max_entries: int
    bytes: int
    hits: int
    misses: int
    expired: int
    evictions_capacity: int
    evictions_budget: int

    @property
    def evictions(self) -> int:
        """Live entries evicted to make room, for either reason."""
        return self.evictions_capacity + self.evictions_budget


class _Entry:
    __slots__ = ("client", "der", "expires_at")

    def __init__(self, der: bytes, client: str, expires_at: float) -> None:
        self.der = der
        self.client = client
        self.expires_at = expires_at


class SessionCache:
    """Session id -> DER bytes, bounded by entries, lifetime and per-client budget.

    Every operation is O(1) amortised; ``sweep`` is O(number of expired entries).
    """

    def __init__(self, *, max_entries: int, timeout: float, max_per_client: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries: expected an integer >= 1, got {max_entries!r}")
        if not timeout > 0:
            raise ValueError(f"timeout: expected a number of seconds > 0, got {timeout!r}")
        if max_per_client < 0:
            raise ValueError(
                f"max_per_client: expected an integer >= 0 (0 = no budget), got {max_per_client!r}"
            )
        self.max_entries = max_entries
        self.timeout = float(timeout)
        self.max_per_client = max_per_client
        self._lru: OrderedDict[bytes, _Entry] = OrderedDict()
        self._by_expiry: OrderedDict[bytes, None] = OrderedDict()
        self._per_client: dict[str, OrderedDict[bytes, None]] = {}
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._expired = 0
        self._evictions_capacity = 0
        self._evictions_budget = 0

    # --- the public operations ------------------------------------------------------------------

    def put(self, session_id: bytes, der: bytes, *, client: str, now: float) -> None:
        """Store ``der`` under ``session_id`` for ``client``, making room first if needed."""
        if session_id in self._lru:
            self._drop(session_id)
        if self.max_per_client:
            owned = self._per_client.get(client)
            if owned is not None and len(owned) >= self.max_per_client:
                victim = next(iter(owned))
                self._evict(victim, now=now, budget=True)
        if len(self._lru) >= self.max_entries:
            oldest = next(iter(self._by_expiry))
            if self._lru[oldest].expires_at <= now:
                self._evict(oldest, now=now, budget=False)
            else:
                self._evict(next(iter(self._lru)), now=now, budget=False)
        self._lru[session_id] = _Entry(der, client, now + self.timeout)
        self._by_expiry[session_id] = None
        self._per_client.setdefault(client, OrderedDict())[session_id] = None
        self._bytes += len(der)

    def get(self, session_id: bytes, *, now: float) -> bytes | None:
        """Return the DER bytes of a live entry (and mark it most recently used), else None."""
        entry = self._lru.get(session_id)
        if entry is None:
            self._misses += 1
            return None
        if entry.expires_at <= now:
            self._drop(session_id)
            self._expired += 1
            self._misses += 1
            return None
        self._hits += 1
        self._lru.move_to_end(session_id)
        self._per_client[entry.client].move_to_end(session_id)
        return entry.der

    def remove(self, session_id: bytes) -> bool:
        """Forget ``session_id``; True if it was present. Not counted as an eviction."""
        if session_id not in self._lru:
            return False
        self._drop(session_id)
        return True

    def sweep(self, *, now: float) -> int:
        """Remove every expired entry; return how many were removed."""
        removed = 0
        while self._by_expiry:
            oldest = next(iter(self._by_expiry))
            if self._lru[oldest].expires_at > now:
                break
            self._drop(oldest)
            removed += 1
        self._expired += removed
        return removed

    def clear(self) -> int:
        """Remove every entry (counters are kept); return how many were removed."""
        count = len(self._lru)
        self._lru.clear()
        self._by_expiry.clear()
        self._per_client.clear()
        self._bytes = 0
        return count

    def stats(self) -> SessionCacheStats:
        """A frozen snapshot of sizes and counters."""
        return SessionCacheStats(
            entries=len(self._lru),
            max_entries=self.max_entries,
            bytes=self._bytes,
            hits=self._hits,
            misses=self._misses,
            expired=self._expired,
            evictions_capacity=self._evictions_capacity,
            evictions_budget=self._evictions_budget,
        )

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, session_id: object) -> bool:
        """Presence only: does not count a hit, refresh recency or check expiry."""
        return session_id in self._lru

    def entries_for(self, client: str) -> int:
        """How many entries ``client`` holds now."""
        owned = self._per_client.get(client)
        return 0 if owned is None else len(owned)

    def clients(self) -> int:
        """How many distinct clients hold at least one entry."""
        return len(self._per_client)

    # --- internals ------------------------------------------------------------------------------

    def _evict(self, session_id: bytes, *, now: float, budget: bool) -> None:
        """Remove an entry to make room, counting it as expired or as an eviction."""
        expired = self._lru[session_id].expires_at <= now
        self._drop(session_id)
        if expired:
            self._expired += 1
        elif budget:
            self._evictions_budget += 1
        else:
            self._evictions_capacity += 1

    def _drop(self, session_id: bytes) -> None:
        """The one exit: remove ``session_id`` from every structure. It must be present."""
        entry = self._lru.pop(session_id)
        del self._by_expiry[session_id]
        owned = self._per_client[entry.client]
        del owned[session_id]
        if not owned:
            del self._per_client[entry.client]
        self._bytes -= len(entry.der)
