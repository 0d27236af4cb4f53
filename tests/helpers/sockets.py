"""Real TCP connections on 127.0.0.1 for unit tests of the net/ shell (which drives fds)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

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
