"""Server-side TLS over a connected socket, with the socket's file descriptor driven directly.

``trio.SSLStream`` is general: it serialises callers with conflict detectors and locks, and every
transport call passes through trio's socket layer, which takes two trips through the scheduler
even when the kernel had the bytes ready. A reverse proxy's client connection has exactly one
reader and one writer, both in the connection's pump, so this stream runs the same
``ssl.SSLObject`` + memory BIOs over :class:`~gateproxy.net.fd_io.FdIO`: ``recv``/``send`` on the
descriptor first, a wait only when the kernel says it would block, a checkpoint every few
operations that did not wait, and cancellation-safe writes (the pump's one deadline may cancel
any wait). After this side has sent something, the peer's answer cannot be there yet: the next
read waits for readiness first instead of trying (and failing) first.

Semantics match ``trio.SSLStream(..., https_compatible=False)``: a peer's close_notify reads as
``b""``, a TCP EOF without it (or any TLS error) raises ``trio.BrokenResourceError``, and
``aclose`` sends close_notify without waiting for the peer's. :meth:`receive_nowait` is the
non-blocking read the pump uses when it waits for the client and the upstream at once.

Errors: when OpenSSL fails a connection (a malformed, oversized or unauthenticated record, an
unexpected message), it has already written its fatal alert into the outgoing memory BIO; nothing
reaches the peer unless we send it. Every error path therefore sends what is pending before it
raises (``_send_pending_now``: without waiting, like OpenSSL's own write to a socket BIO in nginx,
so an error path never blocks on a peer that does not read), and the peer sees the alert instead
of a bare TCP close. The handshake path waits for its alert (it runs under the handshake timeout).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable

import trio

from gateproxy.core.client_hello import NEED_MORE, HelloResult, NotAHello, read_client_hello
from gateproxy.net.fd_io import FdIO

RECORD_READ = 64 * 1024  # ciphertext read per recv (several full TLS records)


class ServerTLSStream(trio.abc.Stream):
    """TLS server side of one accepted connection (``transport_stream`` is the TCP stream)."""

    __slots__ = (
        "_closed",
        "_incoming",
        "_io",
        "_outgoing",
        "_sent",
        "ssl_object",
        "transport_stream",
    )

    def __init__(self, transport_stream: trio.SocketStream, context: ssl.SSLContext) -> None:
        self.transport_stream = transport_stream
        self._io = FdIO(transport_stream.socket.fileno())
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._closed = False
        self._sent = False  # sent since the last read: the next read waits first

    @property
    def fd(self) -> int:
        return self._io.fd

    @property
    def unsent(self) -> bool:
        """A cancelled send left ciphertext behind (``send_all(b"")`` finishes it)."""
        return self._io.unsent

    # --- the TLS operations ----------------------------------------------------------------

    async def do_handshake(
        self, *, on_hello: Callable[[HelloResult], Awaitable[None]] | None = None
    ) -> None:
        """Complete the handshake; raises ``trio.BrokenResourceError`` if the peer fails it.

        ``on_hello`` (the shared session cache): the client's first flight is read into the
        incoming BIO and parsed (``core.client_hello``) before OpenSSL sees any of it, and the
        handshake starts once ``on_hello`` returned."""
        if on_hello is not None:
            await on_hello(await self._read_hello())
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
                self._send_pending_now()  # OpenSSL's fatal alert (see the module docstring)
                raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
            if self._outgoing.pending:
                await self._flush()
            await self._io.maybe_yield()  # also when served from records already buffered
            return data

    def receive_nowait(self, max_bytes: int = RECORD_READ) -> bytes | None:
        """Plaintext that needs no wait (``b""``: close_notify), or None if a read would block."""
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream was closed")
        while True:
            try:
                return self.ssl_object.read(max_bytes)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return b""
            except (ssl.SSLError, ValueError) as exc:
                self._send_pending_now()
                raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
            try:
                data = self._io.read_nowait(RECORD_READ)
            except OSError as exc:
                raise trio.BrokenResourceError(f"connection lost: {exc}") from exc
            if data is None:
                return None
            self._feed(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send all of ``data`` (large writes leave as 16 KiB records in one send)."""
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream was closed")
        if data:
            try:
                self.ssl_object.write(data)
            except (ssl.SSLError, ValueError) as exc:
                self._send_pending_now()
                raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._io.fd)

    async def aclose(self) -> None:
        """Send close_notify (not waiting for the peer's) and close the socket."""
        try:
            if self._closed:  # close_notify was made: send what is left of it (close_nowait)
                await self._flush()
            else:
                await self.send_close_notify()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await self.transport_stream.aclose()

    def close_nowait(self) -> bool:
        """:meth:`aclose` without waiting, if the kernel takes the close_notify at once (the
        common case: a clean close then needs no deadline of its own). False: some of it is
        left, and :meth:`aclose` sends the rest and closes."""
        if not self._closed:
            self._closed = True
            # written, or failed: what OpenSSL wrote goes out either way
            with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError, ValueError):
                self.ssl_object.unwrap()
            try:
                if not self._io.write_nowait(self._outgoing.read()):
                    return False
            except OSError:
                pass  # the peer is gone: nothing more to send
        elif self._io.unsent:
            return False
        self.transport_stream.socket.close()
        return True

    async def send_close_notify(self) -> None:
        """Shut the TLS write direction: send close_notify, not waiting for the peer's. The
        stream is closed for TLS reads and writes; the socket (``transport_stream``) stays open
        (a lingering close reads and drops what the client still sends on it)."""
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream was closed")
        self._closed = True
        try:
            self.ssl_object.unwrap()
        except ssl.SSLWantReadError:
            pass  # close_notify written; the peer's is not awaited
        except (ssl.SSLError, ValueError):
            # Python's unwrap calls SSL_shutdown twice; the second reads the peer's records and
            # fails on application data the peer is still sending (an upload answered early:
            # APPLICATION_DATA_AFTER_CLOSE_NOTIFY), or the connection failed before: what OpenSSL
            # wrote (the close_notify, or the fatal alert of the failure) still goes out.
            self._send_pending_now()
            return
        await self._flush()

    async def _read_hello(self) -> HelloResult:
        """Read until the ClientHello is complete (or is none), all of it left for OpenSSL."""
        seen = b""
        while True:
            try:
                data = await self._io.read(RECORD_READ, wait_first=False)
            except OSError as exc:
                raise trio.BrokenResourceError(f"connection lost: {exc}") from exc
            self._feed(data)
            if not data:
                return NotAHello("the client closed before its hello was complete")
            seen += data
            result = read_client_hello(seen)
            if result is not NEED_MORE:
                return result

    # --- the descriptor --------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    async def _fill(self) -> None:
        """Read ciphertext into the incoming BIO (EOF is written to it as such)."""
        wait_first, self._sent = self._sent, False
        try:
            data = await self._io.read(RECORD_READ, wait_first=wait_first)
        except OSError as exc:
            raise trio.BrokenResourceError(f"connection lost: {exc}") from exc
        self._feed(data)

    async def _flush(self) -> None:
        """Send every pending ciphertext byte (what a cancelled flush left goes first)."""
        pending = self._outgoing.read()
        if not pending and not self._io.unsent:
            return
        try:
            await self._io.write_all(pending)
        except OSError as exc:
            raise trio.BrokenResourceError(f"connection lost: {exc}") from exc
        self._sent = True

    def _send_pending_now(self) -> None:
        """Error paths: send the pending ciphertext (a fatal alert) as far as the kernel takes
        it without waiting; whatever it does not take is dropped, as is any send error."""
        with contextlib.suppress(OSError):
            self._io.write_nowait(self._outgoing.read())

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await self._flush()
