"""A plain-TCP client stream with the interface of ``ServerTLSStream`` (listeners without TLS).

The pump reads and writes a client connection the same way whether it is TLS or not:
``receive_some`` (``b""`` at end of file), ``receive_nowait``, cancellation-safe ``send_all``,
``aclose``, ``fd``, ``unsent`` and ``transport_stream``. Here they go straight to the
descriptor (``net.fd_io``); OS errors become ``trio.BrokenResourceError`` as for TLS.
"""

from __future__ import annotations

import trio

from gateproxy.net.fd_io import READ_SIZE, FdIO


class PlainStream(trio.abc.Stream):
    """One accepted plain-TCP connection, driven on its descriptor."""

    __slots__ = ("_closed", "_io", "_sent", "transport_stream")

    def __init__(self, transport_stream: trio.SocketStream) -> None:
        self.transport_stream = transport_stream
        self._io = FdIO(transport_stream.socket.fileno())
        self._closed = False
        self._sent = False

    @property
    def fd(self) -> int:
        return self._io.fd

    @property
    def unsent(self) -> bool:
        return self._io.unsent

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        wait_first, self._sent = self._sent, False
        try:
            return await self._io.read(max_bytes or READ_SIZE, wait_first=wait_first)
        except OSError as exc:
            raise trio.BrokenResourceError(f"connection lost: {exc}") from exc

    def receive_nowait(self, max_bytes: int = READ_SIZE) -> bytes | None:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        try:
            return self._io.read_nowait(max_bytes)
        except OSError as exc:
            raise trio.BrokenResourceError(f"connection lost: {exc}") from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        try:
            await self._io.write_all(data)
        except OSError as exc:
            raise trio.BrokenResourceError(f"connection lost: {exc}") from exc
        self._sent = True

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._io.fd)

    async def aclose(self) -> None:
        self._closed = True
        await self.transport_stream.aclose()

    def close_nowait(self) -> bool:
        """:meth:`aclose` without its checkpoint (nothing here waits): always True."""
        self._closed = True
        self.transport_stream.socket.close()
        return True
