"""A raw-bytes HTTP/1.1 client for hostile-input and limit tests (shares no code with gateproxy).

The client writes exactly the bytes it is given and parses responses by hand, so a test can send
what no well-behaved library would (bare LF, obs-fold, conflicting framing) and observe exactly
what came back: the status, the headers, and whether and how the connection was closed.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import trio

from gateproxy.daemon import Daemon


def plain_listener(*, upstream: str = "app", name: str = "plain", **extra: Any) -> dict[str, Any]:
    """A plain-HTTP listener on 127.0.0.1:0 routing everything to ``upstream``."""
    listener: dict[str, Any] = {
        "name": name,
        "bind": "127.0.0.1:0",
        "routes": [{"path_prefix": "/", "upstream": upstream}],
    }
    listener.update(extra)
    return listener


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> bytes | None:
        key = name.lower().encode()
        for n, v in self.headers:
            if n.lower() == key:
                return v
        return None

    @property
    def closes(self) -> bool:
        return (self.header("connection") or b"").lower() == b"close"


class RawClient:
    """One plain TCP connection to a listener; reads are buffered across responses."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.reset = False  # the connection ended with a reset (not a clean EOF)

    @classmethod
    async def connect(cls, daemon: Daemon, name: str = "plain") -> RawClient:
        host, port = daemon.addresses[name]
        return cls(await trio.open_tcp_stream(host, port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        """One read into the buffer; False on EOF or reset."""
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            self.reset = True
            return False
        self.buffer += data
        return bool(data)

    async def read_response(self, *, head: bool = False, max_wait: float = 5.0) -> RawResponse:
        """Read one whole response (Content-Length or chunked); AssertionError if cut short."""
        with trio.fail_after(max_wait):
            while b"\r\n\r\n" not in self.buffer:
                assert await self._fill(), f"closed before a response head: {self.buffer!r}"
            raw_head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            status_line, *lines = raw_head.split(b"\r\n")
            status = int(status_line.split(b" ")[1])
            headers = [(n.strip(), v.strip()) for n, _, v in (x.partition(b":") for x in lines)]
            response = RawResponse(status, headers, b"")
            if head or status < 200 or status in (204, 304):
                return response
            if (response.header("transfer-encoding") or b"").lower() == b"chunked":
                body = await self._read_chunked()
            else:
                body = await self._read_exactly(int(response.header("content-length") or 0))
            return RawResponse(status, headers, body)

    async def _read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            assert await self._fill(), "closed mid-body"
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def _read_chunked(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buffer:
                assert await self._fill(), "closed mid-body"
            size_line, _, self.buffer = self.buffer.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while b"\r\n" not in self.buffer:
                    assert await self._fill(), "closed mid-trailer"
                _, _, self.buffer = self.buffer.partition(b"\r\n")
                return body
            body += await self._read_exactly(size + 2)
            body = body[:-2]

    async def closed_within(self, max_wait: float) -> bool:
        """True if the server closes (EOF or reset) within ``max_wait`` with nothing more sent."""
        with trio.move_on_after(max_wait):
            while await self._fill():
                pass
            return True
        return False

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await trio.aclose_forcefully(self.stream)


async def exchange(daemon: Daemon, data: bytes, *, name: str = "plain") -> tuple[int, bool]:
    """Send ``data`` on a fresh connection: (status of the first response or 0, closed after)."""
    async with await RawClient.connect(daemon, name) as client:
        await client.send(data)
        try:
            response = await client.read_response()
        except AssertionError:
            return 0, True
        return response.status, await client.closed_within(2.0)


def tls_raw_exchange(
    address: tuple[str, int], context: ssl.SSLContext, data: bytes, *, io_timeout: float = 5.0
) -> bytes:
    """Blocking: TLS-connect, send ``data``, read until the server closes or a whole response
    head arrived; the bytes received."""
    with socket.create_connection(address, timeout=io_timeout) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(data)
            received = b""
            while True:
                try:
                    chunk = tls.recv(65536)
                except (ssl.SSLEOFError, ConnectionResetError):
                    return received
                except OSError as exc:
                    if exc.errno == errno.ECONNRESET:
                        return received
                    raise
                if not chunk:
                    return received
                received += chunk
                if b"\r\n\r\n" in received:
                    return received


@dataclass(frozen=True)
class EarlyAnswer:
    """What a client that kept uploading saw of an answer given before its body was read."""

    received: bytes  # every byte read until the connection ended
    ended: str  # "eof" (a clean close), or the exception that ended the read
    write_error: str | None  # the exception that stopped the upload early, if any
    written: int  # body bytes the client managed to write

    def response(self) -> RawResponse | None:
        """The one complete response in ``received`` (Content-Length framed), or None."""
        raw_head, sep, rest = self.received.partition(b"\r\n\r\n")
        if not sep:
            return None
        status_line, *lines = raw_head.split(b"\r\n")
        headers = [(n.strip(), v.strip()) for n, _, v in (x.partition(b":") for x in lines)]
        response = RawResponse(int(status_line.split(b" ")[1]), headers, rest)
        length = response.header("content-length")
        return response if length is not None and len(rest) == int(length) else None


def upload_regardless(
    address: tuple[str, int],
    context: ssl.SSLContext | None,
    head: bytes,
    body: Iterable[bytes],
    *,
    io_timeout: float = 5.0,
) -> EarlyAnswer:
    """Blocking: connect (TLS when ``context``), send ``head``, write every piece of ``body``
    without looking for an answer (as an uploading client does), then read until the server
    closes. A write error ends the upload; reading still follows."""
    with socket.create_connection(address, timeout=io_timeout) as raw:
        conn: socket.socket = raw
        if context is not None:
            conn = context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
        with conn:
            conn.sendall(head)
            written, write_error = 0, None
            try:
                for piece in body:
                    conn.sendall(piece)
                    written += len(piece)
            except OSError as exc:
                write_error = type(exc).__name__
            received = b""
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError as exc:
                    return EarlyAnswer(received, type(exc).__name__, write_error, written)
                if not chunk:
                    return EarlyAnswer(received, "eof", write_error, written)
                received += chunk
