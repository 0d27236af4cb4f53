"""net.probes: active health checks under MockClock, against in-memory h11 servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import h11
import pytest
import trio
import trio.testing

from gateproxy.core.config import SessionGuardConfig, UpstreamConfig, UpstreamHealthConfig
from gateproxy.core.health import HealthBoard
from gateproxy.core.metrics import UpstreamCounters
from gateproxy.core.session_guard import SessionGuard
from gateproxy.net.probes import HealthProbe, apply_verdict, run_health_checks, watch_server
from gateproxy.net.upstream_group import UpstreamGroup


class FakeServer:
    """An in-memory HTTP/1.1 server reached through ``connect``; behaviour set by ``mode``.

    Modes: ``ok`` (answer ``status``), ``hang`` (read the request, never answer), ``refuse``
    (connect raises), ``close`` (answer, then close without saying so: a stale keep-alive).
    Like Tomcat, it mints a ``JSESSIONID`` for every request without a known one (``sessions``
    holds them per server).
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.mode = "ok"
        self.status = 200
        self.connections = 0
        self.requests: list[h11.Request] = []
        self.sessions: dict[str, set[bytes]] = {}
        self.minted = 0

    async def connect(self, server: str) -> trio.abc.Stream:
        if self.mode == "refuse":
            raise OSError(111, "Connection refused")
        client, server_side = trio.testing.memory_stream_pair()
        self.connections += 1
        self.nursery.start_soon(self._serve, server_side, server)
        return client

    def _session_header(self, request: h11.Request, server: str) -> list[tuple[bytes, bytes]]:
        known = self.sessions.setdefault(server, set())
        cookie = dict(request.headers).get(b"cookie", b"")
        if cookie.startswith(b"JSESSIONID=") and cookie[11:] in known:
            return []
        self.minted += 1
        session = b"S%d" % self.minted
        known.add(session)
        return [(b"set-cookie", b"JSESSIONID=" + session + b"; Path=/; HttpOnly")]

    async def _serve(self, stream: trio.abc.Stream, server: str) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                event = await self._next(stream, conn)
                if not isinstance(event, h11.Request):
                    return
                self.requests.append(event)
                while not isinstance(await self._next(stream, conn), h11.EndOfMessage):
                    pass
                if self.mode == "hang":
                    await trio.sleep_forever()
                body = b"ok\n"
                headers = [(b"content-length", b"%d" % len(body))]
                headers += self._session_header(event, server)
                out = conn.send(h11.Response(status_code=self.status, headers=headers))
                out = (out or b"") + (conn.send(h11.Data(data=body)) or b"")
                out += conn.send(h11.EndOfMessage()) or b""
                await stream.send_all(out)
                if self.mode == "close":
                    return
                conn.start_next_cycle()

    @staticmethod
    async def _next(stream: trio.abc.Stream, conn: h11.Connection) -> Any:
        while (event := conn.next_event()) is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(4096))
        return event


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[FakeServer]:
    yield FakeServer(nursery)


def group(**health: Any) -> UpstreamGroup:
    config = UpstreamConfig.model_validate(
        {
            "servers": ["10.0.0.1:8080", "10.0.0.2:8080"],
            "health": {"interval": "5s", "timeout": "1s", "rise": 2, "fall": 3, **health},
        }
    )
    return UpstreamGroup("app", config, counters=UpstreamCounters())


def healthy(g: UpstreamGroup, server: str = "10.0.0.1:8080") -> bool:
    return next(s.healthy for s in g.balancer.servers_state(now=0.0) if s.address == server)


async def watch_changes(g: UpstreamGroup, changes: list[tuple[float, bool]]) -> None:
    state = healthy(g)
    while True:
        await trio.sleep(0.01)
        if healthy(g) != state:
            state = healthy(g)
            changes.append((trio.current_time(), state))


def watch(g: UpstreamGroup, server: str, connect: Any, **kw: Any) -> Any:
    """``watch_server`` for ``server`` of ``g``, its verdicts going to ``g``'s balancer."""
    assert g.config.health is not None
    on_change = partial(apply_verdict, {g.name: g})
    return partial(
        watch_server, g.name, server, g.config.health, board=HealthBoard(), on_change=on_change,
        connect=connect, **kw,
    )  # fmt: skip


async def test_probe_request_and_keep_alive_reuse(
    server: FakeServer, autojump_clock: trio.testing.MockClock
) -> None:
    config = UpstreamHealthConfig(path="/ready", host="app.internal")
    probe = HealthProbe("10.0.0.1:8080", config=config, connect=server.connect)
    results = [await probe.check() for _ in range(5)]
    await probe.aclose()
    assert [r.ok for r in results] == [True] * 5
    assert results[0].status == 200
    assert server.connections == 1  # one kept-alive connection for every check
    request = server.requests[0]
    assert request.method == b"GET" and request.target == b"/ready"
    headers = dict(request.headers)
    assert headers[b"host"] == b"app.internal"
    assert headers[b"user-agent"] == b"gateproxy-health-check"
    assert b"cookie" not in headers


@pytest.mark.parametrize(
    ("status", "expected", "ok"),
    [(200, None, True), (302, None, True), (404, None, False), (503, None, False),
     (404, [404], True), (200, [204], False)],
)  # fmt: skip
async def test_expected_statuses(
    server: FakeServer, status: int, expected: list[int] | None, ok: bool
) -> None:
    server.status = status
    extra = {} if expected is None else {"expected_statuses": expected}
    config = UpstreamHealthConfig.model_validate(extra)
    probe = HealthProbe("10.0.0.1:8080", config=config, connect=server.connect)
    result = await probe.check()
    await probe.aclose()
    assert (result.ok, result.status) == (ok, status)
    assert result.reason == ("" if ok else f"status {status}")


async def test_host_defaults_to_server_address(server: FakeServer) -> None:
    probe = HealthProbe("10.0.0.1:8080", config=UpstreamHealthConfig(), connect=server.connect)
    await probe.check()
    await probe.aclose()
    assert dict(server.requests[0].headers)[b"host"] == b"10.0.0.1:8080"
    assert server.requests[0].target == b"/health"


async def test_each_check_has_its_own_deadline(
    server: FakeServer, autojump_clock: trio.testing.MockClock
) -> None:
    server.mode = "hang"
    probe = HealthProbe("s:1", config=UpstreamHealthConfig(timeout="2s"), connect=server.connect)
    started = trio.current_time()
    result = await probe.check()
    assert trio.current_time() - started == pytest.approx(2.0)
    assert not result.ok and "no response within 2s" in result.reason
    server.mode = "ok"
    result = await probe.check()  # the hung connection was dropped: a fresh one works
    await probe.aclose()
    assert result.ok and server.connections == 2


async def test_refused_and_stale_keep_alive(server: FakeServer) -> None:
    probe = HealthProbe("s:1", config=UpstreamHealthConfig(), connect=server.connect)
    server.mode = "refuse"
    refused = await probe.check()
    assert not refused.ok and "connect failed" in refused.reason
    server.mode = "close"  # answers, then closes the connection behind our back
    assert (await probe.check()).ok
    assert (await probe.check()).ok  # the stale connection is retried once on a fresh one
    await probe.aclose()
    assert server.connections == 2


async def test_fall_and_rise_timing(
    server: FakeServer, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Down within fall x interval after the server fails; up again after rise x interval."""
    g = group()
    changes: list[tuple[float, bool]] = []
    nursery.start_soon(watch(g, "10.0.0.1:8080", server.connect))
    nursery.start_soon(watch_changes, g, changes)
    # checks run at t = 0, 5, 10, ...; the server starts failing at t = 12
    await trio.sleep(12)
    assert healthy(g) and changes == []
    server.status = 503
    await trio.sleep(20)  # t = 32
    assert len(changes) == 1
    went_down, state = changes[0]
    assert not state
    assert went_down - 12 <= 3 * 5 and went_down == pytest.approx(25, abs=0.05)
    assert healthy(g, "10.0.0.2:8080")  # the other server is not watched here
    server.status = 200  # recovers at t = 32: passes at 35 and 40
    await trio.sleep(10)
    assert changes[1][1] and changes[1][0] - 32 <= 2 * 5
    assert changes[1][0] == pytest.approx(40, abs=0.05)
    assert server.connections == 1  # every check on one kept-alive connection


async def test_a_server_dead_at_start_is_down_after_one_check(
    server: FakeServer, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server.mode = "refuse"
    g = group()
    nursery.start_soon(watch(g, "10.0.0.1:8080", server.connect))
    await trio.sleep(0.5)
    assert not healthy(g)
    assert g.balancer.usable_count(now=0.0) == 1


async def test_run_health_checks_probes_every_server_of_checked_upstreams(
    server: FakeServer, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    checked = group()
    unchecked = UpstreamGroup(
        "plain",
        UpstreamConfig.model_validate({"servers": ["10.0.0.3:80"]}),
        counters=UpstreamCounters(),
    )
    groups = {"app": checked, "plain": unchecked}
    upstreams = {name: g.config for name, g in groups.items()}
    on_change = partial(apply_verdict, groups)
    run = partial(run_health_checks, upstreams, board=HealthBoard(), on_change=on_change)
    await nursery.start(partial(run, connect=server.connect))
    await trio.sleep(11)  # checks at 0, 5, 10 for both servers
    assert len(server.requests) == 6
    assert server.connections == 2
    server.status = 500
    await trio.sleep(15)
    assert checked.balancer.usable_count(now=trio.current_time()) == 0
    assert unchecked.balancer.usable_count(now=trio.current_time()) == 1


async def test_no_checked_upstream_returns_at_once() -> None:
    with trio.fail_after(1):
        await run_health_checks({}, board=HealthBoard(), on_change=lambda _v: None)


# --- the checker is no session leak -------------------------------------------------------------


def _cookies(requests: list[h11.Request]) -> list[bytes | None]:
    return [dict(r.headers).get(b"cookie") for r in requests]


async def test_checks_send_back_the_session_the_app_set_and_count_it(
    server: FakeServer, autojump_clock: trio.testing.MockClock
) -> None:
    """50 checks of one server: the app mints one session, every later check carries it."""
    guard = SessionGuard(SessionGuardConfig())
    config = UpstreamHealthConfig()
    probe = HealthProbe("s:1", config=config, connect=server.connect, guard=guard, upstream="app")
    results = [await probe.check() for _ in range(50)]
    await probe.aclose()
    assert all(r.ok for r in results)
    assert server.sessions == {"s:1": {b"S1"}}
    assert _cookies(server.requests) == [None] + [b"JSESSIONID=S1"] * 49
    counters = guard.counters
    assert (counters.minted, counters.minted_for_probes, counters.minted_by_health_checks) == (
        1,
        1,
        1,
    )
    assert guard.tables()["top_clients"] == [{"client": "gateproxy-health-check", "minted": 1}]
    assert guard.tables()["pinned"] == {"entries": 1, "max_entries": 10000}


async def test_one_session_per_server_and_a_forgotten_one_is_replaced_and_counted(
    server: FakeServer, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    g = group(interval="1s")
    guard = SessionGuard(SessionGuardConfig())
    for address in g.config.servers:
        nursery.start_soon(watch(g, address, server.connect, guard=guard))
    await trio.sleep(9.5)  # 10 checks of each server
    assert {s: len(ids) for s, ids in server.sessions.items()} == {
        "10.0.0.1:8080": 1,
        "10.0.0.2:8080": 1,
    }  # a pin per upstream would make every check of the other server mint one
    assert guard.counters.minted_by_health_checks == 2
    server.sessions["10.0.0.1:8080"].clear()  # the app restarted: it forgot the session
    await trio.sleep(5)
    assert len(server.sessions["10.0.0.1:8080"]) == 1  # one new session, then kept again
    assert guard.counters.minted_by_health_checks == 3 and guard.counters.minted == 3
    assert len(server.requests) == 30 and server.minted == 3
