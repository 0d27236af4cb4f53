"""PROXY protocol v1/v2 on a listener, end to end: a raw client sends the header and then a real
TLS handshake and request; the upstream sees the header's address in X-Forwarded-For, and so do
the access log, probe_clients and max_connections_per_client. Bad headers are closed and counted.
"""

from __future__ import annotations

import ipaddress
import json
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trustme

from gateproxy.core.proxy_protocol import V2_SIGNATURE
from gateproxy.daemon import Daemon
from tests.conftest import CertPaths
from tests.helpers.clients import client_context
from tests.helpers.proxy import poll, proxy_config, running_proxy, tls_listener
from tests.helpers.rawhttp import RawClient, plain_listener
from tests.helpers.upstreams import RecordingUpstream

GET = b"GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n"
LOOPBACK_TRUSTED = {"trusted": ["127.0.0.0/8"], "timeout": "300ms"}


def v1(source: str, *, family: str = "TCP4", dest: str = "127.0.0.1") -> bytes:
    return f"PROXY {family} {source} {dest} 40000 443\r\n".encode()


def v2(source: str, *, command: int = 0x1) -> bytes:
    ip = ipaddress.ip_address(source)
    if ip.version == 4:
        body = struct.pack("!4s4sHH", ip.packed, bytes([127, 0, 0, 1]), 40000, 443)
        family = 0x11
    else:
        body = struct.pack("!16s16sHH", ip.packed, bytes(15) + b"\x01", 40000, 443)
        family = 0x21
    body += b"\x04\x00\x03abc"  # a TLV (PP2_TYPE_NOOP), skipped
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def proxy_stats(daemon: Daemon, name: str) -> dict[str, Any]:
    return daemon.stats()["listeners"][name]["proxy_protocol"]  # type: ignore[index, no-any-return]


def rejected(daemon: Daemon, reason: str, name: str = "plain") -> int:
    return int(proxy_stats(daemon, name)["rejected"][reason])


@asynccontextmanager
async def plain_proxy(up: RecordingUpstream, **extra: Any) -> AsyncIterator[Daemon]:
    extra.setdefault("proxy_protocol", LOOPBACK_TRUSTED)
    config = proxy_config([plain_listener(**extra)], {"app": {"servers": [up.address]}})
    async with running_proxy(config) as daemon:
        yield daemon


async def connect(daemon: Daemon, header: bytes, name: str = "plain") -> RawClient:
    client = await RawClient.connect(daemon, name)
    if header:
        await client.send(header)
    return client


async def tls_get(
    daemon: Daemon,
    ca: trustme.CA,
    header: bytes,
    *,
    split: bool = False,
    tls_version: str | None = None,
) -> bytes:
    """Header, then a real TLS handshake and a request; the response head and body."""
    host, port = daemon.addresses["public"]
    tcp = await trio.open_tcp_stream(host, port)
    if split:  # the header in pieces, as separate segments
        for i in range(0, len(header), 7):
            await tcp.send_all(header[i : i + 7])
            await trio.lowlevel.checkpoint()
    else:
        await tcp.send_all(header)
    context = client_context(ca, tls_version=tls_version)
    tls = trio.SSLStream(tcp, context, server_hostname="localhost")
    with trio.fail_after(5):
        await tls.send_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := await tls.receive_some(65536):
            data += chunk
    await tls.aclose()
    return data


async def test_tls_listener_takes_the_client_address_from_v1_and_v2_headers(
    tmp_path: Path, ca: trustme.CA, server_cert: CertPaths
) -> None:
    log = tmp_path / "access.log"
    async with RecordingUpstream() as up:
        listener = tls_listener(
            cert=server_cert.cert, key=server_cert.key, proxy_protocol={"trusted": ["127.0.0.1"]}
        )
        config = proxy_config(
            [listener], {"app": {"servers": [up.address]}}, access_log={"path": str(log)}
        )
        async with running_proxy(config) as daemon:
            answers = [
                await tls_get(daemon, ca, v1("203.0.113.7")),
                await tls_get(daemon, ca, v1("2001:db8::7", family="TCP6", dest="::1")),
                await tls_get(daemon, ca, v2("198.51.100.9"), split=True),
                await tls_get(daemon, ca, v2("2001:db8::9")),
                await tls_get(daemon, ca, v2("203.0.113.1", command=0x0)),  # LOCAL: the peer
                await tls_get(daemon, ca, b"PROXY UNKNOWN\r\n"),
            ]
            stats = proxy_stats(daemon, "public")
            handshakes = daemon.stats()["listeners"]["public"]["tls"]["handshakes"]  # type: ignore[index]
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers), answers
    forwarded = [r.header("x-forwarded-for") for r in up.requests]
    expected = ["203.0.113.7", "2001:db8::7", "198.51.100.9", "2001:db8::9"]
    assert forwarded == [*expected, "127.0.0.1", "127.0.0.1"]
    logged = [json.loads(line)["client"] for line in log.read_text().splitlines()]
    assert logged == forwarded
    assert stats["accepted"] == 6 and stats["local"] == 2
    assert sum(stats["rejected"].values()) == 0
    assert handshakes["full"] == 6 and handshakes["failed"] == 0


async def test_session_cache_budget_is_per_proxy_address(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    """``max_per_client`` of the session cache counts the header's address: three full
    handshakes from one client keep two sessions, a second client gets its own budget."""
    tls = {
        "max_version": "1.2",
        "session_cache": {"mode": "lru", "max_per_client": 2},
        "tickets": {"enabled": False},
    }
    listener = tls_listener(
        cert=server_cert.cert,
        key=server_cert.key,
        tls=tls,
        proxy_protocol={"trusted": ["127.0.0.1"]},
    )
    entries = []
    async with RecordingUpstream() as up:
        async with running_proxy(
            proxy_config([listener], {"app": {"servers": [up.address]}})
        ) as daemon:
            for source in ("203.0.113.7",) * 3 + ("203.0.113.8",) * 2:
                answer = await tls_get(daemon, ca, v1(source), tls_version="TLSv1.2")
                assert answer.startswith(b"HTTP/1.1 200")
                tls_tree = daemon.stats()["listeners"]["public"]["tls"]  # type: ignore[index]
                entries.append(tls_tree["session_cache"]["entries"])
    assert entries == [1, 2, 2, 3, 4]


async def test_probe_clients_match_the_proxy_address() -> None:
    async with RecordingUpstream() as up:
        async with plain_proxy(
            up,
            probe_clients=["203.0.113.0/24"],
            probe_limits={"max_requests_per_connection": 1},
        ) as daemon:
            async with await connect(daemon, v1("203.0.113.7")) as probe:
                await probe.send(GET)
                probe_answer = await probe.read_response()
            async with await connect(daemon, v1("198.51.100.1")) as user:
                await user.send(GET)
                user_answer = await user.read_response()
    assert probe_answer.status == user_answer.status == 200
    assert probe_answer.closes  # probe_limits: one request per connection
    assert not user_answer.closes


async def test_max_connections_per_client_counts_the_proxy_address() -> None:
    async with RecordingUpstream() as up:
        async with plain_proxy(up, limits={"max_connections_per_client": 1}) as daemon:
            async with await connect(daemon, v2("203.0.113.7")) as first:
                await first.send(GET)
                assert (await first.read_response()).status == 200
                async with await connect(daemon, v1("203.0.113.7")) as second:
                    assert await second.closed_within(2.0)
                async with await connect(daemon, v1("203.0.113.8")) as other:
                    await other.send(GET)
                    assert (await other.read_response()).status == 200
            limits = daemon.stats()["listeners"]["plain"]["limits"]  # type: ignore[index]
    assert limits["max_connections_per_client"] == 1


BAD = [
    (b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 443\r\n", "invalid"),
    (b"PROXY TCP4 " + b"9" * 200 + b"\r\n", "invalid"),  # oversized: no CRLF within 107 bytes
    (V2_SIGNATURE + b"\x21\x11\x00\x04abcd", "invalid"),  # v2 too short for its addresses
    (GET, "missing"),  # a trusted source without a header
]


async def test_bad_headers_and_missing_ones_are_closed_and_counted() -> None:
    async with RecordingUpstream() as up:
        async with plain_proxy(up) as daemon:
            for header, _reason in BAD:
                async with await connect(daemon, header) as client:
                    assert await client.closed_within(2.0), header
            counts = {reason: rejected(daemon, reason) for reason in ("invalid", "missing")}
    assert counts == {"invalid": 3, "missing": 1}
    assert up.requests == []


async def test_a_slow_header_times_out() -> None:
    async with RecordingUpstream() as up:
        async with plain_proxy(up) as daemon:  # timeout 300ms
            async with await connect(daemon, b"PROXY TCP4 203.0") as client:
                assert await client.closed_within(2.0)
            await poll(lambda: rejected(daemon, "timeout") == 1)
    assert up.requests == []


async def test_untrusted_source_with_a_header_is_closed_and_without_one_is_served() -> None:
    async with RecordingUpstream() as up:
        async with plain_proxy(up, proxy_protocol={"trusted": ["10.0.0.0/8"]}) as daemon:
            for header in (v1("203.0.113.7"), v2("203.0.113.7")):
                async with await connect(daemon, header + GET) as client:
                    assert await client.closed_within(2.0)
            async with await connect(daemon, GET) as client:
                answer = await client.read_response()
            untrusted = rejected(daemon, "untrusted")
    assert answer.status == 200
    assert untrusted == 2
    assert [r.header("x-forwarded-for") for r in up.requests] == ["127.0.0.1"]


async def test_header_and_request_in_one_segment() -> None:
    """The bytes after the header arrive with it: the stream still reads them."""
    async with RecordingUpstream() as up:
        async with plain_proxy(up) as daemon:
            async with await connect(daemon, v1("203.0.113.7") + GET + GET) as client:
                first = await client.read_response()
                second = await client.read_response()
    assert first.status == second.status == 200
    assert [r.header("x-forwarded-for") for r in up.requests] == ["203.0.113.7"] * 2


async def test_trusted_forwarded_names_the_client_in_the_access_log(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with RecordingUpstream() as up:
        config = proxy_config(
            [plain_listener(trusted_forwarded=["127.0.0.0/8"])],
            {"app": {"servers": [up.address]}},
            access_log={"path": str(log)},
        )
        async with running_proxy(config) as daemon:
            async with await connect(daemon, b"") as client:
                await client.send(
                    b"GET /x HTTP/1.1\r\nHost: app.test\r\n"
                    b"X-Forwarded-For: 203.0.113.7, 127.0.0.9\r\n\r\n"
                )
                assert (await client.read_response()).status == 200
    assert json.loads(log.read_text())["client"] == "203.0.113.7"
    assert up.requests[0].header("x-forwarded-for") == "203.0.113.7, 127.0.0.9, 127.0.0.1"
