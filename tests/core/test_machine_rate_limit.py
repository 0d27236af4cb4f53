"""core.machine with ``rate_limit``: the limiter is asked per request after the request rules,
before anything goes upstream; over the limit is a local 429 on a connection that stays open."""

from __future__ import annotations

from gateproxy.core.actions import Acquire
from gateproxy.core.machine import WAIT_ACTIONS, WAIT_CLIENT
from tests.helpers.machine import GET, OK, Play, config, status_of

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"


def _limited(**rate_limit: object) -> Play:
    return Play(
        config(rate_limit={"rate": "1r/s", **rate_limit}, health_checks=[{"path": "/healthz"}])
    )


def _forwarded(play: Play) -> int:
    play.client(GET)
    if play.machine.wait != WAIT_ACTIONS:  # answered locally
        return status_of(play.to_client())
    play.ready()
    play.upstream(OK)
    return status_of(play.to_client())


def test_over_the_burst_is_a_local_429_and_keep_alive_goes_on() -> None:
    play = _limited(burst=1)
    assert [_forwarded(play) for _ in range(3)] == [200, 200, 429]
    assert len(play.of(Acquire)) == 2  # the refused request never went upstream
    assert play.enforced == ["rate_limit"]
    assert play.logged[-1] == ("request", 429) and play.machine.wait == WAIT_CLIENT
    counters = play.metrics.listener("public")
    assert counters.responses_by_class["4xx"] == 1 and counters.requests_total == 3
    assert counters.rate_limit_buckets == 1
    play.at(1.0)
    assert _forwarded(play) == 200  # a token came back after 1/rate


def test_the_status_is_configurable() -> None:
    play = _limited(status=503)
    assert [_forwarded(play) for _ in range(2)] == [200, 503]


def test_health_checks_are_answered_and_never_take_a_token() -> None:
    play = _limited()
    for _ in range(5):
        assert status_of(play.client(HEALTH).to_client()) == 200
    assert _forwarded(play) == 200 and _forwarded(play) == 429


def test_a_request_refused_by_a_rule_takes_no_token() -> None:
    play = _limited()
    play.client(b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")  # two Host fields: 400
    assert status_of(play.to_client()) == 400
    fresh = _limited()
    fresh.client(GET)
    assert fresh.enforced == []  # the first request always passes


def test_probe_clients_are_not_limited_unless_they_have_a_class() -> None:
    exempt = Play(config(rate_limit={"rate": 1}), probe=True)
    assert [_forwarded(exempt) for _ in range(5)] == [200] * 5
    own = Play(config(rate_limit={"rate": 100, "probes": {"rate": 1}}), probe=True)
    assert [_forwarded(own) for _ in range(2)] == [200, 429]


def test_without_rate_limit_nothing_is_asked() -> None:
    play = Play()
    assert play.policy.rate_limits is None
    assert [_forwarded(play) for _ in range(5)] == [200] * 5


def test_a_refused_requests_body_is_read_and_dropped_and_the_connection_kept() -> None:
    play = _limited()
    assert _forwarded(play) == 200
    play.to_upstream()
    play.client(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
    assert play.to_client() == b""  # the answer waits for the rest of the body
    play.client(b"cd")
    assert status_of(play.to_client()) == 429 and play.machine.wait == WAIT_CLIENT
    assert play.to_upstream() == b""
