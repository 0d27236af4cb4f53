"""core.machine with core.upgrade: playbooks of upgrade requests, the 101 and the tunnel.

An upgrade request goes through every rule and limit first, is forwarded with its upgrade
headers, and a 101 turns the connection into a byte relay both ways (WAIT_BOTH) that ends
with either side, a break, or websocket_idle_timeout.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateproxy.core.actions import Acquire, LogRecord
from gateproxy.core.config import LimitsConfig
from gateproxy.core.http_events import Request
from gateproxy.core.machine import (
    ABORT_CONNECTION,
    CLOSE_NOTIFY,
    WAIT_ACTIONS,
    WAIT_BOTH,
    WAIT_CLIENT,
    WAIT_UPSTREAM,
    ConnectionMachine,
)
from gateproxy.core.upgrade import Tunnel, requested_upgrade, upgrade_refusal
from tests.helpers.machine import GET, OK, Play, config, status_of

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)
FRAME = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # a masked "Hello" text frame


def _upgraded(data: dict[str, Any] | None = None, *, extra: bytes = b"") -> Play:
    play = Play(data).client(UPGRADE)
    play.ready()
    play.to_upstream()
    play.upstream(SWITCH + extra)
    return play


def _sharing(play: Play) -> Play:
    """Another connection of the same listener (same policy and counters)."""
    other = Play(None)
    other.config, other.metrics, other.policy = play.config, play.metrics, play.policy
    other.machine = ConnectionMachine(play.policy, client_ip="192.0.2.8", probe=False, now=0.0)
    return other


# --- which requests upgrade ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "version", "expected"),
    [
        ([(b"connection", b"Upgrade"), (b"upgrade", b"websocket")], b"1.1", b"websocket"),
        ([(b"connection", b"keep-alive, upgrade"), (b"upgrade", b"h2c")], b"1.1", b"h2c"),
        ([(b"upgrade", b"websocket")], b"1.1", None),  # Connection must name it
        ([(b"connection", b"upgrade")], b"1.1", None),  # and Upgrade must say to what
        ([(b"connection", b"upgrade"), (b"upgrade", b"websocket")], b"1.0", None),
        (
            [(b"connection", b"upgrade"), (b"upgrade", b"websocket"), (b"content-length", b"5")],
            b"1.1",
            None,  # with a body: an ordinary request
        ),
        (
            [(b"connection", b"upgrade"), (b"upgrade", b"websocket"), (b"content-length", b"0")],
            b"1.1",
            b"websocket",
        ),
    ],
)
def test_requested_upgrade(
    headers: list[tuple[bytes, bytes]], version: bytes, expected: bytes | None
) -> None:
    request = Request(method=b"GET", target=b"/", headers=headers, http_version=version)
    assert requested_upgrade(request) == expected


def test_upgrade_refusal_names_the_rule() -> None:
    limits = LimitsConfig(max_upgraded_connections=2)
    assert upgrade_refusal(route_allows=False, upgraded=0, limits=limits) == (
        403,
        "upgrade_forbidden",
    )
    assert upgrade_refusal(route_allows=True, upgraded=2, limits=limits) == (
        503,
        "max_upgraded_connections",
    )
    assert upgrade_refusal(route_allows=True, upgraded=1, limits=limits) is None


def test_the_tunnel_moves_its_deadline_with_every_byte_either_way() -> None:
    to_client, to_upstream = bytearray(), bytearray()
    tunnel = Tunnel(out_client=to_client, out_upstream=to_upstream, idle_timeout=10.0, now=0.0)
    tunnel.client_data(b"up", now=3.0)
    assert tunnel.deadline == 13.0 and not tunnel.idle(now=12.9)
    tunnel.upstream_data(b"down", now=5.0)
    assert tunnel.deadline == 15.0 and tunnel.idle(now=15.0)
    assert (bytes(to_client), bytes(to_upstream)) == (b"down", b"up")
    assert (tunnel.bytes_to_client, tunnel.bytes_to_upstream) == (4, 2)


# --- the upgrade ----------------------------------------------------------------------------


def test_an_upgrade_is_forwarded_with_its_headers_and_a_101_opens_the_tunnel() -> None:
    play = Play().client(UPGRADE)
    play.ready()
    sent = play.to_upstream()
    assert sent.startswith(b"GET /ws HTTP/1.1\r\n")
    assert b"connection: upgrade\r\nupgrade: websocket\r\n" in sent
    assert b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n" in sent
    assert b"x-forwarded-for: 192.0.2.7\r\n" in sent
    assert play.machine.wait == WAIT_UPSTREAM
    play.at(1.0).upstream(SWITCH)
    head = play.to_client()
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"connection: upgrade\r\nupgrade: websocket\r\n" in head
    assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
    assert head.endswith(b"\r\n\r\n") and b"content-length" not in head
    machine = play.machine
    assert machine.wait == WAIT_BOTH and machine.deadline == 1.0 + 3600.0
    counters = play.metrics.listener("public")
    assert counters.upgrades_total == 1 and counters.upgrades_open == 1
    assert counters.responses_by_class["1xx"] == 1
    assert play.releases == []  # the upstream connection is never pooled again
    # bytes go through as they are, both ways
    play.at(2.0).client(FRAME)
    assert play.to_upstream() == FRAME and machine.deadline == 2.0 + 3600.0
    play.at(3.0).upstream(b"\x81\x05Hello")
    assert play.to_client() == b"\x81\x05Hello" and machine.wait == WAIT_BOTH
    # the client closes: the connection ends cleanly, logged once with its bytes
    play.at(4.0).client(b"")
    assert machine.wait == CLOSE_NOTIFY
    assert play.logged == [("request", 101)]
    assert play.last(LogRecord).bytes_sent == 7 and play.last(LogRecord).duration == 4.0
    assert counters.upgrades_open == 0


def test_bytes_that_came_with_either_head_go_first() -> None:
    play = Play().client(UPGRADE + FRAME[:4])
    play.ready()
    play.to_upstream()
    play.upstream(SWITCH + b"\x81\x02hi")
    assert play.to_client().endswith(b"\r\n\r\n\x81\x02hi")
    assert play.to_upstream() == FRAME[:4]
    play.client(FRAME[4:])  # the client vanished mid-frame: the rest never comes
    assert play.to_upstream() == FRAME[4:]


def test_the_upstream_closing_ends_it_after_its_last_bytes() -> None:
    play = _upgraded()
    play.to_client()
    play.upstream(b"\x88\x00")  # a close frame, then EOF
    play.upstream(b"")
    assert play.to_client() == b"\x88\x00" and play.machine.wait == CLOSE_NOTIFY
    assert play.logged == [("request", 101)]


def test_an_upstream_that_closes_right_after_its_101_ends_the_tunnel_at_once() -> None:
    play = Play().client(UPGRADE)
    play.ready()
    play.upstream(SWITCH + b"\x88\x00")
    play.upstream(b"")
    assert play.machine.wait == CLOSE_NOTIFY
    assert play.to_client().endswith(b"\r\n\r\n\x88\x00")


def test_a_client_that_vanishes_mid_frame_aborts_and_frees_the_slot() -> None:
    play = _upgraded()
    play.client(FRAME[:3])
    play.gone()
    assert play.machine.wait == ABORT_CONNECTION
    assert play.logged == [("request", 101)]
    assert play.metrics.listener("public").upgrades_open == 0
    play.gone()  # a second failure (the pump's last write) logs nothing more
    assert play.logged == [("request", 101)]


def test_an_upstream_reset_aborts_the_client_connection() -> None:
    play = _upgraded()
    play.broken()
    assert play.machine.wait == ABORT_CONNECTION and play.logged == [("request", 101)]


def test_websocket_idle_timeout_closes_a_quiet_tunnel_and_is_counted() -> None:
    data = config(limits={"websocket_idle_timeout": "30s"})
    play = _upgraded(data)
    play.at(20.0).client(FRAME)
    play.at(49.0).tick()  # early: nothing happens
    assert play.machine.wait == WAIT_BOTH
    play.at(50.0).tick()
    assert play.machine.wait == CLOSE_NOTIFY
    assert play.enforced == ["websocket_idle_timeout"]


# --- refusals and the rest ------------------------------------------------------------------


def test_a_route_that_forbids_upgrades_answers_403_and_keeps_the_connection() -> None:
    data = config(routes=[{"upstream": "app", "websocket": False}])
    play = Play(data).client(UPGRADE)
    answer = play.to_client()
    assert status_of(answer) == 403 and b"connection: close" not in answer.lower()
    assert play.enforced == ["upgrade_forbidden"] and not play.of(Acquire)
    assert play.machine.wait == WAIT_CLIENT
    play.client(GET)  # the next request is served as usual
    play.ready()
    play.upstream(OK)
    assert status_of(play.to_client()) == 200


def test_over_max_upgraded_connections_a_503_is_counted() -> None:
    data = config(limits={"max_upgraded_connections": 1})
    first = _upgraded(data)
    second = _sharing(first).client(UPGRADE)
    assert status_of(second.to_client()) == 503
    assert second.enforced == ["max_upgraded_connections"]
    assert not second.of(Acquire)
    first.client(b"")  # the first tunnel ends: its slot is free again
    third = _sharing(first).client(UPGRADE)
    assert third.machine.wait == WAIT_ACTIONS and third.of(Acquire)


def test_a_pending_upgrade_holds_its_slot_until_its_answer() -> None:
    data = config(limits={"max_upgraded_connections": 1})
    first = Play(data).client(UPGRADE)
    first.ready()
    assert status_of(_sharing(first).client(UPGRADE).to_client()) == 503
    first.upstream(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")  # not upgraded
    assert status_of(first.to_client()) == 400
    assert first.metrics.listener("public").upgrades_open == 0
    assert first.machine.wait == WAIT_CLIENT  # an ordinary answer: keep-alive goes on


def test_a_refused_upgrade_still_answers_by_the_other_rules_first() -> None:
    data = config(limits={"max_header_bytes": 64})
    play = Play(data).client(UPGRADE)
    assert status_of(play.to_client()) == 431 and play.enforced == ["max_header_bytes"]


def test_a_health_path_never_upgrades() -> None:
    data = config(health_checks=[{"path": "/ws"}])
    play = Play(data).client(UPGRADE)
    answer = play.to_client()
    assert status_of(answer) == 200 and not play.of(Acquire)
    assert play.metrics.listener("public").upgrades_open == 0


def test_the_session_guard_sees_the_101s_set_cookie() -> None:
    data = config(session_guard={"stateless_paths": ["/ws"]})
    play = Play(data).client(UPGRADE)
    play.ready()
    play.upstream(SWITCH[:-2] + b"Set-Cookie: JSESSIONID=s1; Path=/\r\n\r\n")
    head = play.to_client()
    assert head.startswith(b"HTTP/1.1 101 ") and b"jsessionid" not in head.lower()
    assert play.metrics.guard.stripped == 1 and play.machine.wait == WAIT_BOTH


def test_a_101_to_a_request_that_asked_for_nothing_is_a_502() -> None:
    play = Play().client(GET)
    play.ready()
    play.upstream(SWITCH)
    assert status_of(play.to_client()) == 502
    assert play.metrics.listener("public").upgrades_total == 0


def test_the_upgrade_is_the_connections_last_request() -> None:
    play = _upgraded()
    play.to_client()
    play.client(GET)  # after the 101 this is the new protocol's data, not a request
    assert play.to_upstream() == GET and play.to_client() == b""
    assert len(play.of(Acquire)) == 1


def test_a_connection_the_shell_lets_go_gives_its_slot_back_once() -> None:
    play = _upgraded()
    counters = play.metrics.listener("public")
    assert counters.upgrades_open == 1
    play.machine.closed()  # cancelled (a drain's deadline), or a bug of ours in the pump
    play.machine.closed()
    assert counters.upgrades_open == 0
