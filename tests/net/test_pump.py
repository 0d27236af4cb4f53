"""net.pump: one connection's machine executed over real sockets, with its one lazy deadline.

A real TCP connection on 127.0.0.1 and a real upstream server, under trio's autojump clock (the
clock jumps while every task waits, real descriptor waits included), so timeouts of tens of
seconds take no real time.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from gateproxy.core.config import AccessLogConfig, load_config_data
from gateproxy.logs import AccessLog
from gateproxy.net.connection import handle_connection
from gateproxy.net.runtime import ListenerRuntime, Shared, build_runtime
from tests.helpers.rawhttp import plain_listener
from tests.helpers.sockets import tcp_pair
from tests.helpers.upstreams import RecordingUpstream

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def _listener(upstream: str, **limits: object) -> ListenerRuntime:
    config = load_config_data(
        {
            "listeners": [{**plain_listener(), "limits": limits}],
            "upstreams": {"app": {"servers": [upstream]}},
            "access_log": {"path": "off"},
        }
    )
    log = AccessLog(AccessLogConfig(path="off"))
    return build_runtime(config, base_dir=Path("."), shared=Shared(), access_log=log).listeners[0]


async def _serve(listener: ListenerRuntime, stream: trio.SocketStream) -> None:
    try:
        await handle_connection(listener, stream)
    finally:
        for group in listener.upstreams.values():
            group.close_idle()


async def _response(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


async def test_the_deadline_moves_lazily_and_an_early_fire_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first scope ends at the header timeout (10 s); after the first response the machine
    wants the keep-alive deadline (75 s), later, so the scope fires early at 10 s: the pump
    starts a new scope and the connection serves on, then closes at the keep-alive timeout."""
    async with RecordingUpstream() as up, tcp_pair() as (server, client):
        listener = _listener(up.address, request_header_timeout="10s", keepalive_timeout="75s")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve, listener, server)
            await client.send_all(GET)
            first = await _response(client)
            started = trio.current_time()
            await trio.sleep(30)  # past the first scope's deadline
            await client.send_all(GET)
            second = await _response(client)
            assert await client.receive_some(10) == b""  # closed at the keep-alive timeout
            closed_after = trio.current_time() - started
    assert first.startswith(b"HTTP/1.1 200 ") and second.startswith(b"HTTP/1.1 200 ")
    assert 30 + 75 - 1 <= closed_after <= 30 + 75 + 1
    assert listener.counters.limits["keepalive_timeout"] == 1
    assert len(up.requests) == 2


async def test_an_early_fire_while_the_upstream_answers_keeps_the_exchange(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first scope's deadline (the header timeout, 10 s) passes while the upstream is still
    answering (the machine waits up to the read timeout, later): the scope fires early, and the
    exchange, its upstream connection and the client connection must all go on."""
    hold = trio.Event()
    async with RecordingUpstream(hold=hold) as up, tcp_pair() as (server, client):
        listener = _listener(up.address, request_header_timeout="10s")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve, listener, server)
            await client.send_all(GET)
            await trio.sleep(15)  # past the first scope's deadline, the upstream still holds
            hold.set()
            first = await _response(client)
            await client.send_all(GET)
            second = await _response(client)
            nursery.cancel_scope.cancel()
    assert first.startswith(b"HTTP/1.1 200 ") and second.startswith(b"HTTP/1.1 200 ")
    assert len(up.requests) == 2


async def test_a_drain_closes_an_idle_connection_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with RecordingUpstream() as up, tcp_pair() as (server, client):
        listener = _listener(up.address, keepalive_timeout="75s")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve, listener, server)
            await client.send_all(GET)
            await _response(client)
            await trio.testing.wait_all_tasks_blocked()
            shared = listener.shared
            assert len(shared.idle_scopes) == 1  # the idle pump registered its deadline scope
            started = trio.current_time()
            shared.draining = True
            for scope in list(shared.idle_scopes):
                scope.cancel()
            assert await client.receive_some(10) == b""
    assert trio.current_time() - started < 1 and not shared.idle_scopes
    assert listener.counters.limits["keepalive_timeout"] == 0  # a drain is not a limit


async def _answer_after_the_head(listener: trio.SocketListener) -> None:
    """An upstream that refuses an upload as soon as its head arrived."""
    stream = await listener.accept()
    async with stream:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 413 Too Big\r\nContent-Length: 3\r\n\r\nno\n")


async def test_an_upstream_answer_during_an_upload_is_relayed_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While the body uploads the pump waits on both sockets: a response that comes early is
    relayed without waiting for the rest of the body (then both connections close)."""
    (upstream,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with upstream, tcp_pair() as (server, client):
        listener = _listener(f"127.0.0.1:{upstream.socket.getsockname()[1]}", body_timeout="60s")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_answer_after_the_head, upstream)
            nursery.start_soon(_serve, listener, server)
            await client.send_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
            started = trio.current_time()
            response = await _response(client)
            took = trio.current_time() - started
            await client.send_eof()  # (gateproxy lingers until the client is done)
    assert response.startswith(b"HTTP/1.1 413 "), response
    assert b"connection: close" in response.lower()
    assert took < 1
