"""The admin listener over real loopback sockets, queried by h11 and stdlib http.client."""

from __future__ import annotations

import http.client
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import h11
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from gateproxy.core.metrics import Metrics, build_stats
from gateproxy.net import admin
from gateproxy.net.admin import handle_admin_connection, open_admin_listeners, serve_admin
from gateproxy.net.procinfo import process_info


def _stats() -> dict[str, object]:
    m = Metrics()
    m.listener("public").requests_total = 42
    m.upstream("app").requests = 7
    return build_stats(
        metrics=m,
        tls={"public": {"session_cache": {"entries": 3, "max_entries": 10}}},
        upstream_servers={"app": [{"address": "127.0.0.1:8080", "healthy": True}]},
        guard_tables=None,
        process={"rss_bytes": 1, "open_fds": 2, "uptime_s": 3.0},
    )


@pytest.fixture
async def port(nursery: trio.Nursery) -> AsyncIterator[int]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(partial(serve_admin, listeners, stats=_stats))
    yield listeners[0].socket.getsockname()[1]


class Client:
    """A raw-bytes HTTP/1.1 client on one connection, parsed with h11."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self, method: str, target: str, *, headers: tuple[tuple[str, str], ...] = ()
    ) -> tuple[h11.Response, bytes]:
        request = h11.Request(method=method, target=target, headers=[("Host", "admin"), *headers])
        await self.stream.send_all(self.conn.send(request) or b"")
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()) or b"")
        return await self.response()

    async def response(self) -> tuple[h11.Response, bytes]:
        response: h11.Response | None = None
        body = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                return response, body
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def raw(self, data: bytes) -> bytes:
        """Send bytes as they are; return everything until the server closes."""
        await self.stream.send_all(data)
        received = b""
        while chunk := await self.stream.receive_some(65536):
            received += chunk
        return received


Connect = Callable[[int], Awaitable[Client]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open client connections to a port; all are closed at the end of the test."""
    streams: list[trio.SocketStream] = []

    async def _connect(port: int) -> Client:
        streams.append(await trio.open_tcp_stream("127.0.0.1", port))
        return Client(streams[-1])

    yield _connect
    for stream in streams:
        await stream.aclose()


def _header(response: h11.Response, name: bytes) -> bytes:
    return dict(response.headers)[name]


async def test_stats_json(port: int, connect: Connect) -> None:
    client = await connect(port)
    response, body = await client.request("GET", "/stats")
    assert response.status_code == 200
    assert _header(response, b"content-type") == b"application/json"
    stats = json.loads(body)
    expected = {**_stats(), "admin": {"connections_denied": 0}}  # the admin API's own branch
    assert stats == expected
    assert stats["listeners"]["public"]["requests"]["total"] == 42
    assert body.decode() == json.dumps(expected, indent=2, sort_keys=True) + "\n"


async def test_metrics_parse_on_a_kept_alive_connection(port: int, connect: Connect) -> None:
    client = await connect(port)
    for _ in range(2):  # the same connection serves both
        response, body = await client.request("GET", "/metrics?x=1")
        assert response.status_code == 200
        assert _header(response, b"content-type") == b"text/plain; version=0.0.4; charset=utf-8"
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        assert samples[("gateproxy_requests_total", (("listener", "public"),))] == 42
        assert samples[("gateproxy_tls_session_cache_entries", (("listener", "public"),))] == 3
        key = ("gateproxy_upstream_healthy", (("server", "127.0.0.1:8080"), ("upstream", "app")))
        assert samples[key] == 1
        assert samples[("gateproxy_upstream_requests_total", (("upstream", "app"),))] == 7


async def test_head_index_404_405(port: int, connect: Connect) -> None:
    client = await connect(port)
    response, body = await client.request("HEAD", "/stats")
    assert response.status_code == 200 and body == b""
    assert int(_header(response, b"content-length")) > 100
    response, body = await client.request("GET", "/")
    assert response.status_code == 200 and b"/metrics" in body
    response, _ = await client.request("GET", "/nope")
    assert response.status_code == 404
    response, _ = await client.request("POST", "/stats", headers=(("Content-Length", "0"),))
    assert response.status_code == 405
    assert _header(response, b"allow") == b"GET, HEAD"
    response, _ = await client.request("DELETE", "/metrics")
    assert response.status_code == 405


async def test_request_with_body_is_answered_then_closed(port: int, connect: Connect) -> None:
    client = await connect(port)
    data = await client.raw(b"PUT /stats HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    assert data.startswith(b"HTTP/1.1 405 ")
    assert b"connection: close" in data.lower()


async def test_garbage_gets_400_and_others_are_unaffected(port: int, connect: Connect) -> None:
    other = await connect(port)
    response, _ = await other.request("GET", "/stats")
    assert response.status_code == 200
    bad = await connect(port)
    data = await bad.raw(b"\x16\x03\x01 this is not http\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 ")
    huge = await connect(port)
    data = await huge.raw(b"GET /stats HTTP/1.1\r\nX: " + b"a" * 20000)  # head never ends
    assert data.startswith(b"HTTP/1.1 431 ")
    response, _ = await other.request("GET", "/metrics")  # the earlier connection still works
    assert response.status_code == 200
    fresh = await connect(port)
    response, _ = await fresh.request("GET", "/stats")
    assert response.status_code == 200


async def test_client_connection_close_and_http10(port: int, connect: Connect) -> None:
    client = await connect(port)
    data = await client.raw(b"GET /stats HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 ") and b'"listeners"' in data
    client = await connect(port)
    data = await client.raw(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 ")


async def test_stdlib_client(port: int, connect: Connect) -> None:
    def fetch() -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/stats")
            reply = conn.getresponse()
            return reply.status, reply.getheader("Content-Type", ""), reply.read()
        finally:
            conn.close()

    status, content_type, body = await trio.to_thread.run_sync(fetch)
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body)["upstreams"]["app"]["requests"] == 7


async def test_failing_stats_provider_gives_500_and_keeps_serving(
    nursery: trio.Nursery, connect: Connect
) -> None:
    calls = 0

    def flaky() -> dict[str, object]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("provider broke")
        return _stats()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(partial(serve_admin, listeners, stats=flaky))
    client = await connect(listeners[0].socket.getsockname()[1])
    response, _ = await client.request("GET", "/stats")
    assert response.status_code == 500
    response, _ = await client.request("GET", "/stats")
    assert response.status_code == 200


async def test_idle_and_header_timeouts(autojump_clock: trio.testing.MockClock) -> None:
    server, client = trio.testing.memory_stream_pair()
    start = trio.current_time()
    await handle_admin_connection(
        server, stats=_stats
    )  # says nothing: closed after the idle timeout
    assert trio.current_time() - start == pytest.approx(admin.IDLE_TIMEOUT)

    server, client = trio.testing.memory_stream_pair()
    await client.send_all(b"GET /stats HTTP/1.1\r\nHo")  # starts, never finishes the head
    start = trio.current_time()
    await handle_admin_connection(server, stats=_stats)
    assert trio.current_time() - start == pytest.approx(admin.HEADER_TIMEOUT)


async def test_open_admin_listeners_binds_host_port() -> None:
    listeners = await open_admin_listeners("127.0.0.1:0")
    try:
        assert listeners[0].socket.getsockname()[0] == "127.0.0.1"
    finally:
        for listener in listeners:
            await listener.aclose()
    with pytest.raises(ValueError, match="host:port"):
        await open_admin_listeners("localhost")


def test_process_info() -> None:
    info = process_info(started_at_monotonic=100.0, now=112.5)
    assert info["uptime_s"] == 12.5
    assert info["rss_bytes"] > 1024 * 1024
    assert info["open_fds"] >= 3
