"""PROXY protocol v1 (text) and v2 (binary) headers, as HAProxy's ``accept-proxy`` reads them.

Sans-IO: :class:`ProxyHeaderParser` takes bytes with :meth:`~ProxyHeaderParser.feed` and answers
with a :class:`Fed`: how many of the bytes it took (``consumed``) and the outcome, one of
:data:`NEED_MORE`, a :class:`ProxyHeader` or a :class:`ProxyHeaderInvalid` with a reason. It
never takes a byte past the header's end, so the shell can peek at the socket, feed what it saw,
and consume exactly ``consumed`` bytes: what follows (a TLS ClientHello, an HTTP request) stays in
the kernel for the stream that reads next. :attr:`~ProxyHeaderParser.wanted` is the size of
the next peek (v1: the rest of its 107-byte bound; v2: the rest of its 16-byte fixed part until
the length in it is known, then exactly the rest of the header); whatever it is given, ``feed``
never takes a byte past the header's end.

The format (haproxy's doc/proxy-protocol.txt):

* v1: ``PROXY TCP4|TCP6 <src> <dst> <srcport> <dstport>\\r\\n`` or ``PROXY UNKNOWN ...\\r\\n``,
  at most 107 bytes with the CRLF. UNKNOWN (anything may follow it up to the CRLF) means "use
  the connection's own addresses".
* v2: the 12-byte signature, a version/command byte (version 2; LOCAL or PROXY), a
  family/transport byte, a 16-bit length, then the addresses (AF_INET 12 bytes, AF_INET6 36,
  AF_UNIX 216) and TLVs, which are skipped. LOCAL (a balancer's own health check), AF_UNSPEC and
  AF_UNIX carry no usable client address: ``source`` is None and the real peer is kept.

The bounds are the format's own: a v1 line ends within 107 bytes, a v2 header is ``16 + length``
bytes (length <= 65535). Time is the shell's business (``proxy_protocol.timeout``).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final, Literal

from gateproxy.errors import GateproxyError

V1_SIGNATURE: Final = b"PROXY "
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX_LENGTH: Final = 107  # "PROXY TCP6 " + two full IPv6 addresses + two ports + CRLF
V2_FIXED_LENGTH: Final = 16
_V2_ADDRESS_LENGTHS: Final = {0x0: 0, 0x1: 12, 0x2: 36, 0x3: 216}  # UNSPEC, INET, INET6, UNIX
_V2_TRANSPORTS: Final = frozenset({0x0, 0x1, 0x2})  # UNSPEC, STREAM, DGRAM

Command = Literal["proxy", "local"]


class ProxyProtocolError(GateproxyError):
    """The parser was used wrongly (fed after it finished). Bad bytes are not errors: they are
    a :class:`ProxyHeaderInvalid` outcome."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete, valid header. ``source``/``destination`` are ``(ip, port)``, or None when the
    header carries no address to use (v2 LOCAL, AF_UNSPEC, AF_UNIX; v1 UNKNOWN)."""

    version: Literal[1, 2]
    command: Command
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int  # bytes of the header on the wire


@dataclass(frozen=True, slots=True)
class ProxyHeaderInvalid:
    """The bytes are not a valid PROXY header; ``reason`` names the rule broken."""

    reason: str


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The header is not complete yet."""


NEED_MORE: Final = NeedMore()

Outcome = NeedMore | ProxyHeader | ProxyHeaderInvalid


@dataclass(frozen=True, slots=True)
class Fed:
    """What one :meth:`ProxyHeaderParser.feed` did: bytes taken, and where parsing stands."""

    consumed: int
    outcome: Outcome


def looks_like_header(data: bytes) -> bool:
    """True when ``data`` starts with a whole v1 or v2 signature (an untrusted client's first
    bytes are checked with this: it needs no more than 12 bytes)."""
    return data.startswith(V1_SIGNATURE) or data.startswith(V2_SIGNATURE)


class ProxyHeaderParser:
    """Incremental parser of one PROXY header (v1 or v2, told apart by the first byte)."""

    __slots__ = ("_buffer", "_done", "_total")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._total: int | None = None  # v2: the header's full length, once known
        self._done = False

    @property
    def wanted(self) -> int:
        """The size of the next peek: no more than the header can still need (at least 1
        until done; see the module docstring)."""
        have = len(self._buffer)
        if self._total is not None:
            return self._total - have
        if self._buffer[:1] == V1_SIGNATURE[:1]:
            return V1_MAX_LENGTH - have
        return V2_FIXED_LENGTH - have

    def feed(self, data: bytes) -> Fed:
        """Take bytes up to the end of the header at most; see the module docstring."""
        if self._done:
            raise ProxyProtocolError("feed() after the PROXY header was parsed or rejected")
        if not data:
            return Fed(0, NEED_MORE)
        first = bytes(self._buffer[:1]) or data[:1]
        fed = self._feed_v1(data) if first == V1_SIGNATURE[:1] else self._feed_v2(data)
        if not isinstance(fed.outcome, NeedMore):
            self._done = True
        return fed

    # --- v1 ---------------------------------------------------------------------------------

    def _feed_v1(self, data: bytes) -> Fed:
        start = len(self._buffer)
        end = data.find(b"\n", 0, V1_MAX_LENGTH - start)
        taken = data[: end + 1] if end >= 0 else data[: V1_MAX_LENGTH - start]
        self._buffer += taken
        buffer = bytes(self._buffer)
        if not (buffer.startswith(V1_SIGNATURE) or V1_SIGNATURE.startswith(buffer)):
            return Fed(len(taken), ProxyHeaderInvalid("not a PROXY protocol header"))
        if end < 0:
            if len(buffer) >= V1_MAX_LENGTH:
                reason = f"PROXY v1 header has no CRLF within {V1_MAX_LENGTH} bytes"
                return Fed(len(taken), ProxyHeaderInvalid(reason))
            return Fed(len(taken), NEED_MORE)
        return Fed(len(taken), parse_v1_line(buffer))

    # --- v2 ---------------------------------------------------------------------------------

    def _feed_v2(self, data: bytes) -> Fed:
        start = len(self._buffer)
        if self._total is None:
            taken = data[: V2_FIXED_LENGTH - start]
            self._buffer += taken
            head = bytes(self._buffer)
            if not (head.startswith(V2_SIGNATURE) or V2_SIGNATURE.startswith(head)):
                return Fed(len(taken), ProxyHeaderInvalid("not a PROXY protocol header"))
            if len(head) < V2_FIXED_LENGTH:
                return Fed(len(taken), NEED_MORE)
            (length,) = struct.unpack_from("!H", head, 14)
            self._total = V2_FIXED_LENGTH + length
            problem = _check_v2_fixed(head)
            if problem is not None:
                return Fed(len(taken), ProxyHeaderInvalid(problem))
            rest = data[len(taken) :]
        else:
            taken, rest = b"", data
        more = rest[: self._total - len(self._buffer)]
        self._buffer += more
        consumed = len(taken) + len(more)
        if len(self._buffer) < self._total:
            return Fed(consumed, NEED_MORE)
        return Fed(consumed, parse_v2(bytes(self._buffer)))


def _check_v2_fixed(head: bytes) -> str | None:
    version, command = head[12] >> 4, head[12] & 0x0F
    family, transport = head[13] >> 4, head[13] & 0x0F
    (length,) = struct.unpack_from("!H", head, 14)
    if version != 2:
        return f"PROXY v2 header with version {version} (expected 2)"
    if command not in (0x0, 0x1):
        return f"PROXY v2 header with command {command:#x} (expected LOCAL 0x0 or PROXY 0x1)"
    needed = _V2_ADDRESS_LENGTHS.get(family)
    if needed is None or transport not in _V2_TRANSPORTS:
        return f"PROXY v2 header with address family/transport {head[13]:#04x}"
    if command == 0x1 and length < needed:
        return f"PROXY v2 header length {length} is shorter than its addresses ({needed} bytes)"
    return None


def parse_v2(header: bytes) -> ProxyHeader | ProxyHeaderInvalid:
    """A whole v2 header (its fixed part already checked) -> the header it states."""
    problem = _check_v2_fixed(header)
    if problem is not None:
        return ProxyHeaderInvalid(problem)
    command: Command = "local" if header[12] & 0x0F == 0x0 else "proxy"
    family = header[13] >> 4
    body = header[V2_FIXED_LENGTH:]
    source = destination = None
    if command == "proxy" and family == 0x1:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
        source = (str(ipaddress.IPv4Address(src)), sport)
        destination = (str(ipaddress.IPv4Address(dst)), dport)
    elif command == "proxy" and family == 0x2:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
        source = (str(ipaddress.IPv6Address(src)), sport)
        destination = (str(ipaddress.IPv6Address(dst)), dport)
    return ProxyHeader(2, command, source, destination, len(header))


def parse_v1_line(line: bytes) -> ProxyHeader | ProxyHeaderInvalid:
    """A whole v1 line (ending in LF) -> the header it states."""
    if not line.endswith(b"\r\n"):
        return ProxyHeaderInvalid("PROXY v1 header does not end with CRLF")
    words = line[len(V1_SIGNATURE) : -2].split(b" ")
    if words[0] == b"UNKNOWN":
        return ProxyHeader(1, "local", None, None, len(line))
    if words[0] not in (b"TCP4", b"TCP6"):
        return ProxyHeaderInvalid(f"PROXY v1 protocol {_show(words[0])} is not TCP4, TCP6, UNKNOWN")
    if len(words) != 5:
        return ProxyHeaderInvalid("PROXY v1 header needs 5 fields after 'PROXY', single-spaced")
    try:
        src, dst = (_v1_address(w, v6=words[0] == b"TCP6") for w in words[1:3])
        sport, dport = (_v1_port(w) for w in words[3:5])
    except ValueError as exc:
        return ProxyHeaderInvalid(f"PROXY v1 header: {exc}")
    return ProxyHeader(1, "proxy", (src, sport), (dst, dport), len(line))


def _v1_address(word: bytes, *, v6: bool) -> str:
    text = word.decode("ascii", "replace")
    try:
        ip = ipaddress.IPv6Address(text) if v6 else ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError(f"{_show(word)} is not an IPv{6 if v6 else 4} address") from None
    if "%" in text:  # a scope id is no client address
        raise ValueError(f"{_show(word)} is not an IPv6 address without a scope")
    return str(ip)


def _v1_port(word: bytes) -> int:
    if not word.isdigit() or len(word) > 5 or (len(word) > 1 and word[:1] == b"0"):
        raise ValueError(f"port {_show(word)} is not a decimal 0..65535 without leading zeros")
    port = int(word)
    if port > 65535:
        raise ValueError(f"port {_show(word)} is above 65535")
    return port


def _show(word: bytes) -> str:
    return repr(word[:48].decode("ascii", "replace"))
