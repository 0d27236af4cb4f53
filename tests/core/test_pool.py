"""Pool decisions: LIFO reuse, idle timeout, max_idle, max_requests, and invariants."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateproxy.core.pool import Checkout, Pool

S, T = "10.0.0.1:80", "10.0.0.2:80"


def pool(*, max_idle: int = 2, idle_timeout: float = 10.0, max_requests: int = 0) -> Pool[str]:
    return Pool(max_idle=max_idle, idle_timeout=idle_timeout, max_requests=max_requests)


def test_first_checkout_opens() -> None:
    p = pool()
    assert p.checkout(S, now=0.0) == Checkout(reuse=None, close=())
    assert p.counts(S) == (1, 0)


def test_reuse_is_lifo() -> None:
    p = pool()
    for _ in range(2):
        p.checkout(S, now=0.0)
    assert p.checkin(S, "old", reusable=True, requests_served=1, now=1.0) == ()
    assert p.checkin(S, "new", reusable=True, requests_served=1, now=2.0) == ()
    assert p.counts(S) == (0, 2)
    assert p.checkout(S, now=3.0) == Checkout(reuse="new", close=())
    assert p.checkout(S, now=3.0) == Checkout(reuse="old", close=())
    assert p.checkout(S, now=3.0) == Checkout(reuse=None, close=())
    assert p.counts(S) == (3, 0)


def test_servers_are_separate() -> None:
    p = pool()
    p.checkout(S, now=0.0)
    p.checkin(S, "s", reusable=True, requests_served=1, now=0.0)
    assert p.checkout(T, now=0.0).reuse is None
    assert p.counts(S) == (0, 1)
    assert p.counts(T) == (1, 0)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (14.9, Checkout(reuse="a", close=())),  # newest first: "a" was returned last
        (15.0, Checkout(reuse=None, close=("a", "b"))),  # "a" returned at 5.0 expires at 15.0
    ],
)
def test_checkout_reuses_newest_or_returns_expired(now: float, expected: Checkout[str]) -> None:
    p = pool()
    p.checkout(S, now=0.0)
    p.checkout(S, now=0.0)
    p.checkin(S, "b", reusable=True, requests_served=1, now=1.0)
    p.checkin(S, "a", reusable=True, requests_served=1, now=5.0)
    assert p.checkout(S, now=now) == expected
    assert p.counts(S) == (1, 1 if expected.reuse else 0)


def test_checkout_closes_expired_met_on_the_way() -> None:
    p = pool()
    p.checkout(S, now=0.0)
    p.checkout(S, now=0.0)
    p.checkin(S, "live", reusable=True, requests_served=1, now=5.0)
    p.checkin(S, "stale", reusable=True, requests_served=1, now=0.5)  # a late, older clock
    assert p.checkout(S, now=11.0) == Checkout(reuse="live", close=("stale",))


@pytest.mark.parametrize(
    ("reusable", "served", "max_requests", "max_idle", "closed"),
    [
        (True, 1, 0, 2, ()),
        (False, 1, 0, 2, ("c",)),
        (True, 99, 100, 2, ()),
        (True, 100, 100, 2, ("c",)),  # served its last request
        (True, 1, 0, 0, ("c",)),  # max_idle 0: never reuse
    ],
)
def test_checkin_keeps_or_closes(
    reusable: bool, served: int, max_requests: int, max_idle: int, closed: tuple[str, ...]
) -> None:
    p = pool(max_idle=max_idle, max_requests=max_requests)
    p.checkout(S, now=0.0)
    assert p.checkin(S, "c", reusable=reusable, requests_served=served, now=0.0) == closed
    assert p.counts(S) == (0, 0 if closed else 1)


def test_checkin_over_max_idle_evicts_the_oldest() -> None:
    p = pool(max_idle=2)
    for _ in range(3):
        p.checkout(S, now=0.0)
    assert p.checkin(S, "a", reusable=True, requests_served=1, now=1.0) == ()
    assert p.checkin(S, "b", reusable=True, requests_served=1, now=2.0) == ()
    assert p.checkin(S, "c", reusable=True, requests_served=1, now=3.0) == ("a",)
    assert p.counts(S) == (0, 2)


def test_discard() -> None:
    p = pool()
    p.checkout(S, now=0.0)
    p.discard(S)
    assert p.counts(S) == (0, 0)


@pytest.mark.parametrize("op", ["checkin", "discard"])
def test_release_without_checkout_is_an_error(op: str) -> None:
    p = pool()
    with pytest.raises(RuntimeError, match="no active connection"):
        if op == "checkin":
            p.checkin(S, "x", reusable=True, requests_served=1, now=0.0)
        else:
            p.discard(S)
    assert p.counts(S) == (0, 0)


def test_expired_sweep() -> None:
    p = pool(max_idle=3)
    for _ in range(3):
        p.checkout(S, now=0.0)
    p.checkout(T, now=0.0)
    p.checkin(S, "s1", reusable=True, requests_served=1, now=1.0)
    p.checkin(S, "s2", reusable=True, requests_served=1, now=5.0)
    p.checkin(T, "t1", reusable=True, requests_served=1, now=2.0)
    assert p.expired(now=10.9) == ()
    assert sorted(p.expired(now=12.0)) == ["s1", "t1"]
    assert p.counts(S) == (1, 1)
    assert p.counts(T) == (0, 0)
    assert p.expired(now=15.0) == ("s2",)
    assert p.expired(now=100.0) == ()


def test_close_all_keeps_active_counts() -> None:
    p = pool()
    for _ in range(3):
        p.checkout(S, now=0.0)
    p.checkin(S, "a", reusable=True, requests_served=1, now=0.0)
    p.checkin(S, "b", reusable=True, requests_served=1, now=0.0)
    assert p.close_all() == ("a", "b")
    assert p.counts(S) == (1, 0)
    assert p.close_all() == ()


@pytest.mark.parametrize(
    ("max_idle", "idle_timeout", "max_requests", "message"),
    [(-1, 1.0, 0, "max_idle"), (1, -1.0, 0, "idle_timeout"), (1, 1.0, -1, "max_requests")],
)
def test_bad_arguments(max_idle: int, idle_timeout: float, max_requests: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Pool(max_idle=max_idle, idle_timeout=idle_timeout, max_requests=max_requests)


# --- hypothesis: random operation sequences against a model -------------------------------------

_OP = st.tuples(
    st.sampled_from(["checkout", "checkin", "drop", "discard", "expired", "close_all"]),
    st.sampled_from([S, T]),
    st.floats(min_value=0.0, max_value=4.0),
    st.booleans(),
    st.integers(min_value=0, max_value=4),
)


@given(
    st.integers(min_value=0, max_value=3),
    st.integers(min_value=0, max_value=3),
    st.lists(_OP, max_size=60),
)
def test_invariants_under_random_operations(
    max_idle: int, max_requests: int, ops: list[tuple[str, str, float, bool, int]]
) -> None:
    p: Pool[int] = Pool(max_idle=max_idle, idle_timeout=5.0, max_requests=max_requests)
    out: dict[str, list[int]] = {S: [], T: []}  # connections the caller holds, per server
    idle: set[int] = set()  # connections the pool holds
    closed: set[int] = set()
    now, fresh = 0.0, 0
    for op, server, step, reusable, served in ops:
        now += step
        to_close: tuple[int, ...] = ()
        if op == "checkout":
            decision = p.checkout(server, now=now)
            to_close = decision.close
            if decision.reuse is None:
                fresh += 1
                out[server].append(fresh)
            else:
                idle.remove(decision.reuse)
                out[server].append(decision.reuse)
        elif op in ("checkin", "drop", "discard") and not out[server]:
            with pytest.raises(RuntimeError):
                p.discard(server)
        elif op in ("checkin", "drop"):
            conn = out[server].pop()
            to_close = p.checkin(
                server, conn, reusable=reusable and op == "checkin", requests_served=served, now=now
            )
            idle.add(conn)
        elif op == "discard":
            out[server].pop()
            p.discard(server)
        elif op == "expired":
            to_close = p.expired(now=now)
        else:
            to_close = p.close_all()
        for conn in to_close:
            assert conn not in closed, "a connection was handed back twice"
            closed.add(conn)
            idle.remove(conn)
        total_idle = 0
        for name in (S, T):
            active, idle_count = p.counts(name)
            assert active == len(out[name]) >= 0
            assert 0 <= idle_count <= max_idle
            total_idle += idle_count
        assert total_idle == len(idle)
