"""net.tls_stream: ServerTLSStream over real loopback TCP, against independent TLS clients
(trio.SSLStream, or a stdlib SSLObject the test drives by hand)."""

from __future__ import annotations

import random
import ssl
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
import trustme

from gateproxy.net.fd_io import CHECKPOINT_EVERY
from gateproxy.net.tls_stream import ServerTLSStream
from tests.conftest import CertPaths
from tests.helpers.sockets import SocketPair, cancel_when_blocked, small_buffers, tcp_pair
from tests.helpers.tls_bio import MALFORMED, BioClient

Client = trio.SSLStream[trio.SocketStream]


@pytest.fixture
async def sockets() -> AsyncIterator[SocketPair]:
    async with tcp_pair() as pair:
        yield pair


@pytest.fixture
def server_ctx(server_cert: CertPaths) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_cert.leaf.configure_cert(ctx)
    return ctx


@pytest.fixture
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def handshake(
    pair: SocketPair, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> tuple[ServerTLSStream, Client]:
    """Both sides' handshakes, concurrently; the client is spec-compliant about close_notify."""
    server = ServerTLSStream(pair[0], server_ctx)
    client = trio.SSLStream(pair[1], client_ctx, server_hostname="localhost")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    return server, client


async def echo(server: ServerTLSStream, client: Client) -> None:
    """One round trip each way (the client also reads the TLS 1.3 tickets queued before it)."""
    await client.send_all(b"ping")
    assert await server.receive_some() == b"ping"
    await server.send_all(b"pong")
    assert await client.receive_some() == b"pong"


# --- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
async def test_handshake_then_echo_both_ways(
    sockets: SocketPair,
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    version: ssl.TLSVersion,
) -> None:
    server_ctx.maximum_version = version
    server, client = await handshake(sockets, server_ctx, client_ctx)
    name = {ssl.TLSVersion.TLSv1_3: "TLSv1.3", ssl.TLSVersion.TLSv1_2: "TLSv1.2"}[version]
    assert server.ssl_object.version() == client.version() == name
    assert not server.ssl_object.session_reused and not client.session_reused
    await echo(server, client)
    await server.aclose()


async def test_large_transfers_arrive_intact_both_ways(
    sockets: SocketPair, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    payload = random.Random(7).randbytes(4 << 20)
    server, client = await handshake(sockets, server_ctx, client_ctx)
    sent = trio.Event()

    async def download() -> None:
        await server.send_all(payload)
        sent.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(download)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()  # the kernel's buffers are full: the server waits to write
        received = bytearray()
        while len(received) < len(payload):
            received += await client.receive_some(16384)
    assert sent.is_set() and received == payload

    uploaded = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, payload)
        while len(uploaded) < len(payload):
            chunk = await server.receive_some()
            assert chunk
            uploaded += chunk
    assert uploaded == payload
    await server.aclose()


async def test_client_close_notify_reads_as_eof(
    sockets: SocketPair, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    server, client = await handshake(sockets, server_ctx, client_ctx)
    await echo(server, client)
    await client.aclose()  # https_compatible=False: close_notify, then close
    assert await server.receive_some() == b""
    assert await server.receive_some() == b""  # EOF stays EOF
    await server.aclose()


async def test_tcp_close_without_close_notify_is_broken(
    sockets: SocketPair, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    server, client = await handshake(sockets, server_ctx, client_ctx)
    await echo(server, client)
    await client.transport_stream.aclose()  # a FIN (nothing left unread), no close_notify
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some()
    await server.aclose()


PROTOCOL_ERRORS = [
    pytest.param(version, name, id=f"{name}-{version.name}")
    for name, (_record, _alert, tls12_too) in MALFORMED.items()
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2)
    if tls12_too or version is ssl.TLSVersion.TLSv1_3
]


@pytest.mark.parametrize(("version", "name"), PROTOCOL_ERRORS)
async def test_a_protocol_error_after_the_handshake_sends_the_fatal_alert(
    sockets: SocketPair,
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    version: ssl.TLSVersion,
    name: str,
) -> None:
    raw, alert, _ = MALFORMED[name]
    client_ctx.maximum_version = version
    server = ServerTLSStream(sockets[0], server_ctx)
    client = BioClient(sockets[1], client_ctx)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.handshake)
    await client.send(b"ping")
    assert await server.receive_some() == b"ping"
    await sockets[1].send_all(raw)  # past the client's record layer, as a broken peer would
    with pytest.raises(trio.BrokenResourceError, match="TLS error"):
        await server.receive_some()
    # The alert left with the error (the server has not closed yet, whatever its caller does
    # next: the request loop closes, a cut response aborts the socket) ...
    outcome = await client.receive_until_close(max_wait=5)
    assert outcome.startswith("alert:") and alert in outcome  # not a bare TCP close
    await server.aclose()  # ... and no close_notify follows it
    assert await sockets[1].receive_some() == b""


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n\r\n", b""], ids=["http", "nothing"])
async def test_failed_handshake_is_broken(
    sockets: SocketPair, server_ctx: ssl.SSLContext, garbage: bytes
) -> None:
    server_sock, client_sock = sockets
    if garbage:
        await client_sock.send_all(garbage)
    await client_sock.aclose()
    server = ServerTLSStream(server_sock, server_ctx)
    with pytest.raises(trio.BrokenResourceError, match="handshake failed"):
        await server.do_handshake()
    await server.aclose()
    assert server_sock.socket.fileno() == -1


async def test_server_aclose_sends_close_notify_then_is_closed(
    sockets: SocketPair, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    server, client = await handshake(sockets, server_ctx, client_ctx)
    await server.aclose()
    assert await client.receive_some() == b""  # clean: a bare FIN would raise BrokenResourceError
    with pytest.raises(trio.ClosedResourceError):
        await server.receive_some()
    with pytest.raises(trio.ClosedResourceError):
        await server.send_all(b"late")
    with trio.testing.assert_checkpoints():
        await server.aclose()  # a no-op, but still a checkpoint
    assert server.transport_stream.socket.fileno() == -1


async def test_close_nowait_sends_close_notify_and_closes_without_a_checkpoint(
    sockets: SocketPair, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    server, client = await handshake(sockets, server_ctx, client_ctx)
    await echo(server, client)
    with trio.testing.assert_no_checkpoints():
        assert server.close_nowait()
    assert server.transport_stream.socket.fileno() == -1
    assert await client.receive_some() == b""  # close_notify, not a bare EOF


async def test_close_nowait_leaves_a_blocked_close_to_aclose(
    sockets: SocketPair, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """A response the kernel did not take yet: close_nowait must not drop it nor close; aclose
    sends the rest and the close_notify after it."""
    server, client = await handshake(sockets, server_ctx, client_ctx)
    await echo(server, client)
    small_buffers(server.transport_stream, client.transport_stream)
    body = b"b" * 600_000
    await cancel_when_blocked(server.send_all, body)
    assert not server.close_nowait()
    assert server.transport_stream.socket.fileno() != -1
    received = bytearray()

    async def read_all() -> None:
        while chunk := await client.receive_some(65536):
            received.extend(chunk)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await server.aclose()
    assert received == body  # every byte, then a clean end (a bare EOF would raise)
    assert server.transport_stream.socket.fileno() == -1


async def test_server_aclose_sends_close_notify_while_the_client_is_still_sending(
    sockets: SocketPair, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """An early answer: records the server never read must not keep its close_notify back (the
    second SSL_shutdown of ``unwrap`` fails on them: APPLICATION_DATA_AFTER_CLOSE_NOTIFY)."""
    server, client = await handshake(sockets, server_ctx, client_ctx)
    await echo(server, client)
    await client.send_all(b"u" * 40000)  # three records of an upload
    assert await server.receive_some(100) == b"u" * 100  # the rest stays unread
    await server.aclose()
    assert await client.receive_some() == b""  # close_notify, not a bare EOF


async def test_send_close_notify_shuts_only_the_tls_write_direction(
    sockets: SocketPair, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    server, client = await handshake(sockets, server_ctx, client_ctx)
    await echo(server, client)
    await server.send_close_notify()
    assert await client.receive_some() == b""  # a clean end of the server's data
    with pytest.raises(trio.ClosedResourceError):
        await server.send_all(b"late")
    with pytest.raises(trio.ClosedResourceError):
        await server.send_close_notify()
    await client.send_all(b"still uploading")
    assert await server.transport_stream.receive_some(65536)  # raw records: the socket is open
    await server.aclose()
    assert server.transport_stream.socket.fileno() == -1


async def test_a_reader_of_buffered_small_records_lets_other_tasks_run(
    sockets: SocketPair, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    server, client = await handshake(sockets, server_ctx, client_ctx)
    records = 2000
    for _ in range(records):  # ~46 KB of ciphertext, all queued before the server reads
        await client.send_all(b"x")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    received = longest = run = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        seen = ticks
        while received < records:
            received += len(await server.receive_some())
            run = run + 1 if ticks == seen else 0  # reads in a row the ticker slept through
            longest, seen = max(longest, run), ticks
        nursery.cancel_scope.cancel()
    assert received == records
    # Trio may run the reader's next slice before the ticker: two slices without a tick.
    assert longest <= 2 * CHECKPOINT_EVERY
    await server.aclose()


async def test_a_waiting_receive_is_cancellable(
    sockets: SocketPair,
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, client = await handshake(sockets, server_ctx, client_ctx)
    with trio.move_on_after(30) as scope:
        await server.receive_some()
    assert scope.cancelled_caught
    await client.send_all(b"after")  # the stream is still usable
    assert await server.receive_some() == b"after"
    await server.aclose()


async def test_tls13_tickets_leave_with_the_handshake_and_resume(
    sockets: SocketPair, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    server = ServerTLSStream(sockets[0], server_ctx)
    client = BioClient(sockets[1], client_ctx)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.handshake)
    # The tickets follow the client's Finished, so only do_handshake's last flush can send them.
    with trio.fail_after(10):
        client.incoming.write(await sockets[1].receive_some())
    with pytest.raises(ssl.SSLWantReadError):
        client.obj.read()  # processes the NewSessionTicket messages; no application data
    session = client.obj.session
    assert client.obj.version() == "TLSv1.3"
    assert session is not None and session.has_ticket
    await server.aclose()

    async with tcp_pair() as pair:
        resumed = ServerTLSStream(pair[0], server_ctx)
        again = BioClient(pair[1], client_ctx, session=session)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(resumed.do_handshake)
            nursery.start_soon(again.handshake)
        assert resumed.ssl_object.session_reused and again.obj.session_reused
        await resumed.aclose()


async def test_receive_some_refuses_a_size_below_one(
    sockets: SocketPair, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    server, _client = await handshake(sockets, server_ctx, client_ctx)
    with pytest.raises(ValueError, match="at least 1, not 0"):
        await server.receive_some(0)
