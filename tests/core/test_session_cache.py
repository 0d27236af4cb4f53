"""SessionCache: LRU order, lifetime, per-client budgets, counters, invariants under random ops."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from gateproxy.core.session_cache import SessionCache, SessionCacheStats


def sid(n: int) -> bytes:
    return n.to_bytes(32, "big")


def der(n: int, size: int = 100) -> bytes:
    return bytes([n % 256]) * size


def make(max_entries: int = 3, timeout: float = 100.0, max_per_client: int = 0) -> SessionCache:
    return SessionCache(max_entries=max_entries, timeout=timeout, max_per_client=max_per_client)


# --- construction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_entries": 0, "timeout": 1.0, "max_per_client": 0}, "max_entries"),
        ({"max_entries": -5, "timeout": 1.0, "max_per_client": 0}, "got -5"),
        ({"max_entries": 1, "timeout": 0.0, "max_per_client": 0}, "timeout"),
        ({"max_entries": 1, "timeout": -1.0, "max_per_client": 0}, "timeout"),
        ({"max_entries": 1, "timeout": 1.0, "max_per_client": -1}, "max_per_client"),
    ],
)
def test_rejects_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SessionCache(**kwargs)  # type: ignore[arg-type]  # table of mixed int/float values


def test_put_get_roundtrip() -> None:
    cache = make()
    cache.put(sid(1), b"session-one", client="10.0.0.1", now=0.0)
    assert cache.get(sid(1), now=1.0) == b"session-one"
    assert cache.get(sid(2), now=1.0) is None
    assert len(cache) == 1
    assert sid(1) in cache
    assert cache.entries_for("10.0.0.1") == 1
    assert cache.entries_for("10.0.0.2") == 0


# --- LRU order ----------------------------------------------------------------------------------

# Each case: cache of 3, puts 1, 2, 3 at t=0..2, then `touch` gets (hits), then put 4.
LRU_CASES = [
    # touched ids, expected survivors after put(4)       gone
    ((), {2, 3, 4}, 1),
    ((1,), {1, 3, 4}, 2),
    ((1, 2), {1, 2, 4}, 3),
    ((2, 1), {1, 2, 4}, 3),
    ((3, 2, 1), {1, 2, 4}, 3),
    ((1, 3, 2), {2, 3, 4}, 1),  # 1 was touched first, so it is the least recently used again
    ((9,), {2, 3, 4}, 1),  # a miss changes nothing
]


@pytest.mark.parametrize(("touched", "survivors", "gone"), LRU_CASES)
def test_lru_order(touched: tuple[int, ...], survivors: set[int], gone: int) -> None:
    cache = make(max_entries=3)
    for n in (1, 2, 3):
        cache.put(sid(n), der(n), client=f"c{n}", now=float(n))
    for n in touched:
        cache.get(sid(n), now=10.0)
    cache.put(sid(4), der(4), client="c4", now=11.0)
    assert {n for n in range(1, 10) if sid(n) in cache} == survivors
    assert cache.get(sid(gone), now=12.0) is None
    assert cache.stats().evictions_capacity == 1


def test_hard_cap_never_exceeded_even_by_one() -> None:
    cache = make(max_entries=5)
    for n in range(100):
        cache.put(sid(n), der(n), client=f"c{n}", now=float(n) / 100)
        assert len(cache) <= 5
    assert len(cache) == 5
    assert cache.stats().evictions_capacity == 95


def test_reput_replaces_without_double_count() -> None:
    cache = make(max_entries=2)
    cache.put(sid(1), der(1, 10), client="a", now=0.0)
    cache.put(sid(1), der(7, 30), client="b", now=1.0)
    assert len(cache) == 1
    assert cache.get(sid(1), now=2.0) == der(7, 30)
    assert cache.entries_for("a") == 0
    assert cache.entries_for("b") == 1
    assert cache.clients() == 1
    stats = cache.stats()
    assert (stats.bytes, stats.evictions) == (30, 0)


def test_reput_at_capacity_evicts_nothing() -> None:
    cache = make(max_entries=2)
    cache.put(sid(1), der(1), client="a", now=0.0)
    cache.put(sid(2), der(2), client="a", now=0.0)
    cache.put(sid(1), der(1), client="a", now=1.0)
    assert sid(2) in cache
    assert cache.stats().evictions == 0


# --- lifetime -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("get_at", "found"),
    [(0.0, True), (99.999, True), (100.0, False), (250.0, False)],
)
def test_lazy_expiry(get_at: float, found: bool) -> None:
    cache = make(timeout=100.0)
    cache.put(sid(1), der(1), client="a", now=0.0)
    assert (cache.get(sid(1), now=get_at) is not None) is found
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.expired) == ((1, 0, 0) if found else (0, 1, 1))
    assert len(cache) == (1 if found else 0)


def test_hit_does_not_extend_life() -> None:
    cache = make(timeout=100.0)
    cache.put(sid(1), der(1), client="a", now=0.0)
    for t in (10.0, 50.0, 99.0):
        assert cache.get(sid(1), now=t) is not None
    assert cache.get(sid(1), now=100.0) is None


def test_reput_renews_life() -> None:
    cache = make(timeout=100.0)
    cache.put(sid(1), der(1), client="a", now=0.0)
    cache.put(sid(1), der(1), client="a", now=80.0)
    assert cache.get(sid(1), now=150.0) is not None
    assert cache.sweep(now=150.0) == 0
    assert cache.sweep(now=180.0) == 1


def test_sweep_removes_only_expired() -> None:
    cache = make(max_entries=10, timeout=100.0)
    for n in range(6):
        cache.put(sid(n), der(n), client=f"c{n % 2}", now=float(n * 10))
    # puts at 0, 10, 20, 30, 40, 50 -> expire at 100 .. 150
    assert cache.sweep(now=99.0) == 0
    assert cache.sweep(now=125.0) == 3
    assert [n for n in range(6) if sid(n) in cache] == [3, 4, 5]
    assert cache.stats().expired == 3
    assert cache.sweep(now=1000.0) == 3
    assert len(cache) == 0
    assert cache.clients() == 0
    assert cache.stats().bytes == 0


def test_sweep_after_hits_still_follows_put_order() -> None:
    cache = make(max_entries=10, timeout=100.0)
    for n in range(3):
        cache.put(sid(n), der(n), client="a", now=float(n))
    cache.get(sid(0), now=50.0)  # LRU order changes, expiry order does not
    assert cache.sweep(now=100.5) == 1
    assert sid(0) not in cache


def test_full_cache_reclaims_expired_before_evicting_live() -> None:
    cache = make(max_entries=3, timeout=100.0)
    cache.put(sid(1), der(1), client="a", now=0.0)  # expires at 100
    cache.put(sid(2), der(2), client="b", now=50.0)
    cache.put(sid(3), der(3), client="c", now=60.0)
    cache.get(sid(1), now=70.0)  # 2 is now the LRU, but 1 is expired by t=120
    cache.put(sid(4), der(4), client="d", now=120.0)
    assert {n for n in (1, 2, 3, 4) if sid(n) in cache} == {2, 3, 4}
    stats = cache.stats()
    assert (stats.expired, stats.evictions) == (1, 0)


# --- per-client budget --------------------------------------------------------------------------


def test_flooding_client_evicts_only_its_own() -> None:
    cache = make(max_entries=10, max_per_client=3)
    for n in range(5):
        cache.put(sid(10_000 + n), der(n), client=f"good{n}", now=0.0)
    for n in range(1000):
        cache.put(sid(n), der(n), client="prober", now=1.0 + n / 1000)
    assert all(sid(10_000 + n) in cache for n in range(5))
    assert cache.entries_for("prober") == 3
    assert [n for n in range(1000) if sid(n) in cache] == [997, 998, 999]
    stats = cache.stats()
    assert (stats.evictions_budget, stats.evictions_capacity) == (997, 0)


def test_budget_evicts_the_clients_least_recently_used() -> None:
    cache = make(max_entries=10, max_per_client=2)
    cache.put(sid(1), der(1), client="a", now=0.0)
    cache.put(sid(2), der(2), client="a", now=1.0)
    cache.get(sid(1), now=2.0)
    cache.put(sid(3), der(3), client="a", now=3.0)
    assert {n for n in (1, 2, 3) if sid(n) in cache} == {1, 3}


def test_budget_then_capacity() -> None:
    cache = make(max_entries=3, max_per_client=2)
    cache.put(sid(1), der(1), client="a", now=0.0)
    cache.put(sid(2), der(2), client="b", now=1.0)
    cache.put(sid(3), der(3), client="b", now=2.0)
    # b is at its budget and the cache is full: b's own oldest goes, no capacity eviction
    cache.put(sid(4), der(4), client="b", now=3.0)
    assert {n for n in (1, 2, 3, 4) if sid(n) in cache} == {1, 3, 4}
    # c holds nothing: the global LRU (1, client a) goes
    cache.put(sid(5), der(5), client="c", now=4.0)
    assert {n for n in (1, 3, 4, 5) if sid(n) in cache} == {3, 4, 5}
    stats = cache.stats()
    assert (stats.evictions_budget, stats.evictions_capacity, stats.evictions) == (1, 1, 2)


def test_no_budget_when_zero() -> None:
    cache = make(max_entries=50, max_per_client=0)
    for n in range(40):
        cache.put(sid(n), der(n), client="one", now=0.0)
    assert cache.entries_for("one") == 40
    assert cache.stats().evictions == 0


# --- counters, remove, clear --------------------------------------------------------------------


def test_stats_counters() -> None:
    cache = make(max_entries=2, timeout=10.0)
    cache.put(sid(1), der(1, 10), client="a", now=0.0)
    cache.put(sid(2), der(2, 20), client="b", now=0.0)
    cache.get(sid(1), now=1.0)  # hit
    cache.get(sid(9), now=1.0)  # miss
    cache.put(sid(3), der(3, 30), client="c", now=2.0)  # evicts 2 (LRU)
    cache.get(sid(1), now=20.0)  # expired: miss
    assert cache.stats() == SessionCacheStats(
        entries=1,
        max_entries=2,
        bytes=30,
        hits=1,
        misses=2,
        expired=1,
        evictions_capacity=1,
        evictions_budget=0,
    )
    assert cache.stats().evictions == 1


def test_remove_and_clear() -> None:
    cache = make(max_entries=5)
    for n in range(4):
        cache.put(sid(n), der(n, 10), client="a" if n < 2 else "b", now=0.0)
    assert cache.remove(sid(0)) is True
    assert cache.remove(sid(0)) is False
    assert cache.entries_for("a") == 1
    assert cache.stats().bytes == 30
    assert cache.clear() == 3
    assert len(cache) == 0
    assert cache.clients() == 0
    stats = cache.stats()
    assert (stats.bytes, stats.evictions, stats.expired) == (0, 0, 0)
    cache.put(sid(0), der(0), client="a", now=1.0)
    assert cache.get(sid(0), now=1.0) is not None


# --- invariants under random operation sequences ------------------------------------------------


def check_invariants(cache: SessionCache) -> None:
    assert len(cache) <= cache.max_entries
    stats = cache.stats()
    assert stats.entries == len(cache)
    assert stats.bytes == sum(len(e.der) for e in cache._lru.values())
    assert set(cache._lru) == set(cache._by_expiry)
    expiries = [cache._lru[session_id].expires_at for session_id in cache._by_expiry]
    assert expiries == sorted(expiries), "expiry queue out of order"
    per_client: dict[str, int] = {}
    for entry in cache._lru.values():
        per_client[entry.client] = per_client.get(entry.client, 0) + 1
    assert per_client == {c: len(ids) for c, ids in cache._per_client.items()}
    if cache.max_per_client:
        assert all(n <= cache.max_per_client for n in per_client.values())


class CacheMachine(RuleBasedStateMachine):
    """Random puts, gets, removes, sweeps and clock steps against the invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = make()
        self.now = 0.0
        self.put_at: dict[bytes, float] = {}

    @initialize(
        max_entries=st.integers(1, 8),
        timeout=st.sampled_from([1.0, 5.0, 50.0]),
        max_per_client=st.integers(0, 4),
    )
    def setup(self, max_entries: int, timeout: float, max_per_client: int) -> None:
        self.cache = make(max_entries, timeout, max_per_client)

    @rule(n=st.integers(0, 15), client=st.sampled_from("abc"), size=st.integers(0, 40))
    def put(self, n: int, client: str, size: int) -> None:
        self.cache.put(sid(n), der(n, size), client=client, now=self.now)
        self.put_at[sid(n)] = self.now
        assert self.cache.get(sid(n), now=self.now) == der(n, size)

    @rule(n=st.integers(0, 15))
    def get(self, n: int) -> None:
        before = self.cache.stats()
        result = self.cache.get(sid(n), now=self.now)
        if result is not None:
            assert self.now < self.put_at[sid(n)] + self.cache.timeout, "expired entry returned"
        after = self.cache.stats()
        assert after.hits + after.misses == before.hits + before.misses + 1

    @rule(n=st.integers(0, 15))
    def remove(self, n: int) -> None:
        present = sid(n) in self.cache
        assert self.cache.remove(sid(n)) is present
        assert sid(n) not in self.cache

    @rule()
    def sweep(self) -> None:
        self.cache.sweep(now=self.now)
        for session_id in self.cache._lru:
            assert self.now < self.put_at[session_id] + self.cache.timeout

    @precondition(lambda self: len(self.cache) > 0)
    @rule()
    def clear(self) -> None:
        self.cache.clear()
        assert len(self.cache) == 0

    @rule(step=st.sampled_from([0.0, 0.5, 1.0, 3.0, 20.0]))
    def tick(self, step: float) -> None:
        self.now += step

    @invariant()
    def invariants_hold(self) -> None:
        check_invariants(self.cache)


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(stateful_step_count=60, deadline=None)


@settings(deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 30), st.sampled_from(["x", "y", "z", "w"])), max_size=200
    ),
    max_entries=st.integers(1, 10),
    max_per_client=st.integers(1, 5),
)
def test_budget_protects_other_clients(
    ops: list[tuple[int, str]], max_entries: int, max_per_client: int
) -> None:
    """Whatever the others do, a client never loses entries to a client holding its budget."""
    cache = make(max_entries=max_entries, timeout=1e9, max_per_client=max_per_client)
    for t, (n, client) in enumerate(ops):
        others_before = {c: cache.entries_for(c) for c in "xyzw" if c != client}
        full_at_budget = cache.entries_for(client) >= max_per_client
        cache.put(sid(n * 7 + ord(client)), der(n), client=client, now=float(t))
        if full_at_budget:
            assert {c: cache.entries_for(c) for c in others_before} == others_before
        check_invariants(cache)
