"""Server-side TLS over a connected socket, with the socket's file descriptor driven directly.

``trio.SSLStream`` is general: it serialises callers with conflict detectors and locks, and every
transport call passes through trio's socket layer, which takes two trips through the scheduler
even when the kernel had the bytes ready. A reverse proxy's client connection has exactly one
reader and one writer, both in the connection's task, so this stream runs the same
``ssl.SSLObject`` + memory BIOs and calls ``recv``/``send`` on the descriptor first; it waits
(``trio.lowlevel.wait_readable``/``wait_writable``) only when the kernel says it would block.

So that a connection whose peer always has data ready cannot hold the event loop (or miss its
timeout), every ``CHECKPOINT_EVERY``-th operation that did not wait passes through the scheduler.
After this side has sent something, the peer's answer cannot be there yet: the next read waits
for readiness first instead of trying (and failing) first.

Semantics match ``trio.SSLStream(..., https_compatible=False)``: a peer's close_notify reads as
``b""``, a TCP EOF without it (or any TLS error) raises ``trio.BrokenResourceError``, and
``aclose`` sends close_notify without waiting for the peer's.
"""

from __future__ import annotations

import contextlib
import os
import ssl

import trio

RECORD_READ = 64 * 1024  # ciphertext read per recv (several full TLS records)
CHECKPOINT_EVERY = 16


class ServerTLSStream(trio.abc.Stream):
    """TLS server side of one accepted connection (``transport_stream`` is the TCP stream)."""

    __slots__ = (
        "_closed",
        "_fd",
        "_incoming",
        "_outgoing",
        "_sent",
        "_unyielded",
        "ssl_object",
        "transport_stream",
    )

    def __init__(self, transport_stream: trio.SocketStream, context: ssl.SSLContext) -> None:
        self.transport_stream = transport_stream
        self._fd = transport_stream.socket.fileno()
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._closed = False
        self._sent = False  # sent since the last read: the next read waits first
        self._unyielded = 0

    # --- the TLS operations ----------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Complete the handshake; raises ``trio.BrokenResourceError`` if the peer fails it."""
        while True:
            try:
                self.ssl_object.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
            except (ssl.SSLError, ValueError) as exc:
                await self._flush_quietly()  # the alert, if OpenSSL wrote one
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
        await self._flush()  # the server's last flight (and TLS 1.3 tickets)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Plaintext, at most ``max_bytes``; ``b""`` once the peer sent close_notify."""
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream was closed")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, not {max_bytes}")
        size = max_bytes or RECORD_READ
        while True:
            incoming = self._incoming
            if not incoming.pending and not incoming.eof and not self.ssl_object.pending():
                await self._fill()  # nothing to decrypt: skip OpenSSL's SSLWantReadError
            try:
                data = self.ssl_object.read(size)
            except ssl.SSLWantReadError:
                if self._outgoing.pending:
                    await self._flush()  # e.g. a key update answer
                await self._fill()
                continue
            except ssl.SSLZeroReturnError:
                return b""
            except (ssl.SSLError, ValueError) as exc:
                raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
            if self._outgoing.pending:
                await self._flush()
            await self._maybe_yield()  # also when served from records already buffered
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send all of ``data`` (large writes leave as 16 KiB records in one send)."""
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream was closed")
        try:
            self.ssl_object.write(data)
        except (ssl.SSLError, ValueError) as exc:
            raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._fd)

    async def aclose(self) -> None:
        """Send close_notify (not waiting for the peer's) and close the socket."""
        try:
            await self.send_close_notify()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await self.transport_stream.aclose()

    async def send_close_notify(self) -> None:
        """Shut the TLS write direction: send close_notify, not waiting for the peer's. The
        stream is closed for TLS reads and writes; the socket (``transport_stream``) stays open."""
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream was closed")
        self._closed = True
        try:
            self.ssl_object.unwrap()
        except ssl.SSLWantReadError:
            pass  # close_notify written; the peer's is not awaited
        except (ssl.SSLError, ValueError):
            # Python's unwrap calls SSL_shutdown twice; the second reads the peer's records and
            # fails on application data the peer is still sending (an upload we answered
            # early: APPLICATION_DATA_AFTER_CLOSE_NOTIFY). The close_notify is written already.
            pass
        await self._flush()

    # --- the descriptor --------------------------------------------------------------------

    async def _fill(self) -> None:
        """Read ciphertext into the incoming BIO (EOF is written to it as such)."""
        if self._sent:
            self._sent = False
            self._unyielded = 0
            await trio.lowlevel.wait_readable(self._fd)
        while True:
            try:
                data = os.read(self._fd, RECORD_READ)
            except BlockingIOError:
                self._unyielded = 0
                await trio.lowlevel.wait_readable(self._fd)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"connection lost: {exc}") from exc
            break
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    async def _flush(self) -> None:
        """Send every pending ciphertext byte."""
        pending = self._outgoing.read()
        if not pending:
            return
        view = memoryview(pending)
        while view:
            try:
                sent = os.write(self._fd, view)
            except BlockingIOError:
                self._unyielded = 0
                await trio.lowlevel.wait_writable(self._fd)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"connection lost: {exc}") from exc
            view = view[sent:]
        self._sent = True
        await self._maybe_yield()

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await self._flush()

    async def _maybe_yield(self) -> None:
        self._unyielded += 1
        if self._unyielded >= CHECKPOINT_EVERY:
            self._unyielded = 0
            await trio.lowlevel.checkpoint()
