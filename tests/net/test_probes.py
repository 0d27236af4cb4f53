"""net.probes: active health checks under MockClock, against in-memory h11 servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import h11
import pytest
import trio
import trio.testing

from gateproxy.core.config import UpstreamConfig, UpstreamHealthConfig
from gateproxy.core.metrics import UpstreamCounters
from gateproxy.net.probes import HealthProbe, run_health_checks, watch_server
from gateproxy.net.upstream_group import UpstreamGroup


class FakeServer:
    """An in-memory HTTP/1.1 server reached through ``connect``; behaviour set by ``mode``.

    Modes: ``ok`` (answer ``status``), ``hang`` (read the request, never answer), ``refuse``
    (connect raises), ``close`` (answer, then close without saying so: a stale keep-alive).
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.mode = "ok"
        self.status = 200
        self.connections = 0
        self.requests: list[h11.Request] = []

    async def connect(self, server: str) -> trio.abc.Stream:
        if self.mode == "refuse":
            raise OSError(111, "Connection refused")
        client, server_side = trio.testing.memory_stream_pair()
        self.connections += 1
        self.nursery.start_soon(self._serve, server_side)
        return client

    async def _serve(self, stream: trio.abc.Stream) -> None:
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
    nursery.start_soon(partial(watch_server, g, "10.0.0.1:8080", connect=server.connect))
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
    nursery.start_soon(partial(watch_server, g, "10.0.0.1:8080", connect=server.connect))
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
    await nursery.start(partial(run_health_checks, groups, connect=server.connect))
    await trio.sleep(11)  # checks at 0, 5, 10 for both servers
    assert len(server.requests) == 6
    assert server.connections == 2
    server.status = 500
    await trio.sleep(15)
    assert checked.balancer.usable_count(now=trio.current_time()) == 0
    assert unchecked.balancer.usable_count(now=trio.current_time()) == 1


async def test_no_checked_upstream_returns_at_once() -> None:
    with trio.fail_after(1):
        await run_health_checks({})


async def test_watch_server_needs_a_health_config() -> None:
    plain = UpstreamGroup(
        "plain",
        UpstreamConfig.model_validate({"servers": ["10.0.0.3:80"]}),
        counters=UpstreamCounters(),
    )
    with pytest.raises(ValueError, match="has no health config"):
        await watch_server(plain, "10.0.0.3:80")
