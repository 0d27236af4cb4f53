"""Upstream failures map as an nginx user expects; broken connections are never reused."""

from __future__ import annotations

import http.client
import socket
import ssl

import pytest
import trio
import trustme

from tests.conftest import CertPaths
from tests.helpers.clients import client_context, https_request, split_address
from tests.helpers.proxy import address, proxy_config, running_proxy, tls_listener
from tests.helpers.tls_bio import BioClient
from tests.helpers.upstreams import (
    MisbehavingUpstream,
    MisbehaviourMode,
    RecordingUpstream,
    StreamingUpstream,
    refused_address,
)

FAST = {"read_timeout": "300ms", "connect_timeout": "300ms", "send_timeout": "1s"}


def _config(server_cert: CertPaths, servers: list[str], **upstream: object) -> dict[str, object]:
    return proxy_config(
        [tls_listener(cert=server_cert.cert, key=server_cert.key)],
        {"app": {"servers": servers, **FAST, **upstream}},
    )


@pytest.mark.parametrize(
    ("mode", "status"),
    [
        ("garbage", 502),
        ("dup_content_length", 502),
        ("close_before_response", 502),
        ("reset", 502),
        ("huge_headers", 502),
        ("switching_protocols", 502),  # a 101 to a request that asked for no upgrade
        ("stall_headers", 504),
    ],
)
async def test_bad_upstream_answers_map_to_502_or_504(
    ca: trustme.CA, server_cert: CertPaths, mode: MisbehaviourMode, status: int
) -> None:
    async with MisbehavingUpstream(mode) as up:
        async with running_proxy(_config(server_cert, [up.address])) as daemon:
            resp = await https_request(address(daemon), ca=ca, path="/x")
            stats = daemon.stats()
    assert resp.status == status
    assert up.requests == 1  # one attempt: a non-idempotent retry would be a second request
    failures = stats["upstreams"]["app"]["failures"]  # type: ignore[index]
    assert sum(failures.values()) == 1


async def test_refused_connection_is_502_and_the_next_server_is_tried(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    dead = refused_address()
    async with running_proxy(_config(server_cert, [dead])) as daemon:
        only_dead = await https_request(address(daemon), ca=ca)
    async with RecordingUpstream() as good:
        async with running_proxy(_config(server_cert, [dead, good.address])) as daemon:
            statuses = [(await https_request(address(daemon), ca=ca)).status for _ in range(4)]
    assert only_dead.status == 502
    assert statuses == [200, 200, 200, 200]
    assert len(good.requests) == 4


async def test_connect_timeout_is_504(ca: trustme.CA, server_cert: CertPaths) -> None:
    # A listener whose accept queue is full and that never accepts: SYNs are dropped.
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(0)
        fillers = [_start_connect(black_hole.getsockname()) for _ in range(3)]
        try:
            target = f"127.0.0.1:{black_hole.getsockname()[1]}"
            async with running_proxy(_config(server_cert, [target])) as daemon:
                with trio.fail_after(5):
                    resp = await https_request(address(daemon), ca=ca)
        finally:
            for sock in fillers:
                sock.close()
    assert resp.status == 504


def _start_connect(addr: tuple[str, int]) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    sock.connect_ex(addr)  # in progress, never completed: it only fills the accept queue
    return sock


@pytest.mark.parametrize("mode", ["close_mid_body", "stall_body"])
async def test_upstream_dying_mid_body_aborts_the_client_and_is_not_reused(
    ca: trustme.CA, server_cert: CertPaths, mode: MisbehaviourMode
) -> None:
    async with MisbehavingUpstream(mode) as up:
        async with running_proxy(_config(server_cert, [up.address])) as daemon:
            with pytest.raises((http.client.IncompleteRead, ssl.SSLError, ConnectionError)):
                await https_request(address(daemon), ca=ca)
            with trio.fail_after(5):
                await up.wait_for(lambda: up.open_connections == 0)
            stats = daemon.stats()
    servers = stats["upstreams"]["app"]["servers"]  # type: ignore[index]
    assert servers[0]["idle"] == 0 and servers[0]["active"] == 0
    if mode == "stall_body":
        assert up.closed_by_peer == 1  # the proxy closed the stalled connection


async def test_a_response_cut_by_the_upstream_is_cut_for_the_client_too(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    """A truncated body must never look complete: no close_notify (and no alert) after it."""
    async with MisbehavingUpstream("close_mid_body") as up:
        async with running_proxy(_config(server_cert, [up.address])) as daemon:
            sock = await trio.open_tcp_stream(*split_address(address(daemon)))
            async with sock:
                client = BioClient(sock, client_context(ca))
                await client.handshake()
                await client.send(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert (await client.read_response()).startswith(b"HTTP/1.1 200 ")
                assert await client.receive_until_close() == "bare close"


def _send_partial_upload(addr: str, ca: trustme.CA) -> None:
    host, port = split_address(addr)
    raw = socket.create_connection((host, port), timeout=5)
    tls = client_context(ca).wrap_socket(raw, server_hostname="localhost")
    tls.sendall(
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000
    )
    tls.close()


async def test_client_leaving_mid_request_abandons_the_upstream_request(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    async with StreamingUpstream() as up:
        async with running_proxy(_config(server_cert, [up.address])) as daemon:
            await trio.to_thread.run_sync(_send_partial_upload, address(daemon), ca)
            with trio.fail_after(5):
                await up.wait_for(lambda: up.connections == 1 and up.open_connections == 0)
            stats = daemon.stats()
    assert up.uploads == []
    servers = stats["upstreams"]["app"]["servers"]  # type: ignore[index]
    assert servers[0]["idle"] == 0


async def test_stale_keepalive_connection_is_retried_for_a_get(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    async with RecordingUpstream() as up:
        async with running_proxy(_config(server_cert, [up.address])) as daemon:
            first = await https_request(address(daemon), ca=ca)
            # the upstream restarts: its kept-alive connection dies while idle in our pool
            await up.drop_connections()
            second = await https_request(address(daemon), ca=ca)
    assert (first.status, second.status) == (200, 200)
    assert up.connections == 2
