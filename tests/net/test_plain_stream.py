"""net.plain_stream: a plain-TCP client connection with ServerTLSStream's interface, over real
loopback TCP: reads wait first only after a send, sends survive cancellation, OS errors are
BrokenResourceError and a closed stream says so."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from gateproxy.net.plain_stream import PlainStream
from tests.helpers.sockets import (
    cancel_when_blocked,
    readable,
    receive_exactly,
    reset,
    send_while_reading,
    small_buffers,
    tcp_pair,
)

BIG = b"p" * (512 * 1024)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[PlainStream, trio.SocketStream]]:
    """(our end as a PlainStream, the client's end)."""
    async with tcp_pair() as (ours, client):
        small_buffers(ours, client)
        yield PlainStream(ours), client


async def test_bytes_go_both_ways_and_an_end_of_file_reads_empty(
    pair: tuple[PlainStream, trio.SocketStream],
) -> None:
    stream, client = pair
    assert stream.fd == stream.transport_stream.socket.fileno()
    await client.send_all(b"GET")
    assert await stream.receive_some() == b"GET"
    await stream.send_all(b"200")
    assert await receive_exactly(client, 3) == b"200"
    await client.send_eof()
    assert await stream.receive_some(10) == b""


async def test_receive_nowait_never_waits(pair: tuple[PlainStream, trio.SocketStream]) -> None:
    stream, client = pair
    assert stream.receive_nowait() is None
    await client.send_all(b"abc")
    await readable(stream.fd)
    assert stream.receive_nowait(2) == b"ab" and stream.receive_nowait() == b"c"


async def test_a_read_after_a_send_waits_first_and_one_before_does_not(
    pair: tuple[PlainStream, trio.SocketStream],
) -> None:
    stream, client = pair
    await client.send_all(b"one")
    await readable(stream.fd)
    with trio.testing.assert_no_checkpoints():  # bytes there, nothing sent: read at once
        assert await stream.receive_some() == b"one"
    await stream.send_all(b"answer")
    await client.send_all(b"two")
    await readable(stream.fd)
    with trio.testing.assert_checkpoints():  # after a send the reply cannot be there yet
        assert await stream.receive_some() == b"two"


async def test_a_cancelled_send_leaves_its_rest_for_the_next_one(
    pair: tuple[PlainStream, trio.SocketStream],
) -> None:
    stream, client = pair
    await cancel_when_blocked(stream.send_all, BIG)
    assert stream.unsent
    sent = await send_while_reading(stream.send_all, b"end", client, len(BIG) + 3)
    assert sent == BIG + b"end" and not stream.unsent


async def test_wait_send_all_might_not_block_returns_when_there_is_room(
    pair: tuple[PlainStream, trio.SocketStream],
) -> None:
    stream, client = pair
    with trio.fail_after(5):
        await stream.wait_send_all_might_not_block()  # room at once
    written = 0
    with contextlib.suppress(BlockingIOError):
        while True:  # until the kernel is full (for now: loopback may still move some)
            written += os.write(stream.fd, BIG)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.wait_send_all_might_not_block)
            assert await receive_exactly(client, written) == b"p" * written  # room again


async def reset_and_wait(stream: PlainStream, client: trio.SocketStream) -> None:
    await stream.send_all(b"unread")  # (unread by the client: closing resets)
    await reset(client)
    await readable(stream.fd)


async def test_a_reset_is_a_broken_resource_error_for_a_read(
    pair: tuple[PlainStream, trio.SocketStream],
) -> None:
    stream, client = pair
    await reset_and_wait(stream, client)
    with pytest.raises(trio.BrokenResourceError, match="connection lost"):
        await stream.receive_some()
    with pytest.raises(trio.BrokenResourceError, match="connection lost"):
        await stream.send_all(b"more")  # (the reset was read: now a broken pipe)


async def test_a_reset_is_a_broken_resource_error_for_a_read_that_does_not_wait(
    pair: tuple[PlainStream, trio.SocketStream],
) -> None:
    stream, client = pair
    await reset_and_wait(stream, client)
    with pytest.raises(trio.BrokenResourceError, match="connection lost"):
        stream.receive_nowait()


async def test_a_reset_is_a_broken_resource_error_for_a_send(
    pair: tuple[PlainStream, trio.SocketStream],
) -> None:
    stream, client = pair
    await reset_and_wait(stream, client)
    with pytest.raises(trio.BrokenResourceError, match="connection lost"):
        await stream.send_all(b"more")


async def test_a_closed_stream_refuses_everything(
    pair: tuple[PlainStream, trio.SocketStream],
) -> None:
    stream, client = pair
    await stream.aclose()
    assert stream.transport_stream.socket.fileno() == -1
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some()
    with pytest.raises(trio.ClosedResourceError):
        stream.receive_nowait()
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"x")
    assert await client.receive_some(10) == b""
