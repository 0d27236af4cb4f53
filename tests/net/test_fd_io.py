"""net.fd_io: reads and writes straight on a socket's descriptor, over real loopback TCP.

Writes survive cancellation (what a cancelled write left goes out first, in order), reads
take what the kernel has without a trip through the scheduler, and every CHECKPOINT_EVERY-th
operation that did not wait still lets other tasks run."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from gateproxy.net.fd_io import CHECKPOINT_EVERY, FdIO
from tests.helpers.sockets import (
    SocketPair,
    cancel_when_blocked,
    readable,
    receive_exactly,
    reset,
    send_while_reading,
    small_buffers,
    tcp_pair,
)

BIG = bytes(range(256)) * 2048  # 512 KiB: far more than the shrunk kernel buffers hold


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FdIO, trio.SocketStream]]:
    """(FdIO on our end, the peer's end)."""
    sockets: SocketPair
    async with tcp_pair() as sockets:
        peer, ours = sockets
        small_buffers(ours, peer)
        yield FdIO(ours.socket.fileno()), peer


async def test_write_nowait_takes_what_the_kernel_takes_and_write_all_sends_the_rest(
    pair: tuple[FdIO, trio.SocketStream],
) -> None:
    io, peer = pair
    assert io.write_nowait(b"small") is True and not io.unsent
    assert await receive_exactly(peer, 5) == b"small"
    data = bytearray(BIG)
    assert io.write_nowait(data) is False and io.unsent
    data[:] = b"x" * len(data)  # the caller may reuse its buffer: the rest was copied
    assert io.write_nowait(b"tail") is False  # queued behind the rest, in order
    assert await send_while_reading(io.write_all, b"", peer, len(BIG) + 4) == BIG + b"tail"
    assert not io.unsent


async def test_a_write_cancelled_while_blocked_keeps_its_rest_for_the_next_write(
    pair: tuple[FdIO, trio.SocketStream],
) -> None:
    io, peer = pair
    await cancel_when_blocked(io.write_all, BIG)
    assert io.unsent
    assert await send_while_reading(io.write_all, b"next", peer, len(BIG) + 4) == BIG + b"next"
    assert not io.unsent


async def test_write_all_of_nothing_finishes_nothing(pair: tuple[FdIO, trio.SocketStream]) -> None:
    io, peer = pair
    with trio.testing.assert_no_checkpoints():
        await io.write_all(b"")
    await io.write_all(memoryview(b"ab"))
    await io.write_all(bytearray(b"cd"))
    assert await receive_exactly(peer, 4) == b"abcd"


async def test_a_write_to_a_reset_connection_raises_and_drops_the_rest(
    pair: tuple[FdIO, trio.SocketStream],
) -> None:
    io, peer = pair
    assert io.write_nowait(BIG) is False
    await reset(peer)
    with pytest.raises(OSError), trio.fail_after(5):
        await io.write_all(b"")
    assert not io.unsent


async def test_read_nowait_takes_what_is_there_and_never_waits(
    pair: tuple[FdIO, trio.SocketStream],
) -> None:
    io, peer = pair
    assert io.read_nowait() is None
    await peer.send_all(b"hello")
    await readable(io.fd)
    assert io.read_nowait(3) == b"hel" and io.read_nowait() == b"lo"
    assert io.read_nowait() is None
    await peer.send_eof()
    await readable(io.fd)
    assert io.read_nowait() == b""


async def test_a_read_waits_only_when_nothing_is_there(
    pair: tuple[FdIO, trio.SocketStream],
) -> None:
    io, peer = pair
    got: list[bytes] = []

    async def reader() -> None:
        got.append(await io.read())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # nothing there: it waits
        await peer.send_all(b"ping")
    assert got == [b"ping"]
    await peer.send_all(b"pong")
    await readable(io.fd)
    with trio.testing.assert_no_checkpoints():  # there already: no trip through the scheduler
        assert await io.read() == b"pong"


async def test_read_wait_first_waits_even_when_the_bytes_are_there(
    pair: tuple[FdIO, trio.SocketStream],
) -> None:
    io, peer = pair
    await peer.send_all(b"answer")
    await readable(io.fd)
    with trio.testing.assert_checkpoints():
        assert await io.read(wait_first=True) == b"answer"


async def test_a_wait_is_cancellable_and_leaves_the_descriptor_usable(
    pair: tuple[FdIO, trio.SocketStream], autojump_clock: trio.testing.MockClock
) -> None:
    io, peer = pair
    with trio.move_on_after(30) as scope:
        await io.read(wait_first=True)
    assert scope.cancelled_caught
    await peer.send_all(b"late")
    assert await io.read() == b"late"


async def test_every_checkpoint_every_th_operation_without_a_wait_checkpoints(
    pair: tuple[FdIO, trio.SocketStream],
) -> None:
    io, peer = pair
    await peer.send_all(b"r" * (2 * CHECKPOINT_EVERY))
    await readable(io.fd)
    await io.read(1, wait_first=True)  # a wait starts the count again: this read is the 1st
    for _ in range(CHECKPOINT_EVERY - 3):
        with trio.testing.assert_no_checkpoints():
            assert await io.read(1) == b"r"
    with trio.testing.assert_no_checkpoints():
        await io.write_all(b"w")  # writes count too: the (CHECKPOINT_EVERY - 1)-th
    with trio.testing.assert_checkpoints():
        assert await io.read(1) == b"r"
    with trio.testing.assert_no_checkpoints():
        await io.write_all(b"w")  # ... and the count starts again
    assert await receive_exactly(peer, 2) == b"ww"
