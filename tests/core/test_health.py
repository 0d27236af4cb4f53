"""core.health: matching, local answers, pass-through relaying and the rise/fall machine."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateproxy.core.config import HealthCheckConfig
from gateproxy.core.health import (
    MAX_RELAYED_BODY,
    CachedAnswer,
    HealthBoard,
    HealthMatcher,
    ServerHealth,
    Verdict,
    answer_health,
    health_precheck,
    relayed_answer,
    unavailable_answer,
)


def _check(**kw: object) -> HealthCheckConfig:
    return HealthCheckConfig.model_validate({"path": "/healthz", "upstream": "app", **kw})


def _headers(answer: object) -> dict[bytes, bytes]:
    return dict(answer.headers)  # type: ignore[attr-defined]


# --- matcher and local answers ------------------------------------------------------------------


def test_matcher_exact_path_ignores_query() -> None:
    matcher = HealthMatcher([_check()])
    assert matcher
    assert matcher.match(b"/healthz") is not None
    assert matcher.match(b"/healthz?probe=1") is not None
    assert matcher.match(b"/healthz/") is None
    assert matcher.match(b"/health") is None
    assert not HealthMatcher([])


@pytest.mark.parametrize(
    ("up", "total", "min_healthy", "status"),
    [(["a"], 2, 1, 200), ([], 2, 1, 503), (["a"], 2, 2, 503), (["a", "b"], 2, 2, 200)],
)
def test_local_answer_by_servers_up(
    up: list[str], total: int, min_healthy: int, status: int
) -> None:
    answer = answer_health(
        _check(min_healthy=min_healthy),
        method=b"GET",
        servers_up=up,
        servers_total=total,
        draining=False,
    )
    assert answer.status == status
    body = json.loads(answer.body)
    assert body["servers_up"] == up and body["servers_total"] == total
    headers = _headers(answer)
    assert headers[b"cache-control"] == b"no-store"
    assert b"set-cookie" not in headers
    assert int(headers[b"content-length"]) == len(answer.body)


def test_precheck_method_and_drain() -> None:
    check = _check()
    refused = health_precheck(check, method=b"POST", draining=False)
    assert refused is not None and refused.status == 405
    assert _headers(refused)[b"allow"] == b"GET, HEAD"
    draining = health_precheck(check, method=b"GET", draining=True)
    assert draining is not None and draining.status == 503
    assert health_precheck(check, method=b"HEAD", draining=False) is None
    # answer_health gives the same answers
    assert (
        answer_health(check, method=b"POST", servers_up=["a"], servers_total=1, draining=True)
        == refused
    )


# --- pass-through relaying ----------------------------------------------------------------------


def test_relayed_answer_keeps_status_type_body_and_drops_cookies() -> None:
    answer = relayed_answer(
        503,
        [
            (b"Content-Type", b"text/plain"),
            (b"set-cookie", b"JSESSIONID=abc; Path=/"),
            (b"x-app", b"1"),
            (b"cache-control", b"max-age=60"),
        ],
        b"down\n",
    )
    assert answer.status == 503
    assert answer.body == b"down\n"
    assert answer.headers == (
        (b"content-type", b"text/plain"),
        (b"cache-control", b"no-store"),
        (b"content-length", b"5"),
    )


def test_relayed_answer_bounds_body_and_odd_status() -> None:
    big = relayed_answer(200, [], b"x" * (MAX_RELAYED_BODY + 10))
    assert len(big.body) == MAX_RELAYED_BODY
    assert relayed_answer(101, [], b"").status == 503
    assert unavailable_answer("refused").status == 503
    assert json.loads(unavailable_answer("refused").body)["error"] == "refused"


def test_cached_answer_freshness() -> None:
    cached = CachedAnswer(unavailable_answer("x"), fetched_at=10.0)
    assert cached.fresh(now=10.0, cache_time=1.0)
    assert cached.fresh(now=10.999, cache_time=1.0)
    assert not cached.fresh(now=11.0, cache_time=1.0)
    assert cached.fresh(now=9.0, cache_time=1.0)  # a clock going back never refetches early
    assert not cached.fresh(now=10.0, cache_time=0.0)  # cache_time 0 = always ask


# --- rise / fall --------------------------------------------------------------------------------


def _run(health: ServerHealth, results: str) -> str:
    """Feed '+'/'-' results; return the state after each as 'U'/'D'."""
    out = []
    for r in results:
        health.record(r == "+")
        out.append("U" if health.healthy else "D")
    return "".join(out)


@pytest.mark.parametrize(
    ("rise", "fall", "results", "states"),
    [
        # starts up, unconfirmed: the first failure before any pass takes it down at once
        (2, 3, "-", "D"),
        (2, 3, "-++", "DDU"),
        # once confirmed, fall consecutive failures
        (2, 3, "+---", "UUUD"),
        (2, 3, "+--+--", "UUUUUU"),  # a pass in between resets the count
        (2, 3, "+---+-++", "UUUDDDDU"),  # a failure while rising starts again
        (1, 1, "+-+-", "UDUD"),
        (3, 2, "+--+++", "UUDDDU"),
        (5, 1, "+-+++++", "UDDDDDU"),
    ],
)
def test_rise_fall_table(rise: int, fall: int, results: str, states: str) -> None:
    assert _run(ServerHealth(rise=rise, fall=fall), results) == states


def test_record_reports_changes_only() -> None:
    health = ServerHealth(rise=2, fall=2)
    assert health.healthy
    assert [health.record(ok) for ok in (True, False, False, False, True, True, True)] == [
        False,
        False,
        True,
        False,
        False,
        True,
        False,
    ]


def test_rejects_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="rise and fall must be >= 1"):
        ServerHealth(rise=0, fall=1)


@given(
    rise=st.integers(1, 6),
    fall=st.integers(1, 6),
    results=st.lists(st.booleans(), max_size=60),
)
def test_rise_fall_invariants(rise: int, fall: int, results: list[bool]) -> None:
    """Down exactly after `fall` consecutive failures (once confirmed), up after `rise` passes."""
    health = ServerHealth(rise=rise, fall=fall)
    confirmed = False
    run_ok = run_fail = 0
    for ok in results:
        was = health.healthy
        changed = health.record(ok)
        assert changed == (health.healthy != was)
        assert 0 <= health.health <= rise + fall - 1
        run_ok, run_fail = (run_ok + 1, 0) if ok else (0, run_fail + 1)
        if was and ok:
            assert health.healthy
        if was and not ok:
            needed = fall if confirmed else 1
            assert health.healthy == (run_fail < needed)
        if not was:
            assert health.healthy == (ok and run_ok >= rise)
        confirmed = confirmed or (ok and health.healthy)
        if not health.healthy:
            confirmed = True  # after a fall the next rise is a confirmed up


# --- the daemon's board of verdicts -------------------------------------------------------------


def test_board_reports_changes_only() -> None:
    board = HealthBoard()
    assert board.record("app", "a:1", ok=True, rise=2, fall=2) is None  # starts up
    assert board.record("app", "a:1", ok=False, rise=2, fall=2) is None  # 1 of 2
    assert board.record("app", "a:1", ok=False, rise=2, fall=2) == Verdict("app", "a:1", False)
    assert board.record("app", "b:1", ok=False, rise=2, fall=2) == Verdict("app", "b:1", False)
    assert board.verdicts() == [Verdict("app", "a:1", False), Verdict("app", "b:1", False)]


def test_board_keeps_state_across_a_reload_and_forgets_unchecked_servers() -> None:
    board = HealthBoard()
    board.record("app", "a:1", ok=False, rise=2, fall=3)  # down at once (never passed)
    board.record("app", "b:1", ok=True, rise=2, fall=3)
    board.keep_only([("app", "a:1")])
    assert board.verdicts() == [Verdict("app", "a:1", False)]
    # new rise/fall: still down until it rises under the new rule (1 pass)
    assert board.record("app", "a:1", ok=True, rise=1, fall=1) == Verdict("app", "a:1", True)
