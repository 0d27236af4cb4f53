"""core.rate_limit: token buckets per address with nginx's limit_req burst/nodelay numbers, a
bounded LRU table and a class of its own for probe clients; every ``now`` explicit."""

from __future__ import annotations

import pytest

from gateproxy.core.config_rate_limit import RateLimitConfig, parse_rate
from gateproxy.core.metrics import ListenerCounters
from gateproxy.core.rate_limit import RateLimiter, RateLimits


def _allowed(limiter: RateLimiter, client: str, *, times: int, now: float) -> int:
    return sum(limiter.allow(client, now=now) for _ in range(times))


def test_a_quiet_client_gets_burst_plus_one_at_once_then_the_rate() -> None:
    limiter = RateLimiter(rate=10.0, burst=4, max_clients=10)
    assert _allowed(limiter, "a", times=20, now=100.0) == 5
    assert not limiter.allow("a", now=100.05)  # half a token back
    assert limiter.allow("a", now=100.1)  # one token back after 1/rate
    assert not limiter.allow("a", now=100.1)
    assert _allowed(limiter, "a", times=20, now=101.0) == 5  # full again after (burst+1)/rate


def test_burst_zero_is_one_request_per_interval() -> None:
    limiter = RateLimiter(rate=2.0, burst=0, max_clients=10)
    assert [limiter.allow("a", now=t) for t in (0.0, 0.1, 0.5, 0.6, 1.0)] == [
        True,
        False,
        True,
        False,
        True,
    ]


def test_a_refused_request_takes_nothing() -> None:
    limiter = RateLimiter(rate=1.0, burst=0, max_clients=10)
    assert limiter.allow("a", now=0.0)
    for t in (0.2, 0.4, 0.6, 0.8):
        assert not limiter.allow("a", now=t)
    assert limiter.allow("a", now=1.0)  # the refusals did not push this out


def test_clients_have_their_own_buckets() -> None:
    limiter = RateLimiter(rate=1.0, burst=0, max_clients=10)
    assert limiter.allow("a", now=0.0) and not limiter.allow("a", now=0.0)
    assert limiter.allow("b", now=0.0)


def test_a_spray_of_100k_addresses_keeps_the_table_at_its_cap() -> None:
    limiter = RateLimiter(rate=1.0, burst=0, max_clients=1000)
    for i in range(100_000):
        assert limiter.allow(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", now=0.0)
        assert len(limiter) <= 1000
    assert len(limiter) == 1000
    assert limiter.evictions == 99_000  # each pushed-out bucket still held its request


def test_least_recently_used_goes_first_and_full_buckets_leave_uncounted() -> None:
    limiter = RateLimiter(rate=1.0, burst=0, max_clients=2)
    limiter.allow("a", now=0.0)
    limiter.allow("b", now=0.0)
    limiter.allow("a", now=0.5)  # refused, but used: "b" is now the oldest
    limiter.allow("c", now=0.5)
    assert limiter.evictions == 1
    assert not limiter.allow("a", now=0.5)  # "a" kept its state
    limiter.allow("d", now=10.0)  # pushes out "a", full again by now: nothing lost
    assert limiter.evictions == 1 and len(limiter) == 2


@pytest.mark.parametrize(
    ("text", "rate"), [("10r/s", 10.0), ("600r/m", 10.0), ("0.5r/s", 0.5), (3, 3.0), (2.5, 2.5)]
)
def test_rates_in_nginx_syntax_or_per_second(text: object, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["10", "10r/h", "fast", 0, -1, True, "0r/s"])
def test_bad_rates_name_the_value(text: object) -> None:
    with pytest.raises(ValueError, match="rate") as info:
        parse_rate(text)
    assert repr(text) in str(info.value)


def test_probes_are_unlimited_by_default_and_get_their_own_class_when_configured() -> None:
    counters = ListenerCounters()
    limits = RateLimits(RateLimitConfig(rate=1.0), counters=counters)
    assert limits.allow("a", probe=False, now=0.0) and not limits.allow("a", probe=False, now=0.0)
    assert all(limits.allow("a", probe=True, now=0.0) for _ in range(100))
    own = RateLimits(
        RateLimitConfig.model_validate({"rate": 1, "probes": {"rate": "5r/s", "burst": 1}}),
        counters=counters,
    )
    assert sum(own.allow("p", probe=True, now=0.0) for _ in range(10)) == 2
    assert own.allow("p", probe=False, now=0.0)  # the clients' table is another table


def test_counters_follow_the_tables() -> None:
    counters = ListenerCounters(rate_limit_evictions=5)  # an earlier generation's evictions
    limits = RateLimits(RateLimitConfig(rate=1.0, max_clients=3), counters=counters)
    assert counters.rate_limit_buckets == 0
    for i in range(5):
        limits.allow(f"c{i}", probe=False, now=0.0)
    assert counters.rate_limit_buckets == 3 and counters.rate_limit_evictions == 5 + 2


def test_bad_limiter_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate=0.0, burst=0, max_clients=1)
    with pytest.raises(ValueError, match="max_clients"):
        RateLimiter(rate=1.0, burst=0, max_clients=0)
