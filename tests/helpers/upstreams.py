"""Real upstream servers for integration tests, on 127.0.0.1 with a free port.

Every server is an async context manager that starts its accept loop in a nursery of its own and
cancels it on exit; each connection runs in its own task. Inside the block, ``.address`` is
``"127.0.0.1:PORT"`` and the server records what it saw::

    async with RecordingUpstream(body=b"hi") as up:
        ...  # point the proxy at up.address
        await up.wait_for(lambda: len(up.requests) == 2)
        assert up.requests[0].header("x-forwarded-for") == "127.0.0.1"

Common attributes: ``connections`` (accepted so far), ``open_connections``, ``closed_connections``,
``recorded`` (every request as a RecordedRequest; streaming servers leave ``body`` empty),
``received_at`` (the trio time each recorded request arrived),
``errors`` (connection-level failures swallowed: client resets, protocol errors) and
``wait_for(predicate, timeout=5.0)``, which wakes on every change instead of sleeping.
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
import socket
import struct
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

import h11
import trio

CHUNK_SIZE = 64 * 1024
HeaderPairs = Sequence[tuple[bytes | str, bytes | str]]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as an upstream received it. Header names in ``headers`` are lowercased."""

    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    raw_headers: list[tuple[bytes, bytes]]  # names with the casing sent on the wire
    body: bytes
    connection_id: int
    http_version: str

    def header_values(self, name: str) -> list[str]:
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for n, v in self.headers if n == key]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        values = self.header_values(name)
        return values[0] if values else None


@dataclass(frozen=True)
class Response:
    """What an upstream answers. Content-Length is added unless given (or status forbids it)."""

    status: int = 200
    headers: HeaderPairs = ()
    body: bytes = b"hello from upstream\n"


class _Upstream:
    """Listener, nursery, per-connection bookkeeping; subclasses implement ``_serve``."""

    def __init__(self) -> None:
        self.address = ""
        self.port = 0
        self.connections = 0
        self.open_connections = 0
        self.closed_connections = 0
        self.recorded: list[RecordedRequest] = []
        self.received_at: list[float] = []
        self.errors: list[Exception] = []
        self._changed = trio.Event()
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._nursery: trio.Nursery | None = None
        self._streams: set[trio.SocketStream] = set()

    async def drop_connections(self) -> None:
        """Close every open connection (an upstream restart as its idle clients see it)."""
        for stream in list(self._streams):
            await trio.aclose_forcefully(stream)
        await self.wait_for(lambda: self.open_connections == 0)

    async def __aenter__(self) -> Self:
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        serve = functools.partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1")
        listeners = await self._nursery.start(serve)
        self.port = listeners[0].socket.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._nursery is not None and self._nursery_cm is not None
        self._nursery.cancel_scope.cancel()
        try:
            return await self._nursery_cm.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # Give the body's own exception back unwrapped, so pytest.raises around the block works.
            if exc is not None and group.exceptions == (exc,):
                raise exc from None
            raise

    def notify(self) -> None:
        """Wake every ``wait_for``; call after changing recorded state."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool], *, max_wait: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, re-checking on every change.

        Raises trio.TooSlowError after ``max_wait`` seconds.
        """
        with trio.fail_after(max_wait):
            while not predicate():
                await self._changed.wait()

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.open_connections += 1
        connection_id = self.connections
        self._streams.add(stream)
        self.notify()
        try:
            async with stream:
                await self._serve(stream, connection_id)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError) as exc:
            self.errors.append(exc)
        finally:
            self._streams.discard(stream)
            self.open_connections -= 1
            self.closed_connections += 1
            self.notify()

    async def _serve(self, stream: trio.SocketStream, connection_id: int) -> None:
        raise NotImplementedError

    def _record(self, request: h11.Request, body: bytes, connection_id: int) -> RecordedRequest:
        recorded = RecordedRequest(
            method=request.method.decode("ascii"),
            target=request.target.decode("ascii"),
            headers=list(request.headers),
            raw_headers=list(request.headers.raw_items()),
            body=body,
            connection_id=connection_id,
            http_version=request.http_version.decode("ascii"),
        )
        self.recorded.append(recorded)
        self.received_at.append(trio.current_time())
        self.notify()
        return recorded


async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> h11.Event:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(CHUNK_SIZE))
            continue
        assert not isinstance(event, type), event  # PAUSED: we never read past a message
        return event


def _encode(conn: h11.Connection, event: h11.Event) -> bytes:
    data = conn.send(event)
    assert data is not None
    return data


async def _send_100_if_expected(stream: trio.SocketStream, conn: h11.Connection) -> None:
    if conn.they_are_waiting_for_100_continue:
        await stream.send_all(_encode(conn, h11.InformationalResponse(status_code=100, headers=[])))


async def _read_request(
    stream: trio.SocketStream, conn: h11.Connection
) -> tuple[h11.Request, bytes] | None:
    """A whole request (body buffered), or None if the peer closed between requests."""
    event = await _next_event(stream, conn)
    if not isinstance(event, h11.Request):
        return None
    await _send_100_if_expected(stream, conn)
    body = bytearray()
    while not isinstance(chunk := await _next_event(stream, conn), h11.EndOfMessage):
        if isinstance(chunk, h11.Data):
            body += chunk.data
    return event, bytes(body)


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def _response_bytes(
    conn: h11.Connection, response: Response, *, keep_alive: bool, head: bool = False
) -> bytes:
    headers = [(_as_bytes(n), _as_bytes(v)) for n, v in response.headers]
    names = {n.lower() for n, _ in headers}
    framed = b"content-length" in names or b"transfer-encoding" in names
    if not framed and response.status >= 200 and response.status not in (204, 304):
        headers.append((b"content-length", b"%d" % len(response.body)))
    if not keep_alive:
        headers.append((b"connection", b"close"))
    out = _encode(conn, h11.Response(status_code=response.status, headers=headers))
    if response.body and not head and conn.our_state is h11.SEND_BODY:
        out += _encode(conn, h11.Data(data=response.body))
    return out + _encode(conn, h11.EndOfMessage())


class _RequestResponseUpstream(_Upstream):
    """Buffers each request, answers it via ``_answer``; keep-alive unless told otherwise."""

    keep_alive = True

    async def _serve(self, stream: trio.SocketStream, connection_id: int) -> None:
        conn = h11.Connection(h11.SERVER)
        while (got := await _read_request(stream, conn)) is not None:
            recorded = self._record(*got, connection_id)
            response = await self._answer(recorded)
            head = recorded.method == "HEAD"
            out = _response_bytes(conn, response, keep_alive=self.keep_alive, head=head)
            await stream.send_all(out)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _answer(self, request: RecordedRequest) -> Response:
        raise NotImplementedError


class RecordingUpstream(_RequestResponseUpstream):
    """Answers every request (default: 200 with a small body) and records it.

    ``respond`` computes a custom Response per request; ``hold``, if given, delays every answer
    until the event is set (requests are recorded before waiting); ``keep_alive=False`` answers
    with ``Connection: close``. ``.requests`` is the list of RecordedRequest.
    """

    def __init__(
        self,
        *,
        status: int = 200,
        headers: HeaderPairs = (),
        body: bytes = b"hello from upstream\n",
        respond: Callable[[RecordedRequest], Response] | None = None,
        hold: trio.Event | None = None,
        keep_alive: bool = True,
    ) -> None:
        super().__init__()
        self.response = Response(status=status, headers=headers, body=body)
        self.respond = respond
        self.hold = hold
        self.keep_alive = keep_alive

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.recorded

    async def _answer(self, request: RecordedRequest) -> Response:
        if self.hold is not None:
            await self.hold.wait()
        return self.respond(request) if self.respond is not None else self.response


class SessionApp(_RequestResponseUpstream):
    """Behaves like Tomcat: a request without a known JSESSIONID cookie gets a new session.

    The new session is announced with ``Set-Cookie: JSESSIONID=<id>; Path=/; HttpOnly``.
    ``/health`` is not special (a naive app mints sessions for health checks too). Counters:
    ``sessions_created``, ``live_sessions`` (sessions held), ``requests`` (int); ``sessions`` maps
    session id -> requests seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sessions: dict[str, int] = {}
        self.sessions_created = 0

    @property
    def live_sessions(self) -> int:
        return len(self.sessions)

    @property
    def requests(self) -> int:
        return len(self.recorded)

    async def _answer(self, request: RecordedRequest) -> Response:
        session_id = _cookie(request, "JSESSIONID")
        headers: list[tuple[bytes | str, bytes | str]] = [("content-type", "text/plain")]
        if session_id is None or session_id not in self.sessions:
            session_id = secrets.token_hex(16).upper()
            self.sessions[session_id] = 0
            self.sessions_created += 1
            headers.append(("set-cookie", f"JSESSIONID={session_id}; Path=/; HttpOnly"))
        self.sessions[session_id] += 1
        self.notify()
        body = f"session {session_id} request {self.sessions[session_id]}\n".encode()
        return Response(status=200, headers=headers, body=body)


def _cookie(request: RecordedRequest, name: str) -> str | None:
    for header in request.header_values("cookie"):
        for part in header.split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
    return None


# -- streaming ---------------------------------------------------------------------------------

_PATTERN_PERIOD = 251  # prime, so pattern and chunk boundaries never line up
_PATTERN = bytes(i % _PATTERN_PERIOD for i in range(CHUNK_SIZE + _PATTERN_PERIOD))


def pattern_chunk(offset: int, size: int) -> bytes:
    """Bytes ``offset .. offset+size`` of the download pattern (byte i is ``i % 251``)."""
    assert size <= CHUNK_SIZE
    start = offset % _PATTERN_PERIOD
    return _PATTERN[start : start + size]


def pattern_sha256(size: int) -> str:
    """Hex SHA-256 of the first ``size`` pattern bytes, computed without holding them."""
    digest = hashlib.sha256()
    for offset in range(0, size, CHUNK_SIZE):
        digest.update(pattern_chunk(offset, min(CHUNK_SIZE, size - offset)))
    return digest.hexdigest()


@dataclass(frozen=True)
class UploadResult:
    size: int
    sha256: str
    chunked: bool
    connection_id: int


class StreamingUpstream(_Upstream):
    """Streams without holding bodies.

    ``GET /download/<n>`` sends n pattern bytes (see ``pattern_chunk``) with Content-Length, or
    chunked with ``?chunked=1``. ``POST|PUT /upload`` reads the body (Content-Length or chunked)
    and answers JSON ``{"size": n, "sha256": hex, "chunked": bool}``. Records ``downloads_started``,
    ``downloads_completed``, ``bytes_sent`` (updated after every write, to observe back-pressure),
    ``uploads`` (UploadResult list) and ``requests`` (int).
    """

    def __init__(self) -> None:
        super().__init__()
        self.downloads_started = 0
        self.downloads_completed = 0
        self.bytes_sent = 0
        self.uploads: list[UploadResult] = []

    @property
    def requests(self) -> int:
        return len(self.recorded)

    async def _serve(self, stream: trio.SocketStream, connection_id: int) -> None:
        conn = h11.Connection(h11.SERVER)
        while isinstance(request := await _next_event(stream, conn), h11.Request):
            self._record(request, b"", connection_id)
            path, _, query = request.target.decode("ascii").partition("?")
            if path == "/upload":
                await self._upload(stream, conn, request, connection_id)
            else:
                while not isinstance(await _next_event(stream, conn), h11.EndOfMessage):
                    pass
                if path.startswith("/download/") and path[10:].isdigit():
                    await self._download(stream, conn, int(path[10:]), chunked="chunked=1" in query)
                else:
                    response = Response(status=404, body=b"not found\n")
                    head = request.method == b"HEAD"
                    out = _response_bytes(conn, response, keep_alive=True, head=head)
                    await stream.send_all(out)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _download(
        self, stream: trio.SocketStream, conn: h11.Connection, size: int, *, chunked: bool
    ) -> None:
        self.downloads_started += 1
        self.notify()
        framing = (
            (b"transfer-encoding", b"chunked") if chunked else (b"content-length", b"%d" % size)
        )
        headers = [(b"content-type", b"application/octet-stream"), framing]
        await stream.send_all(_encode(conn, h11.Response(status_code=200, headers=headers)))
        if conn.our_state is h11.SEND_BODY:  # not after HEAD
            for offset in range(0, size, CHUNK_SIZE):
                chunk = pattern_chunk(offset, min(CHUNK_SIZE, size - offset))
                await stream.send_all(_encode(conn, h11.Data(data=chunk)))
                self.bytes_sent += len(chunk)
                self.notify()
        await stream.send_all(_encode(conn, h11.EndOfMessage()))
        self.downloads_completed += 1
        self.notify()

    async def _upload(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, cid: int
    ) -> None:
        await _send_100_if_expected(stream, conn)
        digest = hashlib.sha256()
        size = 0
        while not isinstance(event := await _next_event(stream, conn), h11.EndOfMessage):
            if isinstance(event, h11.Data):
                digest.update(event.data)
                size += len(event.data)
        chunked = any(n == b"transfer-encoding" for n, _ in request.headers)
        result = UploadResult(
            size=size, sha256=digest.hexdigest(), chunked=chunked, connection_id=cid
        )
        self.uploads.append(result)
        self.notify()
        body = json.dumps({"size": size, "sha256": result.sha256, "chunked": chunked}).encode()
        response = Response(headers=[("content-type", "application/json")], body=body)
        await stream.send_all(_response_bytes(conn, response, keep_alive=True))


# -- misbehaving -------------------------------------------------------------------------------

MisbehaviourMode = Literal[
    "garbage",
    "dup_content_length",
    "close_before_response",
    "reset",
    "stall_headers",
    "stall_body",
    "close_mid_body",
    "head_with_body",
    "huge_headers",
    "switching_protocols",
]

_STATUS_LINE = b"HTTP/1.1 200 OK\r\n"
_PARTIAL_BODY = _STATUS_LINE + b"Content-Length: 1000\r\n\r\n" + b"0123456789"
_RAW_ANSWERS: dict[str, bytes] = {
    "garbage": b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe not http at all\r\n\r\n",
    "dup_content_length": _STATUS_LINE + b"Content-Length: 5\r\nContent-Length: 7\r\n\r\nhello!!",
    "stall_body": _PARTIAL_BODY,
    "close_mid_body": _PARTIAL_BODY,
    "head_with_body": _STATUS_LINE + b"Content-Length: 11\r\n\r\nhello world",
    "huge_headers": (
        _STATUS_LINE
        + b"".join(b"X-Filler-%03d: %s\r\n" % (i, b"a" * 1010) for i in range(100))
        + b"Content-Length: 2\r\n\r\nok"
    ),
    "switching_protocols": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    ),
}
_PLAIN_OK = _STATUS_LINE + b"Content-Length: 2\r\n\r\nok"
_CLOSE_AFTER = {"garbage", "dup_content_length", "close_mid_body", "switching_protocols"}
_STALL_AFTER = {"stall_headers", "stall_body"}


class MisbehavingUpstream(_Upstream):
    """Reads each request with h11, then misbehaves in one way (``mode``).

    garbage / dup_content_length / close_mid_body: send the bad bytes, then close.
    close_before_response: close without answering. reset: close with SO_LINGER 0 (RST).
    stall_headers / stall_body: send nothing / headers + 10 of 1000 body bytes, then wait until the
    peer closes (counted in ``closed_by_peer``). head_with_body: answers HEAD with an 11-byte body,
    other methods with a plain 200 "ok", and keeps the connection. huge_headers: a 100 KiB header
    section, then a 2-byte body. switching_protocols: a 101 to WebSocket, then close.
    Counters: ``connections``, ``requests`` (int), ``closed_by_peer``.
    """

    def __init__(self, mode: MisbehaviourMode) -> None:
        super().__init__()
        self.mode = mode
        self.closed_by_peer = 0

    @property
    def requests(self) -> int:
        return len(self.recorded)

    async def _serve(self, stream: trio.SocketStream, connection_id: int) -> None:
        pending = b""
        while True:
            conn = h11.Connection(h11.SERVER)  # fresh per request: our answers bypass h11
            if pending:
                conn.receive_data(pending)  # b"" would mean EOF to h11
            got = await _read_request(stream, conn)
            if got is None:
                return
            request = self._record(*got, connection_id)
            pending = conn.trailing_data[0]
            if not await self._misbehave(stream, request):
                return

    async def _misbehave(self, stream: trio.SocketStream, request: RecordedRequest) -> bool:
        """Act out the mode for one request; True to keep reading requests."""
        mode = self.mode
        if mode == "reset":
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if mode == "close_before_response":
            return False
        if mode == "head_with_body" and request.method != "HEAD":
            await stream.send_all(_PLAIN_OK)
            return "close" not in (request.header("connection") or "").lower()
        if mode in _RAW_ANSWERS:
            await stream.send_all(_RAW_ANSWERS[mode])
        if mode in _STALL_AFTER:
            while await stream.receive_some(CHUNK_SIZE):
                pass
            self.closed_by_peer += 1
            self.notify()
            return False
        wants_close = "close" in (request.header("connection") or "").lower()
        return mode not in _CLOSE_AFTER and not wants_close


def refused_address() -> str:
    """``"127.0.0.1:PORT"`` of a port with nothing listening (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"
