"""Balancer: round robin, passive (max_fails / fail_timeout) and active health."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateproxy.core.balancer import Balancer, ServerState

A, B, C = "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"


def picks(balancer: Balancer, count: int, *, now: float = 0.0) -> list[str | None]:
    return [balancer.pick(now=now) for _ in range(count)]


def test_round_robin() -> None:
    balancer = Balancer([A, B, C], max_fails=1, fail_timeout=10.0)
    assert picks(balancer, 7) == [A, B, C, A, B, C, A]


def test_duplicate_servers_are_dropped() -> None:
    balancer = Balancer([A, B, A], max_fails=1, fail_timeout=10.0)
    assert picks(balancer, 4) == [A, B, A, B]
    assert [s.address for s in balancer.servers_state(now=0.0)] == [A, B]


@pytest.mark.parametrize(
    ("exclude", "expected"),
    [((), [A, B, C]), ((A,), [B, C, B]), ({A, C}, [B, B, B]), ([A, B, C], [None, None, None])],
)
def test_exclude(exclude: tuple[str, ...], expected: list[str | None]) -> None:
    balancer = Balancer([A, B, C], max_fails=1, fail_timeout=10.0)
    assert [balancer.pick(now=0.0, exclude=exclude) for _ in range(3)] == expected


def test_unhealthy_server_is_never_picked() -> None:
    balancer = Balancer([A, B], max_fails=0, fail_timeout=10.0)
    balancer.set_healthy(A, healthy=False)
    assert picks(balancer, 3) == [B, B, B]
    assert balancer.usable_count(now=0.0) == 1
    balancer.set_healthy(B, healthy=False)
    assert balancer.pick(now=0.0) is None
    balancer.set_healthy(A, healthy=True)
    assert picks(balancer, 2) == [A, A]


def test_unhealthy_single_server_is_never_picked() -> None:
    balancer = Balancer([A], max_fails=1, fail_timeout=10.0)
    balancer.set_healthy(A, healthy=False)
    assert balancer.pick(now=0.0) is None


# Each row: failures at these times (max_fails=2, fail_timeout=10), then A's availability at `at`.
@pytest.mark.parametrize(
    ("failures", "at", "available"),
    [
        ([0.0], 1.0, True),  # one failure is below max_fails
        ([0.0, 5.0], 5.0, False),  # two inside the window
        ([0.0, 5.0], 14.9, False),  # unavailable for fail_timeout from the last failure
        ([0.0, 5.0], 15.0, True),
        ([0.0, 10.0], 11.0, True),  # second failure opens a new window
        ([0.0, 10.0, 12.0], 12.0, False),
        ([0.0, 5.0, 15.0], 15.0, False),  # on probation: one failure takes it out again
        ([0.0, 5.0, 15.0], 25.0, True),
    ],
)
def test_passive_health_window(failures: list[float], at: float, available: bool) -> None:
    balancer = Balancer([A, B], max_fails=2, fail_timeout=10.0)
    for when in failures:
        balancer.report_failure(A, now=when)
    state = balancer.servers_state(now=at)[0]
    assert state.available is available
    assert (A in picks(balancer, 2, now=at)) is available


def test_success_resets_count_and_ends_probation_but_not_the_down_period() -> None:
    balancer = Balancer([A, B], max_fails=2, fail_timeout=10.0)
    balancer.report_failure(A, now=0.0)
    balancer.report_failure(A, now=1.0)
    balancer.report_success(A)
    assert balancer.servers_state(now=5.0)[0] == ServerState(A, True, False, 0)
    assert balancer.servers_state(now=11.0)[0] == ServerState(A, True, True, 0)
    balancer.report_failure(A, now=12.0)  # no longer on probation: one failure is not enough
    assert balancer.servers_state(now=12.0)[0] == ServerState(A, True, True, 1)


def test_success_below_max_fails_resets_the_count() -> None:
    balancer = Balancer([A, B], max_fails=2, fail_timeout=10.0)
    balancer.report_failure(A, now=0.0)
    balancer.report_success(A)
    balancer.report_failure(A, now=1.0)
    assert balancer.servers_state(now=1.0)[0].available


def test_max_fails_zero_disables_passive_checks() -> None:
    balancer = Balancer([A, B], max_fails=0, fail_timeout=10.0)
    for when in range(5):
        balancer.report_failure(A, now=float(when))
    assert balancer.servers_state(now=5.0)[0] == ServerState(A, True, True, 5)
    assert picks(balancer, 2, now=5.0) == [A, B]


def test_single_server_is_never_marked_unavailable() -> None:
    balancer = Balancer([A], max_fails=1, fail_timeout=10.0)
    balancer.report_failure(A, now=0.0)
    assert balancer.pick(now=0.0) == A
    assert balancer.servers_state(now=0.0) == [ServerState(A, True, True, 1)]


def test_all_unavailable_gives_none() -> None:
    balancer = Balancer([A, B], max_fails=1, fail_timeout=10.0)
    balancer.report_failure(A, now=0.0)
    balancer.report_failure(B, now=0.0)
    assert balancer.pick(now=1.0) is None
    assert balancer.usable_count(now=1.0) == 0
    assert balancer.usable_count(now=10.0) == 2


def test_round_robin_skips_unavailable_and_keeps_its_place() -> None:
    balancer = Balancer([A, B, C], max_fails=1, fail_timeout=10.0)
    assert balancer.pick(now=0.0) == A
    balancer.report_failure(B, now=0.0)
    assert picks(balancer, 3, now=1.0) == [C, A, C]


@pytest.mark.parametrize(
    ("servers", "max_fails", "fail_timeout", "message"),
    [([], 1, 1.0, "at least one"), ([A], -1, 1.0, "max_fails"), ([A], 1, -1.0, "fail_timeout")],
)
def test_bad_arguments(
    servers: list[str], max_fails: int, fail_timeout: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Balancer(servers, max_fails=max_fails, fail_timeout=fail_timeout)


def test_unknown_server_is_an_error() -> None:
    balancer = Balancer([A], max_fails=1, fail_timeout=1.0)
    with pytest.raises(KeyError, match="not a server"):
        balancer.report_failure(B, now=0.0)
    with pytest.raises(KeyError, match="not a server"):
        balancer.set_healthy(B, healthy=False)


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["pick", "fail", "ok", "up", "down"]),
        st.sampled_from([A, B, C]),
        st.floats(min_value=0.0, max_value=3.0),
    ),
    max_size=40,
)


@given(_OPS)
def test_pick_only_returns_usable_servers(ops: list[tuple[str, str, float]]) -> None:
    balancer = Balancer([A, B, C], max_fails=2, fail_timeout=5.0)
    now = 0.0
    for op, server, step in ops:
        now += step
        if op == "pick":
            picked = balancer.pick(now=now, exclude=(server,))
            usable = {
                s.address
                for s in balancer.servers_state(now=now)
                if s.healthy and s.available and s.address != server
            }
            assert (picked is None) == (not usable)
            assert picked is None or picked in usable
        elif op == "fail":
            balancer.report_failure(server, now=now)
        elif op == "ok":
            balancer.report_success(server)
        else:
            balancer.set_healthy(server, healthy=op == "up")
        states = balancer.servers_state(now=now)
        assert balancer.usable_count(now=now) == sum(s.healthy and s.available for s in states)
