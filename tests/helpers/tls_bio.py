"""A stdlib TLS client on memory BIOs over a trio socket, driven by the test itself.

The test decides what leaves in which write: the client's Finished and a request in one flight,
or a hand-made raw record (malformed, oversized, unauthenticated, an unexpected ChangeCipherSpec)
written straight to the socket after the handshake, as an outside TLS test battery does. What
the server answers is decrypted by the same client, so a fatal alert is told apart from a bare
TCP close, and ``record_order`` shows whether session tickets came before the response.
"""

from __future__ import annotations

import os
import ssl
import struct

import trio

CHANGE_CIPHER_SPEC, HANDSHAKE, APPLICATION_DATA = 20, 22, 23


def record(content_type: int, body: bytes) -> bytes:
    """One TLS record as it goes on the wire."""
    return struct.pack(">BHH", content_type, 0x0303, len(body)) + body


# Raw records that no server may accept once the handshake is over: name -> (the record, the
# alert OpenSSL answers it with, as in the client's ``SSLError.reason``; also valid in TLS 1.2).
MALFORMED: dict[str, tuple[bytes, str, bool]] = {
    "unknown-content-type": (record(99, b"hello"), "UNEXPECTED_MESSAGE", False),
    "change-cipher-spec": (record(CHANGE_CIPHER_SPEC, b"\x01"), "UNEXPECTED_MESSAGE", False),
    "oversized": (record(APPLICATION_DATA, bytes(2**14 + 2048 + 1)), "RECORD_OVERFLOW", True),
    "bad-tag": (record(APPLICATION_DATA, os.urandom(40)), "BAD_RECORD_MAC", True),
}


def record_order(ctx: ssl.SSLContext) -> list[str]:
    """Start logging, in order, what a client context reads after the handshake: ``"ticket"``
    (a NewSessionTicket), ``"data"`` (a TLS 1.3 application data record), ``"alert"``. Through
    CPython's ``_msg_callback`` debugging hook, the only way the stdlib shows records."""
    seen: list[str] = []

    def callback(
        _conn: object, direction: str, _version: object, content: int, msg: int, data: bytes
    ) -> None:
        if direction != "read":
            return
        if content == HANDSHAKE and msg == ssl._TLSMessageType.NEWSESSION_TICKET:
            seen.append("ticket")
        elif content == ssl._TLSContentType.INNER_CONTENT_TYPE and data == bytes([23]):
            seen.append("data")
        elif content == ssl._TLSContentType.ALERT:
            seen.append("alert")

    setattr(ctx, "_msg_callback", callback)  # noqa: B010  (not in typeshed)
    return seen


class BioClient:
    """A stdlib client SSLObject on memory BIOs, fed from a trio socket by the test itself."""

    def __init__(
        self, sock: trio.SocketStream, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
    ) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(
            self.incoming, self.outgoing, server_hostname="localhost", session=session
        )

    async def handshake(self, *, hold_last_flight: bool = False) -> None:
        """Handshake; ``hold_last_flight`` keeps the client's Finished in the outgoing BIO, so
        it leaves with the next ``send`` in one write (a request "right after its Finished")."""
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if self.outgoing.pending:
                    await self.sock.send_all(self.outgoing.read())
                self.incoming.write(await self.sock.receive_some())
        if not hold_last_flight:
            await self.sock.send_all(self.outgoing.read())

    async def send(self, data: bytes) -> None:
        """Encrypt ``data`` and send it (after anything still held)."""
        self.obj.write(data)
        await self.sock.send_all(self.outgoing.read())

    async def receive_until_close(self, *, max_wait: float = 10.0) -> str:
        """Read and decrypt until the server closes: the plaintext's fate as one word, with the
        alert's name: ``"alert:BAD_RECORD_MAC"``, ``"close_notify"`` or ``"bare close"``."""
        with trio.fail_after(max_wait):
            while True:
                try:
                    while self.obj.read(65536):
                        pass
                    return "close_notify"
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:
                    return "close_notify"
                except ssl.SSLEOFError:
                    return "bare close"
                except ssl.SSLError as exc:
                    return f"alert:{exc.reason}" if "ALERT" in str(exc.reason) else repr(exc)
                try:
                    data = await self.sock.receive_some(65536)
                except trio.BrokenResourceError:  # a reset after the last bytes
                    data = b""
                if data:
                    self.incoming.write(data)
                else:
                    self.incoming.write_eof()

    async def read_response(self, *, max_wait: float = 10.0) -> bytes:
        """Plaintext until a whole HTTP response head has arrived (plus what came with it)."""
        received = b""
        with trio.fail_after(max_wait):
            while b"\r\n\r\n" not in received:
                try:
                    received += self.obj.read(65536)
                except ssl.SSLWantReadError:
                    self.incoming.write(await self.sock.receive_some(65536))
        return received
