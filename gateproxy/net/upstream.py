"""One connection to an upstream server: the socket, its descriptor I/O and its HTTP state.

The protocol state is a core ``ClientConnection`` (``http``), driven by whoever uses the
connection: the connection machine for forwarded requests, ``net.http_client`` for pass-through
health answers. This object only moves bytes: straight on the descriptor (``net.fd_io``), with
``send_timeout`` applied only when a write would block, and it closes synchronously (no
checkpoint: closing a socket never waits).
"""

from __future__ import annotations

import trio

from gateproxy.core.h1_client import ClientConnection
from gateproxy.errors import UpstreamConnectError, UpstreamTimeout
from gateproxy.net.fd_io import READ_SIZE, FdIO


class UpstreamConnection:
    """One keep-alive connection to one upstream server."""

    __slots__ = ("_io", "http", "server", "stream")

    def __init__(self, stream: trio.SocketStream, *, server: str) -> None:
        self.stream = stream
        self.server = server
        self._io = FdIO(stream.socket.fileno())
        self.http = ClientConnection(server=server)

    @property
    def fd(self) -> int:
        return self._io.fd

    async def send(self, data: bytes, *, send_timeout: float) -> None:
        """Send ``data``; waiting for the server to take it is bounded by ``send_timeout``."""
        try:
            if self._io.write_nowait(data):
                return
            with trio.move_on_after(send_timeout) as scope:
                await self._io.write_all(b"")
        except OSError as exc:
            raise UpstreamConnectError(
                self.server, f"connection lost while sending: {exc}"
            ) from exc
        if scope.cancelled_caught:
            raise UpstreamTimeout(self.server, f"send timed out after {send_timeout:g}s")

    def receive_nowait(self) -> bytes | None:
        """What the server already sent (``b""``: it closed), or None."""
        try:
            return self._io.read_nowait(READ_SIZE)
        except OSError as exc:
            raise UpstreamConnectError(self.server, f"connection reset: {exc}") from exc

    async def receive(self, *, wait_first: bool = False) -> bytes:
        """One read; ``wait_first`` when nothing can have arrived yet (a request just left)."""
        try:
            return await self._io.read(READ_SIZE, wait_first=wait_first)
        except OSError as exc:
            raise UpstreamConnectError(self.server, f"connection reset: {exc}") from exc

    # The trio stream interface, for net.http_client.
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._io.write_all(data)
        except OSError as exc:
            raise UpstreamConnectError(
                self.server, f"connection lost while sending: {exc}"
            ) from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.receive()

    def close(self) -> None:
        """Close the socket now (the connection is never used again)."""
        self.stream.socket.close()
