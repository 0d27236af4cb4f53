"""Real TCP connections on 127.0.0.1 for unit tests of the net/ shell (which drives fds), and
ports held by "another program" for the tests of what happens when an address is taken."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import trio
import trio.testing

SocketPair = tuple[trio.SocketStream, trio.SocketStream]


@contextlib.asynccontextmanager
async def tcp_pair() -> AsyncIterator[SocketPair]:
    """(server end, client end) of one TCP connection on 127.0.0.1; both closed on exit."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listener:
        port = listener.socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
    async with server, client:
        yield server, client


@contextlib.contextmanager
def busy_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port on ``host`` that another program holds: a plain socket listening there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind((host, 0))
        other.listen(1)
        yield int(other.getsockname()[1])


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for the tests that need a fixed port, not port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as finder:
        finder.bind((host, 0))
        return int(finder.getsockname()[1])


def small_buffers(sender: trio.SocketStream, receiver: trio.SocketStream) -> None:
    """Shrink the kernel buffers between the two ends, so that a write of a few hundred KiB
    blocks until the receiver reads (a receive window much smaller than 64 KiB would make
    loopback TCP stall on delayed ACKs)."""
    sender.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    receiver.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)


async def receive_exactly(stream: trio.SocketStream, size: int) -> bytes:
    """``size`` bytes from ``stream`` (fewer only if it ends first), within 5 s."""
    data = bytearray()
    with trio.fail_after(5):
        while len(data) < size:
            chunk = await stream.receive_some(size - len(data))
            if not chunk:
                break
            data += chunk
    return bytes(data)


async def reset(stream: trio.SocketStream) -> None:
    """Close ``stream`` with a TCP reset (SO_LINGER 0) instead of a FIN."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


async def readable(fd: int) -> None:
    """Wait (at most 5 s) until something (bytes, an end of file, a reset) is waiting on
    ``fd``, so that a read which must not wait finds it."""
    with trio.fail_after(5):
        await trio.lowlevel.wait_readable(fd)


async def cancel_when_blocked(send: Callable[[bytes], Awaitable[object]], data: bytes) -> None:
    """Start ``send(data)``, and cancel it once it waits for the kernel to take more."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, data)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    assert scope.cancelled_caught


async def send_while_reading(
    send: Callable[[bytes], Awaitable[object]], data: bytes, peer: trio.SocketStream, size: int
) -> bytes:
    """``send(data)`` while the peer reads ``size`` bytes; what the peer read."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, data)
        return await receive_exactly(peer, size)
