"""core.machine: playbooks of one client connection — bytes in, bytes and actions out, no I/O.

Every test drives a ``ConnectionMachine`` through ``tests.helpers.machine.Play`` at explicit
times: every limit, every upstream failure, every close reason, health and guard paths,
pipelining and 100-continue.
"""

from __future__ import annotations

import pytest

from gateproxy.core.actions import Acquire, PassThrough, ReleaseTickets
from gateproxy.core.health import HealthAnswer
from gateproxy.core.machine import (
    ABORT_CONNECTION,
    CLOSE_NOTIFY,
    LINGER,
    WAIT_ACTIONS,
    WAIT_BOTH,
    WAIT_CLIENT,
    WAIT_UPSTREAM,
)
from tests.helpers.machine import DATE, GET, OK, Play, config, status_of


def _served(play: Play, response: bytes = OK) -> bytes:
    play.ready()
    play.upstream(response)
    return play.to_client()


# --- the plain exchange ---------------------------------------------------------------------


def test_a_get_is_forwarded_rewritten_and_relayed_with_keep_alive() -> None:
    play = Play().client(GET)
    assert play.machine.wait == WAIT_ACTIONS
    acquire = play.last(Acquire)
    assert (acquire.upstream, acquire.server, acquire.fresh) == ("app", "10.0.0.1:80", False)
    assert isinstance(play.actions[0], ReleaseTickets)
    play.ready()
    sent = play.to_upstream()
    assert sent.startswith(b"GET /a HTTP/1.1\r\nhost: app.test\r\n")
    assert b"x-forwarded-for: 192.0.2.7\r\n" in sent and b"via: 1.1 gateproxy\r\n" in sent
    assert play.machine.wait == WAIT_UPSTREAM
    play.at(0.5).upstream(OK)
    response = play.to_client()
    assert response == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: "
        + DATE
        + b"\r\nvia: 1.1 gateproxy\r\n\r\nok"
    )
    assert play.releases == [True] and play.logged == [("request", 200)]
    assert play.machine.wait == WAIT_CLIENT
    assert play.machine.deadline == 0.5 + 75.0  # keepalive_timeout until the next request
    counters = play.metrics.listener("public")
    assert counters.requests_total == 1 and counters.responses_by_class["2xx"] == 1


def test_pipelined_requests_are_answered_in_order_each_after_the_last() -> None:
    play = Play().client(GET + b"GET /b HTTP/1.1\r\nHost: app.test\r\n\r\n")
    play.ready()
    assert play.to_upstream().startswith(b"GET /a ")
    play.upstream(OK)
    assert len(play.of(Acquire)) == 2  # the second request went for its own connection
    assert play.to_client().endswith(b"ok")
    play.ready(reused=True)
    assert play.to_upstream().startswith(b"GET /b ")


def test_the_upstream_response_streams_as_it_arrives() -> None:
    play = Play().client(GET)
    play.ready()
    play.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
    assert play.to_client().endswith(b"\r\n\r\nabc") and play.machine.wait == WAIT_UPSTREAM
    play.upstream(b"def")
    assert play.to_client() == b"def" and play.logged == [("request", 200)]


def test_a_chunked_response_is_chunked_again_and_head_gets_no_body() -> None:
    play = Play().client(GET)
    play.ready()
    play.upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    out = play.to_client()
    assert b"Transfer-Encoding: chunked\r\n" in out and out.endswith(b"3\r\nabc\r\n0\r\n\r\n")
    play.client(b"HEAD /h HTTP/1.1\r\nHost: app.test\r\n\r\n")
    play.ready(reused=True)
    play.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
    out = play.to_client()
    assert b"content-length: 9\r\n" in out and out.endswith(b"\r\n\r\n")


def test_an_http10_request_is_answered_and_the_connection_closes() -> None:
    play = Play().client(b"GET / HTTP/1.0\r\n\r\n")
    sent = play.ready() and play.to_upstream()
    assert b"host: app\r\n" in sent  # no Host: the upstream's name, like nginx's $proxy_host
    play.upstream(OK)
    assert b"Connection: close\r\n" in play.to_client()
    assert play.machine.wait == CLOSE_NOTIFY


# --- local answers ---------------------------------------------------------------------------


def test_a_health_check_is_answered_locally_without_tickets_or_upstream() -> None:
    play = Play(config(health_checks=[{"path": "/healthz", "upstream": "app"}]))
    play.client(b"GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    response = play.to_client()
    assert status_of(response) == 200 and b"cache-control: no-store" in response
    assert b"set-cookie" not in response.lower() and b"date: " + DATE in response
    assert not play.of(Acquire) and not play.of(ReleaseTickets)
    assert play.logged == [("health", 200)] and play.machine.health_requests == 1
    assert play.metrics.listener("public").requests_total == 0
    play.service.draining = True  # a drain: 503 at once, and the connection closes after it
    play.client(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    response = play.to_client()
    assert status_of(response) == 503 and b"connection: close" in response


def test_a_pass_through_health_check_waits_for_the_fetched_answer() -> None:
    check = {"path": "/healthz", "upstream": "app", "mode": "pass_through"}
    play = Play(config(health_checks=[check])).client(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert play.machine.wait == WAIT_ACTIONS and play.of(PassThrough)
    play.machine.health_answer(HealthAnswer(204, ((b"content-length", b"0"),), b""), now=1.0)
    assert status_of(play.to_client()) == 204 and play.machine.wait == WAIT_CLIENT


def test_no_route_is_a_404_after_the_body_was_read() -> None:
    data = config(routes=[{"path_prefix": "/api/", "upstream": "app"}])
    play = Play(data).client(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
    assert play.to_client() == b"" and play.machine.wait == WAIT_CLIENT
    play.client(b"cd")
    assert status_of(play.to_client()) == 404 and play.machine.wait == WAIT_CLIENT


# --- limits ----------------------------------------------------------------------------------


def test_max_requests_per_connection_is_counted_once_even_when_the_upstream_is_dead() -> None:
    play = Play(config(limits={"max_requests_per_connection": 1})).client(GET)
    play.connect_failed().connect_failed()  # both servers refuse
    response = play.to_client()
    assert status_of(response) == 502 and b"connection: close" in response
    assert play.enforced == ["max_requests_per_connection"]
    assert play.machine.wait == CLOSE_NOTIFY


def test_max_connection_age_closes_after_the_next_response() -> None:
    play = Play(config(limits={"max_connection_age": "10s"})).at(11.0).client(GET)
    response = _served(play)
    assert b"connection: close" in response and play.enforced == ["max_connection_age"]


def test_keepalive_timeout_closes_an_idle_connection_quietly() -> None:
    play = Play(config(limits={"keepalive_timeout": "5s"})).client(GET)
    _served(play)
    assert play.machine.idle and play.machine.deadline == 5.0
    play.at(4.0).tick()  # early: nothing happens
    assert play.machine.wait == WAIT_CLIENT
    play.at(5.0).tick()
    assert play.machine.wait == CLOSE_NOTIFY and play.to_client() == b""
    assert play.enforced == ["keepalive_timeout"]


def test_a_silent_client_is_closed_quietly_and_a_slow_head_gets_408() -> None:
    silent = Play(config(limits={"request_header_timeout": "2s"})).at(2.0).tick()
    assert silent.machine.wait == CLOSE_NOTIFY and silent.to_client() == b""
    assert silent.enforced == ["request_header_timeout"]
    slow = Play(config(limits={"request_header_timeout": "2s"})).client(b"GET / HTTP/1.1\r\n")
    slow.at(1.9).client(b"Host: a\r\n").at(2.0).tick()
    assert status_of(slow.to_client()) == 408 and slow.machine.wait == LINGER


def test_the_next_requests_head_timer_starts_at_its_first_byte() -> None:
    play = Play(config(limits={"request_header_timeout": "2s"})).client(GET)
    _served(play)
    play.at(30.0).client(b"GET /b HTTP/1.1\r\n")
    assert play.machine.deadline == 32.0


@pytest.mark.parametrize(
    ("limits", "head", "status", "rule"),
    [
        (
            {"max_header_bytes": 64},
            b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"x" * 80,
            431,
            "max_header_bytes",
        ),
        (
            {"max_headers": 2},
            b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n",
            431,
            "max_headers",
        ),
        (
            {"max_body_bytes": 10},
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello",
            413,
            "max_body_bytes",
        ),
    ],
)
def test_size_limits_answer_before_anything_goes_upstream(
    limits: dict[str, object], head: bytes, status: int, rule: str
) -> None:
    play = Play(config(limits=limits)).client(head)
    response = play.to_client()
    assert status_of(response) == status and b"connection: close" in response
    assert not play.of(Acquire) and play.enforced == [rule]
    assert play.machine.wait == LINGER  # the rest of the request is still arriving


def test_a_chunked_body_crossing_max_body_bytes_is_413_and_the_upstream_is_dropped() -> None:
    play = Play(config(limits={"max_body_bytes": 8}))
    play.client(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    play.ready()
    assert play.machine.wait == WAIT_BOTH
    play.client(b"5\r\nworld\r\n")
    assert status_of(play.to_client()) == 413 and play.releases == [False]
    assert play.enforced == ["max_body_bytes"]


def test_body_timeout_during_an_upload_is_408_and_abandons_the_upstream() -> None:
    play = Play(config(limits={"body_timeout": "3s"}))
    play.client(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab")
    play.ready()
    assert play.to_upstream().endswith(b"\r\n\r\nab") and play.machine.deadline == 3.0
    play.at(3.0).tick()
    assert status_of(play.to_client()) == 408 and play.releases == [False]
    assert play.enforced == ["body_timeout"]


# --- hostile requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "status", "rule"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n", 400, "obs_fold"),
        (b"GET / HTTP/1.1\nHost: a\n\n", 400, "bare_lf"),
        (b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "absolute_form_target"),
        (b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", 405, "trace_method"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx", 400, "body_not_allowed"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
            "invalid_chunk",
        ),
    ],
)
def test_hostile_requests_are_refused_with_their_rule(head: bytes, status: int, rule: str) -> None:
    play = Play().client(head)
    assert status_of(play.to_client()) == status and play.enforced == [rule]
    assert not play.of(Acquire)


# --- upstream failures -----------------------------------------------------------------------


def test_a_refusing_server_is_skipped_for_the_next_one() -> None:
    play = Play().client(GET).connect_failed()
    assert [a.server for a in play.of(Acquire)] == ["10.0.0.1:80", "10.0.0.2:80"]
    assert status_of(_served(play)) == 200
    assert play.metrics.upstream("app").failures["connect"] == 1


def test_connect_timeouts_everywhere_give_504() -> None:
    play = Play().client(GET)
    assert play.machine.deadline == 5.0  # connect_timeout
    play.at(5.0).tick().at(10.0).tick()
    assert status_of(play.to_client()) == 504


def test_no_usable_server_is_503_at_once() -> None:
    play = Play()
    for server in ("10.0.0.1:80", "10.0.0.2:80"):
        play.upstreams["app"].balancer.set_healthy(server, healthy=False)
    play.client(GET)
    assert status_of(play.to_client()) == 503 and not play.of(Acquire)


def test_a_stale_reused_connection_is_retried_once_on_a_fresh_one() -> None:
    play = Play().client(GET)
    play.ready(reused=True)
    play.broken()  # reset before any response byte
    fresh = play.last(Acquire)
    assert fresh.fresh and play.releases == [False]
    assert status_of(_served(play)) == 200


def test_an_invalid_response_is_502_before_the_head_and_an_abort_after_it() -> None:
    early = Play().client(GET)
    early.ready()
    early.upstream(b"HTTP/9 nonsense\r\n\r\n")
    assert status_of(early.to_client()) == 502
    late = Play().client(GET)
    late.ready()
    late.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").upstream(b"")
    assert late.machine.wait == ABORT_CONNECTION and late.logged == [("request", 0)]


def test_read_timeout_before_the_head_is_504() -> None:
    play = Play().client(GET)
    play.ready()
    assert play.machine.deadline == 60.0
    play.at(60.0).tick()
    assert status_of(play.to_client()) == 504 and play.releases == [False]


# --- close reasons, 100-continue, early answers, the guard --------------------------------------


@pytest.mark.parametrize("flag", ["draining", "retiring"])
def test_a_stopping_worker_closes_after_the_response(flag: str) -> None:
    play = Play()
    setattr(play.service, flag, True)
    play.client(GET)
    assert b"connection: close" in _served(play) and play.machine.wait == CLOSE_NOTIFY
    assert play.enforced == []  # not a limit


def test_expect_100_continue_is_answered_once_the_upstream_is_ready() -> None:
    play = Play().client(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    assert play.to_client() == b""
    play.ready()
    assert play.to_client() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert b"expect" not in play.to_upstream().lower()
    play.client(b"hi")
    assert play.to_upstream() == b"hi" and play.machine.wait == WAIT_UPSTREAM


def test_an_answer_before_the_upload_ended_closes_both_sides() -> None:
    play = Play().client(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nab")
    play.ready()
    play.upstream(b"HTTP/1.1 413 Too Big\r\nContent-Length: 0\r\n\r\n")
    assert b"connection: close" in play.to_client() and play.releases == [False]
    assert play.machine.wait in (CLOSE_NOTIFY, LINGER)


def test_a_client_that_leaves_mid_response_is_cut_and_the_upstream_dropped() -> None:
    play = Play().client(GET)
    play.ready()
    play.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").gone()
    assert play.machine.wait == ABORT_CONNECTION and play.releases == [False]


def test_the_guard_counts_a_minted_session_and_pins_it_for_a_prober() -> None:
    data = config(session_guard={"pin_probes": True})
    play = Play(data, probe=True).client(GET)
    play.ready()
    play.upstream(
        b"HTTP/1.1 200 OK\r\nSet-Cookie: JSESSIONID=s1; Path=/\r\nContent-Length: 0\r\n\r\n"
    )
    assert play.metrics.guard.minted == 1 and play.metrics.guard.minted_for_probes == 1
    play.client(GET)
    play.ready(reused=True)
    assert b"cookie: JSESSIONID=s1\r\n" in play.to_upstream()
    assert play.logged[0] == ("probe", 200)
