"""Strict parsers and exact writers for HTTP/1.1 message heads: the fast path of the parser pair.

Theory of operation. h11 is correct but costs tens of microseconds per head. Most traffic is
plain: a request without a body or with a ``Content-Length`` body, answered with a
``Content-Length`` (or body-less) response. The parsers here take exactly those and *refuse to
decide* anything else: for input they do not fully understand they return :data:`UNUSUAL`, and
the connection classes (``core.h1_server``, ``core.h1_client``) hand the very same bytes to h11,
which applies all of its rules (and ``core.request_rules`` all of ours). So the fast path
accepts a subset of what h11 accepts, and never anything ``request_rules`` would refuse:

* every line ends in CRLF (no bare LF or CR anywhere in the head), no obs-fold;
* header names are tokens, values hold no control character other than HTAB;
* request line ``METHOD SP origin-form SP HTTP/1.x`` (method ``[A-Z][A-Z0-9_-]*``, not CONNECT
  or TRACE; target starting with ``/``, visible ASCII, no ``#``; version 1.1 or 1.0);
* requests: exactly one valid Host (HTTP/1.0: at most one); at most one Content-Length of plain
  digits, and none above 0 on GET or HEAD; no Transfer-Encoding, Expect or Upgrade; a
  Connection header only with the tokens ``close`` and ``keep-alive``;
* responses: status 200-599, HTTP/1.0 or 1.1, no Transfer-Encoding, at most one Content-Length
  of plain digits; a body-bearing status needs one (read-until-close is left to h11).

Header names come out lowercased (as h11 gives them). The writers produce the bytes h11 would
write for the same head (Host first, ``name: value`` lines, CRLF), so which path wrote a message
never shows on the wire (tests/core/test_h1_heads.py compares them with h11 byte for byte).
"""

from __future__ import annotations

import re
from typing import Final

from gateproxy.core.http_events import Headers, Request, Response

MORE: Final = 1  # the head is not complete yet (and not over its size limit)
UNUSUAL: Final = 2  # not for the fast path: let h11 parse these bytes

# Character classes as translation tables: allowed bytes map to 1, others to 0, so
# ``0 not in data.translate(table)`` checks a whole string in one C pass (faster than a
# regex, and far faster than translate's ``delete`` argument, which builds a table per call).
_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DIGIT = b"0123456789"


def _table(allowed: bytes) -> bytes:
    return bytes(1 if c in allowed else 0 for c in range(256))


_TOKEN: Final = _table(b"!#$%&'*+-.^_`|~" + _DIGIT + _UPPER + _UPPER.lower())  # RFC 9110 tchar
_VALUE_CHARS = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])  # HTAB, VCHAR, SP, obs-text
_VALUE: Final = _table(_VALUE_CHARS)
_FIELDS: Final = _table(_VALUE_CHARS + b"\r\n")  # a block of field lines (CRLF checked apart)
_METHOD: Final = _table(_UPPER + _DIGIT + b"_-")
_TARGET: Final = _table(bytes([0x21, 0x22, *range(0x24, 0x7F)]))  # visible ASCII but "#"


def _only(data: bytes, table: bytes) -> bool:
    """Every byte of ``data`` is allowed by ``table``."""
    return 0 not in data.translate(table)  # (an int: a bytes needle costs a TypeError first)


_VERSIONS: Final = {b"HTTP/1.1": b"1.1", b"HTTP/1.0": b"1.0"}
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")
_NOT_FAST_METHODS: Final = frozenset({b"CONNECT", b"TRACE"})
_NO_BODY_METHODS: Final = frozenset({b"GET", b"HEAD"})
_REFUSED_REQUEST_HEADERS: Final = frozenset({b"expect", b"upgrade", b"transfer-encoding"})
_PLAIN_CONNECTION_TOKENS: Final = frozenset({b"close", b"keep-alive"})
_NO_BODY_STATUSES: Final = frozenset({204, 304})


class RequestHead:
    """A fast-parsed request head: the event, its size in bytes, the body length, keep-alive."""

    __slots__ = ("body_length", "keep_alive", "request", "size")

    def __init__(self, request: Request, size: int, body_length: int, keep_alive: bool) -> None:
        self.request = request
        self.size = size
        self.body_length = body_length
        self.keep_alive = keep_alive


class ResponseHead:
    """A fast-parsed response head: the event, its size, the body length and keep-alive."""

    __slots__ = ("body_length", "keep_alive", "response", "size")

    def __init__(self, response: Response, size: int, body_length: int, keep_alive: bool) -> None:
        self.response = response
        self.size = size
        self.body_length = body_length
        self.keep_alive = keep_alive


def head_end(buf: bytes | bytearray, max_bytes: int) -> int:
    """Index just past the blank line ending the head, or :data:`MORE` / :data:`UNUSUAL`
    (negated, so they never collide with an index: ``-MORE``, ``-UNUSUAL``)."""
    end = buf.find(b"\r\n\r\n", 0, max_bytes)  # a head of at most max_bytes
    if end >= 0:
        return end + 4
    if (
        len(buf) >= max_bytes
        or (len(buf) > 0 and buf[0] < 0x21)  # h11 refuses such a start at once
        or buf.find(b"\n\n") >= 0
        or buf.find(b"\n\r\n") >= 0
    ):
        return -UNUSUAL  # too big, bad start, or ended by a bare LF: h11 and request_rules decide
    return -MORE


def _split_head(buf: bytes | bytearray, end: int) -> tuple[bytes, Headers | None]:
    """The start line and the strictly parsed ``name: value`` fields (names lowercased; None
    if any field is unusual: a name that is not a token, a value with a control character,
    a bare CR or LF) of the head ending at ``end``."""
    head = bytes(buf[: end - 4])
    first = head.find(b"\r\n")
    if first < 0:
        return head, []
    block = head[first + 2 :]
    crlf = block.count(b"\r\n")
    if not _only(block, _FIELDS) or block.count(b"\r") != crlf or block.count(b"\n") != crlf:
        return head[:first], None  # a control character, or a bare CR or LF
    headers: Headers = []
    for line in block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon or not name or not _only(name, _TOKEN):
            return head[:first], None
        headers.append((name.lower(), value.strip(b" \t")))
    return head[:first], headers


def _digits(value: bytes) -> bool:
    return 0 < len(value) <= 18 and value.isdigit()


def _request_line(line: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(method, target, version) of a plain origin-form request line, or None."""
    parts = line.split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if not method or method[0] not in _UPPER or not _only(method, _METHOD):
        return None
    if not target.startswith(b"/") or not _only(target, _TARGET):
        return None
    number = _VERSIONS.get(version)
    return None if number is None else (method, target, number)


def _status_line(line: bytes) -> tuple[bytes, int, bytes] | None:
    """(version, status 200-599, reason) of a plain status line, or None."""
    number = _VERSIONS.get(line[:8])
    code = line[9:12]
    if number is None or line[8:9] != b" " or not code.isdigit() or code[0] not in b"2345":
        return None
    if len(line) > 12 and (line[12] != 0x20 or not _only(line[13:], _VALUE)):
        return None
    return number, int(code), line[13:]


def _tokens(value: bytes) -> list[bytes]:
    return [token.strip(b" \t").lower() for token in value.split(b",")]


def parse_request_head(buf: bytes | bytearray, *, max_bytes: int) -> RequestHead | int:
    """A plain request head at the start of ``buf``; else :data:`MORE` or :data:`UNUSUAL`."""
    end = head_end(buf, max_bytes)
    if end < 0:
        return -end
    start, headers = _split_head(buf, end)
    line = _request_line(start)
    if line is None or headers is None:
        return UNUSUAL
    method, target, version = line
    if method in _NOT_FAST_METHODS:
        return UNUSUAL
    http10 = version == b"1.0"
    hosts = 0
    length = -1
    keep_alive = not http10
    for name, value in headers:
        if name == b"host":
            hosts += 1
            if _HOST.fullmatch(value) is None:
                return UNUSUAL
        elif name == b"content-length":
            if length >= 0 or not _digits(value):
                return UNUSUAL
            length = int(value)
        elif name == b"connection":
            tokens = _tokens(value)
            if not _PLAIN_CONNECTION_TOKENS.issuperset(tokens):
                return UNUSUAL
            if b"close" in tokens:
                keep_alive = False
        elif name in _REFUSED_REQUEST_HEADERS:
            return UNUSUAL
    if (hosts > 1 if http10 else hosts != 1) or (length > 0 and method in _NO_BODY_METHODS):
        return UNUSUAL
    request = Request(method=method, target=target, headers=headers, http_version=version)
    return RequestHead(request, end, max(length, 0), keep_alive)


def parse_response_head(
    buf: bytes | bytearray, *, request_method: bytes, max_bytes: int
) -> ResponseHead | int:
    """A plain final response head with Content-Length framing (or a body-less status or
    HEAD answer) at the start of ``buf``; else :data:`MORE` or :data:`UNUSUAL`."""
    end = head_end(buf, max_bytes)
    if end < 0:
        return -end
    start, headers = _split_head(buf, end)
    line = _status_line(start)
    if line is None or headers is None:
        return UNUSUAL
    version, status, reason = line
    length = -1
    keep_alive = version == b"1.1"
    for name, value in headers:
        if name == b"content-length":
            if length >= 0 or not _digits(value):
                return UNUSUAL
            length = int(value)
        elif name == b"transfer-encoding":
            return UNUSUAL
        elif name == b"connection" and b"close" in _tokens(value):
            keep_alive = False
    if status in _NO_BODY_STATUSES or request_method == b"HEAD":
        length = 0
    elif length < 0:
        return UNUSUAL  # read-until-close framing: h11's job
    response = Response(status_code=status, headers=headers, reason=reason, http_version=version)
    return ResponseHead(response, end, length, keep_alive)


def _write_fields(parts: list[bytes], headers: Headers) -> None:
    # h11 writes Host first, then every other field in order.
    for name, value in headers:
        if name == b"host":
            parts += (name, b": ", value, b"\r\n")
    for name, value in headers:
        if name != b"host":
            parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")


def write_request(method: bytes, target: bytes, headers: Headers) -> bytes:
    """A request head as h11 writes it. Values must already be valid (parsed, or made by
    ``core.headers``)."""
    parts = [b"%s %s HTTP/1.1\r\n" % (method, target)]
    _write_fields(parts, headers)
    return b"".join(parts)


def write_response(status: int, reason: bytes, headers: Headers) -> bytes:
    """A response head as h11 writes it."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    _write_fields(parts, headers)
    return b"".join(parts)


def write_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (h11 writes nothing for empty data)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK: Final = b"0\r\n\r\n"


def content_length(headers: Headers) -> int:
    """The single plain Content-Length of ``headers``; -1 when there is none, -2 when the
    framing is not that simple (Transfer-Encoding, several values, not digits)."""
    length = -1
    for name, value in headers:
        if name == b"transfer-encoding":
            return -2
        if name == b"content-length":
            if length >= 0 or not _digits(value):
                return -2
            length = int(value)
    return length


def connection_close(headers: Headers) -> Headers:
    """The headers h11 sends when the connection must close after the message: every
    ``Connection`` field merged into sorted ``Connection: <token>`` fields at the end, with
    ``keep-alive`` dropped and ``close`` added (h11's ``set_comma_header``, title-cased name)."""
    tokens = {
        token
        for name, value in headers
        if name == b"connection"
        for token in _tokens(value)
        if token and token != b"keep-alive"
    }
    tokens.add(b"close")
    kept = [(name, value) for name, value in headers if name != b"connection"]
    return kept + [(b"Connection", token) for token in sorted(tokens)]


def without(headers: Headers, name: bytes) -> Headers:
    """``headers`` without any field called ``name`` (lowercase)."""
    return [item for item in headers if item[0] != name]
