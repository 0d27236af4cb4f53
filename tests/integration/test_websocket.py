"""WebSocket through gateproxy over real TLS: a trio-websocket (wsproto) client and server.

The echo goes both ways with the close handshake; a client that vanishes mid-frame frees its
tunnel, its upstream connection and its slot; refusals (a route without websocket, over
max_upgraded_connections) are clean answers, counted; a quiet tunnel closes after
websocket_idle_timeout; the session guard sees the 101's Set-Cookie; health paths never upgrade.
"""

from __future__ import annotations

from typing import Any

import trio
import trustme
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket

from gateproxy.core.prometheus import render_prometheus
from gateproxy.daemon import Daemon
from tests.conftest import CertPaths
from tests.helpers.clients import client_context, split_address
from tests.helpers.proxy import address, poll, proxy_config, running_proxy, tls_listener
from tests.helpers.sockets import reset
from tests.helpers.websockets import WebSocketEcho

MASKED_HELLO = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # a masked "Hello" text frame


async def _upgrade(
    host: str, port: int, ca: trustme.CA, path: str = "/chat"
) -> tuple[trio.SSLStream[trio.SocketStream], bytes]:
    """Send a WebSocket handshake by hand over TLS; the stream and the response head."""
    stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=client_context(ca))
    await stream.send_all(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\n"
        "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some()
    return stream, head


async def _refused(host: str, port: int, ca: trustme.CA, path: str) -> bytes:
    """The answer to an upgrade request that is not upgraded (the connection then closed)."""
    stream, head = await _upgrade(host, port, ca, path)
    await stream.aclose()
    return head


def _config(server_cert: CertPaths, up: WebSocketEcho, **listener: Any) -> dict[str, Any]:
    top = listener.pop("top", {})
    return proxy_config(
        [tls_listener(cert=server_cert.cert, key=server_cert.key, **listener)],
        {"app": {"servers": [up.address]}},
        **top,
    )


def _listener_stats(daemon: Daemon) -> Any:
    return daemon.stats()["listeners"]["public"]  # type: ignore[index]


def _upgrades_open(daemon: Daemon) -> int:
    return int(_listener_stats(daemon)["upgrades"]["open"])


async def test_a_websocket_echo_works_through_gateproxy_over_tls(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    async with WebSocketEcho() as up, running_proxy(_config(server_cert, up)) as daemon:
        host, port = split_address(address(daemon))
        async with open_websocket(host, port, "/chat", use_ssl=client_context(ca)) as ws:
            await ws.send_message("hello")
            assert await ws.get_message() == "hello"
            big = bytes(range(256)) * 1024  # 256 KiB: many TLS records and TCP reads
            await ws.send_message(big)
            assert await ws.get_message() == big
            during = _listener_stats(daemon)["upgrades"]
        await up.wait_for(lambda: up.closed == 1)
        await poll(lambda: _upgrades_open(daemon) == 0)
        after = daemon.stats()
    assert during == {"open": 1, "total": 1}
    assert up.close_codes == [1000]  # the close handshake went through both ways
    sent = dict(up.requests[0])
    assert sent[b"x-forwarded-for"] == b"127.0.0.1" and sent[b"upgrade"] == b"websocket"
    assert sent[b"via"] == b"1.1 gateproxy"
    samples = {
        (sample.name, sample.labels.get("listener")): sample.value
        for family in text_string_to_metric_families(render_prometheus(after))
        for sample in family.samples
    }
    assert samples[("gateproxy_upgraded_connections_total", "public")] == 1
    assert samples[("gateproxy_upgraded_connections_open", "public")] == 0


async def test_a_client_that_vanishes_mid_frame_frees_its_tunnel(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    async with WebSocketEcho() as up, running_proxy(_config(server_cert, up)) as daemon:
        host, port = split_address(address(daemon))
        stream, head = await _upgrade(host, port, ca)
        assert head.startswith(b"HTTP/1.1 101 ")
        await stream.send_all(MASKED_HELLO[:5])  # half a frame, then gone without a word
        await reset(stream.transport_stream)
        await up.wait_for(lambda: up.closed == 1)
        await poll(lambda: _upgrades_open(daemon) == 0)
        # the proxy goes on serving: the next client's echo works
        async with open_websocket(host, port, "/chat", use_ssl=client_context(ca)) as ws:
            await ws.send_message("again")
            assert await ws.get_message() == "again"
    assert up.close_codes[0] == 1006  # the upstream saw the connection end, no close frame
    assert up.opened == 2


async def test_upgrade_refusals_are_clean_answers_and_counted(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    routes = [
        {"path_prefix": "/plain/", "upstream": "app", "websocket": False},
        {"path_prefix": "/", "upstream": "app"},
    ]
    limits = {"max_upgraded_connections": 1}
    async with WebSocketEcho() as up:
        config = _config(server_cert, up, routes=routes, limits=limits)
        async with running_proxy(config) as daemon:
            host, port = split_address(address(daemon))
            forbidden = await _refused(host, port, ca, "/plain/x")
            async with open_websocket(host, port, "/chat", use_ssl=client_context(ca)) as first:
                over = await _refused(host, port, ca, "/chat")
                await first.send_message("still here")
                assert await first.get_message() == "still here"
            await poll(lambda: _upgrades_open(daemon) == 0)
            stats = _listener_stats(daemon)
    assert forbidden.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert over.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"content-length: " in forbidden.lower() and b"content-length: " in over.lower()
    assert len(up.requests) == 1  # neither refusal reached the upstream
    assert stats["limits"]["upgrade_forbidden"] == 1
    assert stats["limits"]["max_upgraded_connections"] == 1
    assert stats["upgrades"]["total"] == 1


async def test_a_quiet_tunnel_closes_after_websocket_idle_timeout(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    limits = {"websocket_idle_timeout": "300ms"}
    async with WebSocketEcho() as up:
        async with running_proxy(_config(server_cert, up, limits=limits)) as daemon:
            host, port = split_address(address(daemon))
            stream, head = await _upgrade(host, port, ca)
            assert head.startswith(b"HTTP/1.1 101 ")
            await stream.send_all(MASKED_HELLO)
            echo = b""
            with trio.fail_after(5):
                while len(echo) < 7:
                    echo += await stream.receive_some()
                assert echo == b"\x81\x05Hello"  # the server's frames are not masked
                rest = await stream.receive_some()  # nothing moves: the proxy closes it
            await stream.aclose()
            await up.wait_for(lambda: up.closed == 1)
            stats = _listener_stats(daemon)
    assert rest == b""  # a clean close: TLS close_notify
    assert up.close_codes == [1006]
    assert stats["limits"]["websocket_idle_timeout"] == 1
    assert stats["upgrades"]["open"] == 0


async def test_the_session_guard_strips_a_session_cookie_set_on_the_101(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    async with WebSocketEcho(set_cookie="JSESSIONID=s1; Path=/") as up:
        config = _config(server_cert, up, top={"session_guard": {"stateless_paths": ["/live"]}})
        async with running_proxy(config) as daemon:
            host, port = split_address(address(daemon))
            async with open_websocket(host, port, "/live", use_ssl=client_context(ca)) as ws:
                names = [name for name, _ in ws.handshake_headers]
                await ws.send_message("x")
                assert await ws.get_message() == "x"
            stats = daemon.stats()
    assert b"via" in names and b"set-cookie" not in names  # (extra headers only)
    assert stats["session_guard"]["stripped"] == 1  # type: ignore[index]


async def test_a_health_path_is_answered_locally_and_never_upgrades(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    async with WebSocketEcho() as up:
        config = _config(server_cert, up, health_checks=[{"path": "/healthz"}])
        async with running_proxy(config) as daemon:
            host, port = split_address(address(daemon))
            answered = await _refused(host, port, ca, "/healthz")
    assert answered.startswith(b"HTTP/1.1 200 ") and up.requests == []
