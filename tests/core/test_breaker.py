"""The store's circuit breaker, on an explicit clock."""

from __future__ import annotations

import pytest

from gateproxy.core.breaker import Breaker, BreakerState


def test_opens_after_consecutive_failures_only() -> None:
    b = Breaker(failures=3, cooldown=1.0)
    b.failure(now=0)
    b.failure(now=0)
    b.success()  # resets the run
    b.failure(now=0)
    b.failure(now=0)
    assert b.state is BreakerState.CLOSED and b.allow(now=0)
    b.failure(now=0.5)
    assert b.state is BreakerState.OPEN and b.opens == 1
    assert not b.allow(now=1.4)


def test_half_open_trial_closes_or_reopens() -> None:
    b = Breaker(failures=1, cooldown=1.0)
    b.failure(now=10)
    assert b.allow(now=11) and b.state is BreakerState.HALF_OPEN
    assert not b.allow(now=11)  # one trial at a time
    b.failure(now=11.2)
    assert b.state is BreakerState.OPEN and b.opens == 2
    assert not b.allow(now=12.1)
    assert b.allow(now=12.2)
    b.success()
    assert b.state is BreakerState.CLOSED and b.allow(now=12.2)


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="failures"):
        Breaker(failures=0, cooldown=1)
    with pytest.raises(ValueError, match="cooldown"):
        Breaker(failures=1, cooldown=0)
