"""RestartPolicy: doubling back-off up to a cap, reset after a stable run, validation."""

from __future__ import annotations

import math

import pytest

from gateproxy.core.restarts import RestartPolicy


def test_defaults_start_at_half_a_second() -> None:
    policy = RestartPolicy()
    assert policy.quick_deaths == 0
    assert policy.delay_after_exit(uptime=0.0) == 0.5
    assert policy.quick_deaths == 1


def test_quick_deaths_double_the_delay_up_to_the_cap() -> None:
    policy = RestartPolicy(first=1.0, cap=10.0, stable_after=60.0)
    delays = [policy.delay_after_exit(uptime=0.1) for _ in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert policy.quick_deaths == 7


def test_first_equal_to_cap_never_grows() -> None:
    policy = RestartPolicy(first=3.0, cap=3.0)
    assert [policy.delay_after_exit(uptime=0.0) for _ in range(4)] == [3.0] * 4


def test_a_stable_run_resets_the_back_off() -> None:
    policy = RestartPolicy(first=0.5, cap=30.0, stable_after=30.0)
    assert [policy.delay_after_exit(uptime=1.0) for _ in range(3)] == [0.5, 1.0, 2.0]
    # exactly stable_after counts as stable
    assert policy.delay_after_exit(uptime=30.0) == 0.5
    assert policy.quick_deaths == 1
    assert policy.delay_after_exit(uptime=29.999) == 1.0
    assert policy.delay_after_exit(uptime=3600.0) == 0.5


def test_a_run_just_short_of_stable_does_not_reset() -> None:
    policy = RestartPolicy(first=1.0, cap=100.0, stable_after=10.0)
    policy.delay_after_exit(uptime=0.0)
    policy.delay_after_exit(uptime=0.0)
    assert policy.delay_after_exit(uptime=9.99) == 4.0


def test_policies_are_independent() -> None:
    a, b = RestartPolicy(), RestartPolicy()
    a.delay_after_exit(uptime=0.0)
    a.delay_after_exit(uptime=0.0)
    assert b.delay_after_exit(uptime=0.0) == 0.5
    assert a.quick_deaths == 2 and b.quick_deaths == 1


@pytest.mark.parametrize(
    ("first", "cap", "shown"),
    [
        (0.0, 30.0, "first=0.0 cap=30.0"),
        (-1.0, 30.0, "first=-1.0 cap=30.0"),
        (5.0, 2.0, "first=5.0 cap=2.0"),
        (math.nan, 30.0, "first=nan cap=30.0"),
    ],
)
def test_bad_first_or_cap_is_refused_naming_both(first: float, cap: float, shown: str) -> None:
    with pytest.raises(ValueError, match="expected 0 < first <= cap") as info:
        RestartPolicy(first=first, cap=cap)
    assert shown in str(info.value)
    assert str(info.value).startswith("restart back-off:")


def test_a_long_crash_loop_stays_at_the_cap() -> None:
    policy = RestartPolicy(first=0.5, cap=30.0)
    delays = [policy.delay_after_exit(uptime=0.0) for _ in range(1100)]
    assert delays[-1] == 30.0
