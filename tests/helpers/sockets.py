"""Real TCP connections on 127.0.0.1 for unit tests of the net/ shell (which drives fds), and
ports held by "another program" for the tests of what happens when an address is taken."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import trio

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
