"""listeners[].access, admin.access and listeners[].rate_limit against a real proxy: real
sockets from other loopback addresses (all of 127.0.0.0/8 is loopback on Linux), real TLS,
a real upstream, and the counters in /stats."""

from __future__ import annotations

import functools
import json
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

import trio
import trustme

from gateproxy.daemon import Daemon
from tests.conftest import CertPaths
from tests.helpers.clients import client_context, https_request
from tests.helpers.proxy import address, poll, proxy_config, running_proxy, tls_listener
from tests.helpers.rawhttp import RawClient, plain_listener
from tests.helpers.supervised import supervised
from tests.helpers.upstreams import RecordingUpstream

GET = b"GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n"
DENIED = "127.0.0.2"


def _handshake(address: tuple[str, int], context: ssl.SSLContext, source: str) -> str:
    """Blocking: a TLS handshake from ``source``; the exception's class name ('' if it passed)."""
    try:
        with socket.create_connection(address, timeout=5, source_address=(source, 0)) as raw:
            with context.wrap_socket(raw, server_hostname="localhost"):
                return ""
    except (ssl.SSLError, ConnectionError) as exc:
        return type(exc).__name__


def _listener_stats(daemon: Daemon, name: str) -> dict[str, Any]:
    return daemon.stats()["listeners"][name]  # type: ignore[index, no-any-return]


async def test_a_denied_address_is_closed_before_the_tls_handshake(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    async with RecordingUpstream() as up:
        listener = tls_listener(
            cert=server_cert.cert, key=server_cert.key, access=[f"deny {DENIED}", "allow all"]
        )
        config = proxy_config([listener], {"app": {"servers": [up.address]}})
        async with running_proxy(config) as daemon:
            host, port = daemon.addresses["public"]
            run = functools.partial(_handshake, (host, port), client_context(ca), DENIED)
            errors = [await trio.to_thread.run_sync(run) for _ in range(3)]
            allowed = await https_request(address(daemon), ca=ca, path="/ok")
            run = functools.partial(_handshake, (host, port), client_context(ca), "127.0.0.3")
            other = await trio.to_thread.run_sync(run)
            stats = _listener_stats(daemon, "public")
    assert all(e in ("SSLEOFError", "ConnectionResetError", "SSLZeroReturnError") for e in errors)
    assert allowed.status == 200 and other == ""
    assert [r.target for r in up.requests] == ["/ok"]
    assert stats["connections"]["denied"] == 3
    assert stats["connections"]["total"] == 2  # only the allowed ones
    handshakes = stats["tls"]["handshakes"]
    assert (handshakes["full"], handshakes["resumed"], handshakes["failed"]) == (2, 0, 0)


async def test_admin_access_closes_other_addresses_and_counts_them() -> None:
    async with RecordingUpstream() as up:
        config = proxy_config(
            [plain_listener()],
            {"app": {"servers": [up.address]}},
            admin={"bind": "127.0.0.1:0", "access": ["allow 127.0.0.1", "deny all"]},
        )
        async with running_proxy(config) as daemon:
            assert daemon.admin_address is not None
            host, port = daemon.admin_address
            for _ in range(2):
                stream = await trio.open_tcp_stream(host, port, local_address=DENIED)
                async with RawClient(stream) as client:
                    await client.send(b"GET /stats HTTP/1.1\r\nHost: a\r\n\r\n")
                    assert await client.closed_within(3.0)
                    assert client.buffer == b""  # not a byte of the stats
            async with RawClient(await trio.open_tcp_stream(host, port)) as client:
                await client.send(b"GET /stats HTTP/1.1\r\nHost: a\r\n\r\n")
                response = await client.read_response()
    assert response.status == 200
    stats = json.loads(response.body)
    assert stats["admin"]["connections_denied"] == 2


async def test_a_bounded_load_gets_the_expected_429s() -> None:
    rate, burst, total = 20.0, 9, 200
    async with RecordingUpstream() as up:
        listener = plain_listener(rate_limit={"rate": f"{rate:g}r/s", "burst": burst})
        config = proxy_config([listener], {"app": {"servers": [up.address]}})
        async with running_proxy(config) as daemon:
            host, port = daemon.addresses["plain"]
            statuses = []
            async with RawClient(await trio.open_tcp_stream(host, port)) as client:
                started = trio.current_time()
                for _ in range(total):  # one keep-alive connection, as fast as it goes
                    await client.send(GET)
                    statuses.append((await client.read_response()).status)
                elapsed = trio.current_time() - started
            other = await trio.open_tcp_stream(host, port, local_address=DENIED)
            async with RawClient(other) as client:  # another address: its own bucket
                await client.send(GET)
                other_status = (await client.read_response()).status
            stats = _listener_stats(daemon, "plain")
    ok = statuses.count(200)
    assert set(statuses) <= {200, 429} and statuses[: burst + 1] == [200] * (burst + 1)
    assert burst + 1 <= ok <= burst + 1 + rate * elapsed + 1, (ok, elapsed)
    assert len(up.requests) == ok + 1 and other_status == 200
    assert stats["limits"]["rate_limit"] == total - ok
    assert stats["rate_limit"] == {"buckets": 2, "evictions": 0}
    assert stats["requests"]["responses"]["4xx"] == total - ok


async def test_a_reload_changes_admin_access_on_the_same_socket(tmp_path: Path) -> None:
    async with RecordingUpstream() as up:
        config = proxy_config(
            [plain_listener()],
            {"app": {"servers": [up.address]}},
            workers=1,
            admin={"bind": "127.0.0.1:0", "access": ["allow 127.0.0.1"]},
        )
        async with supervised(config, tmp_path) as gp:
            before = gp.admin
            assert (await gp.get("/stats"))[0] == 200
            config["admin"]["access"] = ["deny 127.0.0.1"]
            gp.config_path.write_text(json.dumps(config))
            gp.signal(signal.SIGHUP)
            await gp.wait_event("reloaded")
            host, port = before
            async with RawClient(await trio.open_tcp_stream(host, port)) as client:
                await client.send(b"GET /stats HTTP/1.0\r\n\r\n")
                assert await client.closed_within(3.0) and client.buffer == b""
            config["admin"]["access"] = []
            gp.config_path.write_text(json.dumps(config))
            gp.signal(signal.SIGHUP)
            await gp.wait_event("reloaded")
            stats = await gp.stats()
    assert stats["admin"]["connections_denied"] == 1
    assert stats["supervisor"]["reload_failures"] == 0


async def test_denials_are_summarised_not_logged_one_by_one(capfd: Any) -> None:
    async with RecordingUpstream() as up:
        listener = plain_listener(access=["deny 127.0.0.0/8"])
        config = proxy_config([listener], {"app": {"servers": [up.address]}})
        async with running_proxy(config) as daemon:
            host, port = daemon.addresses["plain"]
            for _ in range(20):
                async with RawClient(await trio.open_tcp_stream(host, port)) as client:
                    assert await client.closed_within(3.0)
            await poll(lambda: _listener_stats(daemon, "plain")["connections"]["denied"] == 20)
    lines = [json.loads(x) for x in capfd.readouterr().err.splitlines() if x.startswith("{")]
    denied = [x for x in lines if x.get("event") == "access_denied"]
    assert len(denied) == 1 and denied[0]["suppressed_since_last"] == 0
    assert not up.requests
