"""Every per-connection limit, enforced against a real proxy: what the client sees, what the
upstream sees (nothing, where the limit is decided before forwarding), and the stats counter.

Limits are small and timeouts short (100-300 ms) so each test takes well under a second; waits
poll with deadlines rather than sleeping for a fixed time.
"""

from __future__ import annotations

import functools
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trustme

from gateproxy.daemon import Daemon
from tests.conftest import CertPaths
from tests.helpers.clients import client_context
from tests.helpers.proxy import poll, proxy_config, running_proxy, tls_listener
from tests.helpers.rawhttp import RawClient, plain_listener
from tests.helpers.upstreams import RecordingUpstream

GET = b"GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n"
OTHER_CLIENT = "127.0.0.2"  # loopback, but another client address for per-client limits


def listener_stats(daemon: Daemon, name: str = "plain") -> dict[str, Any]:
    return daemon.stats()["listeners"][name]  # type: ignore[index, no-any-return]


def limit_count(daemon: Daemon, limit: str, name: str = "plain") -> int:
    return int(listener_stats(daemon, name)["limits"].get(limit, 0))


@asynccontextmanager
async def proxy(
    up: RecordingUpstream, *, listener: dict[str, Any] | None = None, **limits: object
) -> AsyncIterator[Daemon]:
    spec = listener if listener is not None else plain_listener(limits=limits)
    async with running_proxy(proxy_config([spec], {"app": {"servers": [up.address]}})) as daemon:
        yield daemon


async def connect(daemon: Daemon, *, source: str | None = None) -> RawClient:
    host, port = daemon.addresses["plain"]
    return RawClient(await trio.open_tcp_stream(host, port, local_address=source))


# --- max_requests_per_connection ----------------------------------------------------------------


async def test_max_requests_per_connection_closes_after_the_nth_response() -> None:
    async with RecordingUpstream() as up:
        async with proxy(up, max_requests_per_connection=3) as daemon:
            async with await connect(daemon) as client:
                responses = []
                for _ in range(3):
                    await client.send(GET)
                    responses.append(await client.read_response())
                assert await client.closed_within(1.0)
            count = limit_count(daemon, "max_requests_per_connection")
    assert [r.status for r in responses] == [200, 200, 200]
    assert [r.closes for r in responses] == [False, False, True]
    assert count == 1
    assert len(up.requests) == 3


async def test_pipelined_request_beyond_the_limit_is_never_forwarded() -> None:
    async with RecordingUpstream() as up:
        async with proxy(up, max_requests_per_connection=2) as daemon:
            async with await connect(daemon) as client:
                await client.send(GET * 3)  # pipelined: the third is already in the proxy
                first = await client.read_response()
                second = await client.read_response()
                assert await client.closed_within(1.0)
                assert client.buffer == b""  # no third answer
    assert (first.closes, second.closes) == (False, True)
    assert len(up.requests) == 2


# --- max_connection_age -------------------------------------------------------------------------


async def test_max_connection_age_closes_at_the_next_response() -> None:
    async with RecordingUpstream() as up:
        async with proxy(up, max_connection_age="150ms", keepalive_timeout="5s") as daemon:
            async with await connect(daemon) as client:
                await client.send(GET)
                young = await client.read_response()
                await trio.sleep(0.2)  # the age limit passes while the connection is idle
                await client.send(GET)
                old = await client.read_response()
                assert await client.closed_within(1.0)
            count = limit_count(daemon, "max_connection_age")
    assert (young.status, young.closes) == (200, False)
    assert (old.status, old.closes) == (200, True)
    assert count == 1


async def test_max_connection_age_never_cuts_a_request_in_flight() -> None:
    hold = trio.Event()
    async with RecordingUpstream(hold=hold, body=b"x" * 5000) as up:
        async with proxy(up, max_connection_age="100ms", keepalive_timeout="5s") as daemon:
            async with await connect(daemon) as client:
                await client.send(GET)
                await up.wait_for(lambda: len(up.requests) == 1)
                await trio.sleep(0.15)  # the connection is now older than its limit
                hold.set()
                in_flight = await client.read_response()
                if not in_flight.closes:  # decided at request start: the next response closes
                    await client.send(GET)
                    following = await client.read_response()
                    assert following.closes and following.status == 200
                assert await client.closed_within(1.0)
    assert in_flight.status == 200
    assert in_flight.body == b"x" * 5000


# --- keepalive_timeout --------------------------------------------------------------------------


async def test_keepalive_timeout_closes_an_idle_connection() -> None:
    async with RecordingUpstream() as up:
        async with proxy(up, keepalive_timeout="200ms") as daemon:
            async with await connect(daemon) as client:
                await client.send(GET)
                response = await client.read_response()
                start = trio.current_time()
                assert await client.closed_within(2.0)
                idle = trio.current_time() - start
            count = limit_count(daemon, "keepalive_timeout")
    assert response.status == 200 and not response.closes
    assert 0.15 < idle < 1.0
    assert count == 1


def _idle_until_closed(address: tuple[str, int], context: ssl.SSLContext) -> tuple[int, float]:
    """Blocking: one request, then wait; (status, seconds idle before a *clean* TLS close)."""
    import time

    with socket.create_connection(address, timeout=5) as raw:
        # suppress_ragged_eofs=False: a close without close_notify raises SSLEOFError
        with context.wrap_socket(
            raw, server_hostname="localhost", suppress_ragged_eofs=False
        ) as tls:
            tls.sendall(GET)
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"hello from upstream\n"):
                data += tls.recv(65536)
            start = time.monotonic()
            rest = tls.recv(65536)  # b"" only after the peer's close_notify
            assert rest == b"", rest
            return int(data.split(b" ")[1]), time.monotonic() - start


async def test_keepalive_timeout_over_tls_sends_close_notify(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    async with RecordingUpstream() as up:
        listener = tls_listener(
            cert=server_cert.cert, key=server_cert.key, limits={"keepalive_timeout": "200ms"}
        )
        async with proxy(up, listener=listener) as daemon:
            run = functools.partial(
                _idle_until_closed, daemon.addresses["public"], client_context(ca)
            )
            status, idle = await trio.to_thread.run_sync(run, abandon_on_cancel=True)
            count = limit_count(daemon, "keepalive_timeout", "public")
    assert status == 200
    assert 0.15 < idle < 1.5
    assert count == 1


# --- request_header_timeout ---------------------------------------------------------------------


async def test_request_header_timeout_partial_head_gets_408_and_close() -> None:
    async with RecordingUpstream() as up:
        async with proxy(up, request_header_timeout="200ms") as daemon:
            async with await connect(daemon) as client:
                start = trio.current_time()
                await client.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n")  # no end of head
                response = await client.read_response()
                elapsed = trio.current_time() - start
                assert await client.closed_within(1.0)
            count = limit_count(daemon, "request_header_timeout")
    assert (response.status, response.closes) == (408, True)
    assert 0.15 < elapsed < 1.0
    assert count == 1
    assert up.connections == 0


async def _slowloris(client: RawClient) -> None:
    for i in range(40):  # one header line per 50 ms: each read is "on time"
        await trio.sleep(0.05)
        try:
            await client.send(b"X-%d: v\r\n" % i)
        except trio.BrokenResourceError:
            return


async def test_request_header_timeout_stops_a_slowloris() -> None:
    async with RecordingUpstream() as up:
        async with proxy(up, request_header_timeout="300ms") as daemon:
            async with await connect(daemon) as client:
                start = trio.current_time()
                await client.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_slowloris, client)
                    response = await client.read_response()  # while the head still trickles
                    elapsed = trio.current_time() - start
                    nursery.cancel_scope.cancel()
    assert response.status == 408
    assert elapsed < 1.0  # the whole head is bounded, not each read
    assert up.connections == 0


async def test_silent_client_is_closed_quietly_at_request_header_timeout() -> None:
    async with RecordingUpstream() as up:
        async with proxy(up, request_header_timeout="150ms") as daemon:
            async with await connect(daemon) as client:
                assert await client.closed_within(1.0)
                assert client.buffer == b""  # nothing was asked, nothing is answered
            count = limit_count(daemon, "request_header_timeout")
    assert count == 1


def _handshake_then_wait(address: tuple[str, int], context: ssl.SSLContext) -> bytes:
    with socket.create_connection(address, timeout=5) as raw:
        with context.wrap_socket(
            raw, server_hostname="localhost", suppress_ragged_eofs=False
        ) as tls:
            try:
                return tls.recv(65536)
            except ssl.SSLEOFError:
                return b"<ragged EOF>"


async def test_silent_tls_client_is_closed_at_request_header_timeout(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    async with RecordingUpstream() as up:
        listener = tls_listener(
            cert=server_cert.cert, key=server_cert.key, limits={"request_header_timeout": "150ms"}
        )
        async with proxy(up, listener=listener) as daemon:
            run = functools.partial(
                _handshake_then_wait, daemon.addresses["public"], client_context(ca)
            )
            start = trio.current_time()
            received = await trio.to_thread.run_sync(run, abandon_on_cancel=True)
            elapsed = trio.current_time() - start
            stats = listener_stats(daemon, "public")
    assert received in (b"", b"<ragged EOF>")  # closed, no response (close_notify: see above)
    assert elapsed < 1.5
    assert stats["limits"]["request_header_timeout"] == 1
    assert up.connections == 0


# --- body_timeout -------------------------------------------------------------------------------


async def test_body_timeout_gets_408_and_abandons_the_upstream_request() -> None:
    async with RecordingUpstream() as up:
        async with proxy(up, body_timeout="200ms") as daemon:
            async with await connect(daemon) as client:
                await client.send(
                    b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n"
                    + b"x" * 10
                )
                response = await client.read_response()
                assert await client.closed_within(1.0)
            await up.wait_for(lambda: up.connections == 1 and up.open_connections == 0)
            stats = daemon.stats()
    assert (response.status, response.closes) == (408, True)
    assert up.requests == []  # the upstream never saw a complete request
    assert stats["listeners"]["plain"]["limits"]["body_timeout"] == 1  # type: ignore[index]
    server = stats["upstreams"]["app"]["servers"][0]  # type: ignore[index]
    assert server["idle"] == 0 and server["active"] == 0


async def test_body_timeout_abandons_the_upstream_connection() -> None:
    """The half that works today: the stalled upload's upstream connection is closed."""
    async with RecordingUpstream() as up:
        async with proxy(up, body_timeout="200ms") as daemon:
            async with await connect(daemon) as client:
                await client.send(
                    b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n"
                    + b"x" * 10
                )
                await up.wait_for(lambda: up.connections == 1 and up.open_connections == 0)
                assert await client.closed_within(1.0)
            stats = daemon.stats()
    assert up.requests == []
    server = stats["upstreams"]["app"]["servers"][0]  # type: ignore[index]
    assert server["idle"] == 0 and server["active"] == 0


# --- max_body_bytes -----------------------------------------------------------------------------


async def test_max_body_bytes_by_content_length_is_413_before_forwarding() -> None:
    async with RecordingUpstream() as up:
        async with proxy(up, max_body_bytes=1000) as daemon:
            async with await connect(daemon) as client:
                await client.send(
                    b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1001\r\n"
                    b"Expect: 100-continue\r\n\r\n"
                )
                response = await client.read_response()
                assert await client.closed_within(1.0)
            count = limit_count(daemon, "max_body_bytes")
    assert (response.status, response.closes) == (413, True)  # not 100 Continue first
    assert count == 1
    assert up.connections == 0


async def test_max_body_bytes_at_the_limit_is_forwarded() -> None:
    async with RecordingUpstream() as up:
        async with proxy(up, max_body_bytes=1000) as daemon:
            async with await connect(daemon) as client:
                await client.send(
                    b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\n"
                    + b"y" * 1000
                )
                response = await client.read_response()
    assert response.status == 200
    assert up.requests[0].body == b"y" * 1000


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def test_chunked_body_crossing_max_body_bytes_is_413_and_aborts_upstream() -> None:
    async with RecordingUpstream() as up:
        async with proxy(up, max_body_bytes=1000) as daemon:
            async with await connect(daemon) as client:
                await client.send(
                    b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + _chunk(b"a" * 600)
                )
                await up.wait_for(lambda: up.connections == 1)  # the upload is under way
                await client.send(_chunk(b"b" * 600))  # crosses the limit mid-stream
                response = await client.read_response()
                assert await client.closed_within(1.0)
            await up.wait_for(lambda: up.open_connections == 0)
            stats = daemon.stats()
    assert (response.status, response.closes) == (413, True)
    assert up.requests == []  # the upstream request was aborted, never completed
    assert stats["listeners"]["plain"]["limits"]["max_body_bytes"] == 1  # type: ignore[index]
    server = stats["upstreams"]["app"]["servers"][0]  # type: ignore[index]
    assert server["idle"] == 0  # its connection was discarded, not pooled


async def test_chunked_body_crossing_max_body_bytes_discards_the_upstream_connection() -> None:
    """The half that works today: the aborted upload's upstream connection is not reused."""
    async with RecordingUpstream() as up:
        async with proxy(up, max_body_bytes=1000) as daemon:
            async with await connect(daemon) as client:
                await client.send(
                    b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + _chunk(b"a" * 600)
                )
                await up.wait_for(lambda: up.connections == 1)
                await client.send(_chunk(b"b" * 600) + _chunk(b"c" * 10) + b"0\r\n\r\n")
                await up.wait_for(lambda: up.open_connections == 0)
            async with await connect(daemon) as client:
                await client.send(GET)
                after = await client.read_response()
    assert up.requests[0].target == "/x"  # the aborted upload never completed upstream
    assert len(up.requests) == 1
    assert up.connections == 2  # the next request needed a fresh upstream connection
    assert after.status == 200


# --- admission: max_connections and max_connections_per_client ----------------------------------


async def _hold_open(daemon: Daemon, count: int, *, name: str = "plain") -> list[RawClient]:
    clients = [await RawClient.connect(daemon, name) for _ in range(count)]
    await poll(lambda: listener_stats(daemon, name)["connections"]["open"] == count)
    return clients


async def test_max_connections_closes_the_extra_connection_at_once() -> None:
    async with RecordingUpstream() as up:
        async with proxy(up, max_connections=2, request_header_timeout="5s") as daemon:
            held = await _hold_open(daemon, 2)
            async with await connect(daemon, source=OTHER_CLIENT) as extra:
                assert await extra.closed_within(1.0)
                assert extra.buffer == b""
            for client in held:
                await client.send(GET)
                assert (await client.read_response()).status == 200
                await client.aclose()
            stats = listener_stats(daemon)
    assert stats["limits"]["max_connections"] == 1
    assert stats["limits"]["max_connections_per_client"] == 0
    assert stats["connections"]["rejected"] == 1


async def test_max_connections_per_client_spares_other_clients() -> None:
    async with RecordingUpstream() as up:
        async with proxy(up, max_connections_per_client=2, request_header_timeout="5s") as daemon:
            held = await _hold_open(daemon, 2)
            async with await connect(daemon) as extra:
                assert await extra.closed_within(1.0)
            async with await connect(daemon, source=OTHER_CLIENT) as other:
                await other.send(GET)
                other_response = await other.read_response()
            for client in held:
                await client.aclose()
            stats = listener_stats(daemon)
    assert other_response.status == 200
    assert stats["limits"]["max_connections_per_client"] == 1
    assert stats["limits"]["max_connections"] == 0
    assert stats["connections"]["rejected"] == 1


def _tls_handshake_error(address: tuple[str, int], context: ssl.SSLContext) -> str:
    """Blocking: attempt a handshake; the exception's class name ('' if it succeeded)."""
    try:
        with socket.create_connection(address, timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost"):
                return ""
    except (ssl.SSLError, ConnectionError) as exc:
        return type(exc).__name__


@pytest.mark.parametrize("limit", ["max_connections", "max_connections_per_client"])
async def test_admission_refuses_before_the_tls_handshake(
    ca: trustme.CA, server_cert: CertPaths, limit: str
) -> None:
    async with RecordingUpstream() as up:
        listener = tls_listener(
            cert=server_cert.cert,
            key=server_cert.key,
            limits={limit: 1, "request_header_timeout": "5s"},
        )
        async with proxy(up, listener=listener) as daemon:
            host, port = daemon.addresses["public"]
            holder = await trio.open_tcp_stream(host, port)  # admitted; handshake never starts
            await poll(lambda: listener_stats(daemon, "public")["connections"]["open"] == 1)
            run = functools.partial(_tls_handshake_error, (host, port), client_context(ca))
            error = await trio.to_thread.run_sync(run, abandon_on_cancel=True)
            stats = listener_stats(daemon, "public")
            await holder.aclose()
    # EOF or reset during the handshake: no ServerHello, no alert, no TLS work spent
    assert error in ("SSLEOFError", "ConnectionResetError", "SSLZeroReturnError"), error
    assert stats["limits"][limit] == 1
    assert stats["connections"]["rejected"] == 1
    assert stats["tls"]["handshakes"]["failed"] == 0
    assert stats["tls"]["handshakes"]["full"] == 0


# --- probe_limits ------------------------------------------------------------------------------


async def test_probe_limits_apply_to_probe_clients_only() -> None:
    listener = plain_listener(
        limits={"max_requests_per_connection": 2},
        probe_clients=["127.0.0.1/32"],
        probe_limits={"max_requests_per_connection": 0},  # 0 = unlimited keep-alive for probes
    )
    async with RecordingUpstream() as up:
        async with proxy(up, listener=listener) as daemon:
            async with await connect(daemon) as probe:
                probe_responses = []
                for _ in range(6):
                    await probe.send(GET)
                    probe_responses.append(await probe.read_response())
            async with await connect(daemon, source=OTHER_CLIENT) as client:
                client_responses = []
                for _ in range(2):
                    await client.send(GET)
                    client_responses.append(await client.read_response())
                assert await client.closed_within(1.0)
    assert [r.status for r in probe_responses] == [200] * 6
    assert not any(r.closes for r in probe_responses)
    assert [r.closes for r in client_responses] == [False, True]
