"""trusted_forwarded: a trusted L7 hop's X-Forwarded-For names the request's client (log and
session guard); the XFF sent upstream is the chain plus the hop, as without it."""

from __future__ import annotations

from gateproxy.core.actions import LogRecord
from gateproxy.core.machine import WAIT_ACTIONS
from tests.helpers.machine import OK, Play, config, status_of

XFF_GET = (
    b"GET /a HTTP/1.1\r\nHost: app.test\r\n"
    b"X-Forwarded-For: 198.51.100.1, 203.0.113.7\r\nX-Forwarded-For: 192.0.2.50\r\n\r\n"
)


def _play(**listener: object) -> Play:
    play = Play(config(**listener)).client(XFF_GET)  # the peer is 192.0.2.7
    play.ready()
    play.upstream(OK)
    return play


def test_trusted_hop_names_the_client_in_the_log() -> None:
    play = _play(trusted_forwarded=["192.0.2.0/24"])
    assert play.last(LogRecord).client == "203.0.113.7"  # rightmost untrusted entry
    sent = play.to_upstream()
    assert b"x-forwarded-for: 198.51.100.1, 203.0.113.7, 192.0.2.50, 192.0.2.7\r\n" in sent


def test_untrusted_hop_is_not_believed() -> None:
    play = _play(trusted_forwarded=["10.0.0.0/8"])
    assert play.last(LogRecord).client == "192.0.2.7"


def test_off_by_default() -> None:
    assert _play().last(LogRecord).client == "192.0.2.7"


def _xff_get(client: bytes) -> bytes:
    return b"GET /a HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: " + client + b"\r\n\r\n"


def test_rate_limits_count_the_client_a_trusted_hop_names() -> None:
    # nginx limit_req keys on $binary_remote_addr, which real_ip rewrites: one bucket per client
    play = Play(config(trusted_forwarded=["192.0.2.0/24"], rate_limit={"rate": "1r/s"}))
    statuses = []
    for client in (b"203.0.113.7", b"203.0.113.8", b"203.0.113.7"):
        play.client(_xff_get(client))
        if play.machine.wait == WAIT_ACTIONS:  # forwarded: answer it
            play.ready()
            play.upstream(OK)
        statuses.append(status_of(play.to_client()))
    assert statuses == [200, 200, 429]
