"""net.upstream: one upstream connection's byte moving over real loopback TCP. A send that
the kernel takes never waits; one that must wait is bounded by ``send_timeout``; reads take
what is there, or wait first when nothing can have arrived yet; failures are UpstreamErrors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from gateproxy.core.h1_client import ClientConnection
from gateproxy.errors import UpstreamConnectError, UpstreamTimeout
from gateproxy.net.upstream import UpstreamConnection
from tests.helpers.sockets import (
    readable,
    receive_exactly,
    reset,
    send_while_reading,
    small_buffers,
    tcp_pair,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
BIG = b"u" * (512 * 1024)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[UpstreamConnection, trio.SocketStream]]:
    """(our connection, the server's end of it)."""
    async with tcp_pair() as (server, client):
        small_buffers(client, server)
        yield UpstreamConnection(client, server="127.0.0.1:9"), server


async def test_a_send_the_kernel_takes_does_not_wait(
    pair: tuple[UpstreamConnection, trio.SocketStream],
) -> None:
    conn, server = pair
    assert isinstance(conn.http, ClientConnection) and conn.http.server == "127.0.0.1:9"
    with trio.testing.assert_no_checkpoints():
        await conn.send(REQUEST, send_timeout=5)
    assert await receive_exactly(server, len(REQUEST)) == REQUEST


async def test_a_send_that_must_wait_finishes_when_the_server_reads(
    pair: tuple[UpstreamConnection, trio.SocketStream],
) -> None:
    conn, server = pair

    async def send(data: bytes) -> None:
        await conn.send(data, send_timeout=5)

    assert await send_while_reading(send, BIG, server, len(BIG)) == BIG


async def test_a_send_the_server_does_not_take_times_out(
    pair: tuple[UpstreamConnection, trio.SocketStream], autojump_clock: trio.testing.MockClock
) -> None:
    conn, _server = pair
    start = trio.current_time()
    with pytest.raises(UpstreamTimeout, match="send timed out after 3s") as caught:
        await conn.send(BIG, send_timeout=3)
    assert trio.current_time() - start == pytest.approx(3)
    assert caught.value.server == "127.0.0.1:9" and caught.value.status == 504


async def test_a_send_to_a_server_that_reset_is_a_connect_error(
    pair: tuple[UpstreamConnection, trio.SocketStream],
) -> None:
    conn, server = pair
    await reset(server)
    await readable(conn.fd)
    with pytest.raises(UpstreamConnectError, match="connection lost while sending"):
        await conn.send(REQUEST, send_timeout=5)
    with pytest.raises(UpstreamConnectError, match="connection lost while sending"):
        await conn.send_all(REQUEST)


async def test_receive_nowait_takes_what_the_server_already_sent(
    pair: tuple[UpstreamConnection, trio.SocketStream],
) -> None:
    conn, server = pair
    assert conn.receive_nowait() is None
    await server.send_all(RESPONSE)
    await server.aclose()
    await readable(conn.fd)
    assert (conn.receive_nowait(), conn.receive_nowait()) == (RESPONSE, b"")


async def test_a_reset_is_a_connect_error_on_every_read(
    pair: tuple[UpstreamConnection, trio.SocketStream],
) -> None:
    conn, server = pair
    await conn.send(REQUEST, send_timeout=5)  # (unread by the server: closing resets)
    await reset(server)
    await readable(conn.fd)
    with pytest.raises(UpstreamConnectError, match="connection reset"):
        conn.receive_nowait()


async def test_a_waiting_read_raises_a_reset_too(
    pair: tuple[UpstreamConnection, trio.SocketStream],
) -> None:
    conn, server = pair
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            with pytest.raises(UpstreamConnectError, match="connection reset"):
                await conn.receive(wait_first=True)

        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        await reset(server)


async def test_wait_first_still_returns_an_answer_that_was_already_there(
    pair: tuple[UpstreamConnection, trio.SocketStream],
) -> None:
    conn, server = pair
    await conn.send(REQUEST, send_timeout=5)
    await server.send_all(RESPONSE)
    await readable(conn.fd)
    with trio.testing.assert_checkpoints(), trio.fail_after(5):
        assert await conn.receive(wait_first=True) == RESPONSE


async def test_a_read_waits_for_the_answer_and_the_callers_deadline_bounds_it(
    pair: tuple[UpstreamConnection, trio.SocketStream], autojump_clock: trio.testing.MockClock
) -> None:
    conn, server = pair
    with trio.move_on_after(7) as scope:
        await conn.receive(wait_first=True)
    assert scope.cancelled_caught
    await server.send_all(RESPONSE)
    assert await conn.receive() == RESPONSE  # still usable after the cancelled wait


async def test_the_stream_interface_moves_the_same_bytes(
    pair: tuple[UpstreamConnection, trio.SocketStream],
) -> None:
    conn, server = pair
    await conn.send_all(REQUEST)
    assert await receive_exactly(server, len(REQUEST)) == REQUEST
    await server.send_all(RESPONSE)
    assert await conn.receive_some(4096) == RESPONSE


async def test_close_is_immediate(pair: tuple[UpstreamConnection, trio.SocketStream]) -> None:
    conn, server = pair
    with trio.testing.assert_no_checkpoints():
        conn.close()
    assert conn.stream.socket.fileno() == -1
    assert await server.receive_some(10) == b""  # the server sees the connection end
