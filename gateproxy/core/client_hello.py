"""A bounded reader of the TLS ClientHello, for deciding before OpenSSL sees it. Sans-IO.

The shared session cache (``core.shared_sessions``) must know, before the handshake starts,
whether a client offers a TLS 1.2 session id worth fetching from the fleet's store. This module
reads just enough of the first TLS record(s) to tell:

* the legacy ``session_id`` (0-32 bytes);
* whether ``supported_versions`` offers TLS 1.3 (then a 1.3-capable server never resumes by id);
* whether the ``session_ticket`` extension carries a ticket (then OpenSSL tries the ticket and
  never looks the id up, RFC 5077 §3.4, ``tls_get_ticket_from_client``).

Rules: any bytes are accepted and none ever raise; the work is bounded by :data:`MAX_HELLO`
(a hello longer than that is "not for us": the handshake goes on without a lookup, OpenSSL
judges the bytes itself). :func:`read_client_hello` is called again with more bytes as they
arrive until it answers something other than :data:`NEED_MORE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["MAX_HELLO", "NEED_MORE", "ClientHello", "NeedMore", "NotAHello", "read_client_hello"]

MAX_HELLO: Final = 16 * 1024
"""The most handshake bytes (record headers included) read before giving up on a hello."""

_RECORD_HEADER = 5
_MAX_RECORD = 16 * 1024 + 256  # TLSPlaintext limit, with the slack OpenSSL allows
_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SESSION_TICKET = 35
_EXT_SUPPORTED_VERSIONS = 43
_TLS13 = 0x0304


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What the shared cache needs from a parsed ClientHello."""

    legacy_version: int
    session_id: bytes
    offers_tls13: bool
    offers_ticket: bool  # a non-empty session_ticket extension


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The hello is not complete yet: call again with more bytes."""


@dataclass(frozen=True, slots=True)
class NotAHello:
    """These bytes are not a ClientHello this reader accepts (``reason`` says why)."""

    reason: str


NEED_MORE: Final = NeedMore()

HelloResult = ClientHello | NeedMore | NotAHello


def read_client_hello(data: bytes) -> HelloResult:
    """Parse the ClientHello at the start of ``data`` (the first bytes a client sent).

    Only the first ``MAX_HELLO + 5`` bytes are ever looked at; once that many arrived without a
    complete hello the answer is :class:`NotAHello`, so a caller never buffers more."""
    result = _read(data[: MAX_HELLO + _RECORD_HEADER])
    if result is NEED_MORE and len(data) >= MAX_HELLO:
        return NotAHello("longer than the hello limit")
    return result


def _read(data: bytes) -> HelloResult:
    body = _handshake_bytes(data)
    if not isinstance(body, bytes):
        return body
    if len(body) < 4:
        return NEED_MORE
    if body[0] != _CLIENT_HELLO:
        return NotAHello("first handshake message is not a ClientHello")
    length = int.from_bytes(body[1:4], "big")
    if length > MAX_HELLO:
        return NotAHello("longer than the hello limit")
    if len(body) < 4 + length:
        return NEED_MORE
    return _parse_hello(memoryview(body)[4 : 4 + length])


def _handshake_bytes(data: bytes) -> bytes | NeedMore | NotAHello:
    """The handshake-layer bytes of the leading handshake records (joined, headers removed;
    a record still arriving contributes what is there so far)."""
    if data and data[0] != _HANDSHAKE:
        return NotAHello("not a TLS handshake record")
    parts: list[bytes] = []
    pos = 0
    while pos + _RECORD_HEADER <= len(data):
        if data[pos] != _HANDSHAKE or data[pos + 1] != 0x03:
            if parts:
                break  # the hello's records are over
            return NotAHello("not a TLS handshake record")
        size = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if size == 0 or size > _MAX_RECORD:
            return NotAHello("bad record length")
        parts.append(data[pos + _RECORD_HEADER : pos + _RECORD_HEADER + size])
        pos += _RECORD_HEADER + size
    return b"".join(parts) if parts else NEED_MORE


class _Short(Exception):
    """The hello's own lengths point past its end."""


class _Cursor:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.buf):
            raise _Short
        piece = self.buf[self.pos : end]
        self.pos = end
        return piece

    def number(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> memoryview:
        return self.take(self.number(length_bytes))

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos


def _parse_hello(body: memoryview) -> ClientHello | NotAHello:
    cur = _Cursor(body)
    try:
        version = cur.number(2)
        cur.take(32)  # random
        session_id = bytes(cur.vector(1))
        if len(session_id) > 32:
            return NotAHello("session id longer than 32 bytes")
        cur.vector(2)  # cipher suites
        cur.vector(1)  # compression methods
        offers_tls13 = offers_ticket = False
        if cur.left:
            offers_tls13, offers_ticket = _extensions(_Cursor(cur.vector(2)))
    except _Short:
        return NotAHello("a length points past the end of the hello")
    return ClientHello(
        legacy_version=version,
        session_id=session_id,
        offers_tls13=offers_tls13,
        offers_ticket=offers_ticket,
    )


def _extensions(cur: _Cursor) -> tuple[bool, bool]:
    offers_tls13 = offers_ticket = False
    while cur.left:
        kind = cur.number(2)
        data = cur.vector(2)
        if kind == _EXT_SESSION_TICKET:
            offers_ticket = len(data) > 0
        elif kind == _EXT_SUPPORTED_VERSIONS:
            versions = _Cursor(data).vector(1)
            offers_tls13 = any(
                int.from_bytes(versions[i : i + 2], "big") == _TLS13
                for i in range(0, len(versions) - 1, 2)
            )
    return offers_tls13, offers_ticket
