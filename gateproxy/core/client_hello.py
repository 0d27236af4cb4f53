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
_EXT_PRE_SHARED_KEY = 41
_MAX_IDENTITIES = 4
_TLS13 = b"\x03\x04"


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What the shared cache needs from a parsed ClientHello."""

    legacy_version: int
    session_id: bytes
    offers_tls13: bool
    offers_ticket: bool  # a non-empty session_ticket extension
    psk_identities: tuple[bytes, ...] = ()  # TLS 1.3 pre_shared_key identities (at most 4)


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
    return _parse_hello(body[4 : 4 + length])


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


_SHORT = NotAHello("a length points past the end of the hello")


def _parse_hello(body: bytes) -> ClientHello | NotAHello:
    """The fields of a ClientHello body (plain index arithmetic: this runs per connection)."""
    end = len(body)
    if end < 35:
        return _SHORT
    pos = 34  # legacy_version, random
    sid_len = body[pos]
    if sid_len > 32:
        return NotAHello("session id longer than 32 bytes")
    pos += 1
    session_id = body[pos : pos + sid_len]
    pos += sid_len
    if pos + 2 > end:
        return _SHORT
    pos += 2 + (body[pos] << 8 | body[pos + 1])  # cipher suites
    if pos + 1 > end:
        return _SHORT
    pos += 1 + body[pos]  # compression methods
    if pos > end:
        return _SHORT
    offers: tuple[bool, bool, tuple[bytes, ...]] = (False, False, ())
    if pos < end:
        if pos + 2 > end:
            return _SHORT
        ext_end = pos + 2 + (body[pos] << 8 | body[pos + 1])
        if ext_end > end:
            return _SHORT
        found = _extensions(body, pos + 2, ext_end)
        if found is None:
            return _SHORT
        offers = found
    return ClientHello(
        legacy_version=body[0] << 8 | body[1],
        session_id=session_id,
        offers_tls13=offers[0],
        offers_ticket=offers[1],
        psk_identities=offers[2],
    )


def _extensions(body: bytes, pos: int, end: int) -> tuple[bool, bool, tuple[bytes, ...]] | None:
    """(offers TLS 1.3, offers a ticket, PSK identities) from the extensions in
    ``body[pos:end]``; None if a length points past ``end``."""
    offers_tls13 = offers_ticket = False
    identities: tuple[bytes, ...] = ()
    while pos < end:
        if pos + 4 > end:
            return None
        kind = body[pos] << 8 | body[pos + 1]
        size = body[pos + 2] << 8 | body[pos + 3]
        pos += 4
        if pos + size > end:
            return None
        if kind == _EXT_SESSION_TICKET:
            offers_ticket = size > 0
        elif kind == _EXT_SUPPORTED_VERSIONS:
            if size < 1 or 1 + body[pos] > size:
                return None
            versions = body[pos + 1 : pos + 1 + body[pos]]
            offers_tls13 = any(
                versions[i : i + 2] == _TLS13 for i in range(0, len(versions) - 1, 2)
            )
        elif kind == _EXT_PRE_SHARED_KEY:
            found = _identities(body, pos, pos + size)
            if found is None:
                return None
            identities = found
        pos += size
    return offers_tls13, offers_ticket, identities


def _identities(body: bytes, pos: int, end: int) -> tuple[bytes, ...] | None:
    """The first PSK identities of a pre_shared_key extension (RFC 8446 §4.2.11)."""
    if pos + 2 > end:
        return None
    list_end = pos + 2 + (body[pos] << 8 | body[pos + 1])
    if list_end > end:
        return None
    pos += 2
    found: list[bytes] = []
    while pos < list_end and len(found) < _MAX_IDENTITIES:
        if pos + 2 > list_end:
            return None
        size = body[pos] << 8 | body[pos + 1]
        if pos + 2 + size + 4 > list_end:
            return None
        found.append(body[pos + 2 : pos + 2 + size])
        pos += 2 + size + 4  # the identity, then obfuscated_ticket_age
    return tuple(found)
