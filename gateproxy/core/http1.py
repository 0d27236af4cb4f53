"""A narrow, strict fast path for the common HTTP/1.1 heads, in front of h11.

Theory of operation. h11 is correct but costs tens of microseconds per head on each side of the
proxy. Most traffic is plain: an HTTP/1.1 request without a body, answered with a
``Content-Length`` (or body-less) response. This module parses and writes exactly those, and
*refuses to decide* anything else: every parser returns :data:`UNUSUAL` for input it does not
fully understand, and the shell then hands the very same bytes to h11, which applies all of its
rules (and ``core.request_rules`` all of ours). So the fast path can only ever accept a subset of
what h11 accepts, and never anything ``request_rules.raw_head_problem`` would refuse:

* every line ends in CRLF (no bare LF or CR anywhere in the head), no obs-fold;
* header names are tokens, values hold no control character other than HTAB;
* request line ``METHOD SP origin-form SP HTTP/1.x`` (method ``[A-Z][A-Z0-9_-]*``, not CONNECT
  or TRACE; target starting with ``/``, visible ASCII, no ``#``; version 1.1 or 1.0, which
  health checkers such as HAProxy's ``option httpchk`` still send);
* requests: exactly one Host (HTTP/1.0: at most one), no body (no Transfer-Encoding;
  Content-Length absent or a single ``0``), and none of the headers that change h11's state
  machine (Connection, Expect, Upgrade);
* responses: status 200-599, HTTP/1.0 or 1.1, no Transfer-Encoding, at most one Content-Length
  of plain digits; a body-bearing status needs one (read-until-close is left to h11).

Parsed heads are returned as h11 events, so the rest of gateproxy sees exactly what h11 would
have produced (lowercased names). Their headers are :class:`FastHeaders`: h11's own ``Headers``,
iterated as a list instead of through ``Sequence.__iter__`` (one ``__getitem__`` call per field;
the hot path iterates each message's fields several times). ``fast_headers`` also builds the
headers of the messages gateproxy forwards, whose fields were validated when they were parsed
or made by ``core.headers``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

import h11
from h11._headers import Headers as H11Headers

MORE: Final = "more"  # the head is not complete yet (and not over its size limit)
UNUSUAL: Final = "unusual"  # not for the fast path: let h11 parse these bytes
Verdict = Literal["more", "unusual"]
# h11 events are immutable: the hot path shares one instead of building three per exchange.
END_OF_MESSAGE: Final = h11.EndOfMessage()

_REQUEST_LINE = re.compile(rb"([A-Z][A-Z0-9_-]*) (/[\x21\x22\x24-\x7e]*) HTTP/1\.([01])")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([2-5][0-9][0-9])(?: ([\x20-\x7e\t\x80-\xff]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_NOT_FAST_METHODS = frozenset({b"CONNECT", b"TRACE"})
# Request headers that make h11 (or us) do something beyond "head, no body".
_STATEFUL_REQUEST_HEADERS = frozenset(
    {b"connection", b"expect", b"upgrade", b"transfer-encoding", b"content-length", b"host"}
)
_NO_BODY_STATUSES = frozenset({204, 304})

Headers = list[tuple[bytes, bytes]]


class FastHeaders(H11Headers):
    """h11's ``Headers`` that also keep their ``(name, value)`` list and iterate over it (same
    items, same order, same equality). Like every h11 event field, never mutated."""

    __slots__ = ("_pairs",)

    def __init__(
        self, full_items: list[tuple[bytes, bytes, bytes]], pairs: list[tuple[bytes, bytes]]
    ) -> None:
        super().__init__(full_items)
        self._pairs = pairs

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._pairs)


def fast_headers(fields: Iterable[tuple[bytes, bytes]]) -> FastHeaders:
    """Already valid fields as h11 headers (names lowercased, raw names kept), skipping h11's
    re-validation: only for fields that were parsed strictly or made by gateproxy."""
    full = [(name, name.lower(), value) for name, value in fields]
    return FastHeaders(full, [(name, value) for _, name, value in full])


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A fast-parsed response head: the event, its size, the body length and keep-alive."""

    response: h11.Response
    size: int
    body_length: int
    keep_alive: bool


def _head_end(buf: bytes | bytearray, max_bytes: int) -> int | Verdict:
    """Index just past the blank line ending the head, or a verdict."""
    end = buf.find(b"\r\n\r\n", 0, max_bytes)  # a head of at most max_bytes
    if end >= 0:
        return end + 4
    if (
        len(buf) >= max_bytes
        or (buf and buf[0] < 0x21)  # h11 refuses such a start at once
        or b"\n\n" in buf
        or b"\n\r\n" in buf
    ):
        return UNUSUAL  # too big, bad start, or ended by a bare LF: h11 and request_rules decide
    return MORE


def _fields(lines: list[bytes]) -> Headers | None:
    """Strictly parsed ``name: value`` lines (names lowercased), or None if any is unusual."""
    headers: Headers = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return None
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            return None
        headers.append((name.lower(), value))
    return headers


def parse_request_head(
    buf: bytes | bytearray, *, max_bytes: int
) -> tuple[h11.Request, int] | Verdict:
    """A plain body-less HTTP/1.1 (or 1.0) request head at the start of ``buf`` and its size in
    bytes. (An HTTP/1.0 exchange never keeps the connection: h11 has no 1.0 keep-alive.)"""
    end = _head_end(buf, max_bytes)
    if isinstance(end, str):
        return end
    lines = bytes(buf[: end - 4]).split(b"\r\n")
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None or line.group(1) in _NOT_FAST_METHODS:
        return UNUSUAL
    headers = _fields(lines[1:])
    http10 = line.group(3) == b"0"
    if headers is None or not _plain_request_headers(headers, http10=http10):
        return UNUSUAL
    request = h11.Request(
        method=line.group(1),
        target=line.group(2),
        headers=fast_headers(headers),
        http_version=b"1.0" if http10 else b"1.1",
        _parsed=True,
    )
    return request, end


def _plain_request_headers(headers: Headers, *, http10: bool) -> bool:
    hosts = lengths = 0
    for name, value in headers:
        if name in _STATEFUL_REQUEST_HEADERS:
            if name == b"host":
                hosts += 1
                if not _HOST.fullmatch(value):
                    return False
            elif name == b"content-length" and value == b"0":
                lengths += 1
            else:
                return False
    return (hosts <= 1 if http10 else hosts == 1) and lengths <= 1


def parse_response_head(
    buf: bytes | bytearray, *, request_method: bytes, max_bytes: int
) -> ResponseHead | Verdict:
    """A plain final response head at the start of ``buf`` with Content-Length framing (or a
    body-less status or HEAD answer)."""
    end = _head_end(buf, max_bytes)
    if isinstance(end, str):
        return end
    lines = bytes(buf[: end - 4]).split(b"\r\n")
    line = _STATUS_LINE.fullmatch(lines[0])
    headers = _fields(lines[1:]) if line is not None else None
    if line is None or headers is None:
        return UNUSUAL
    status = int(line.group(2))
    length: int | None = None
    keep_alive = line.group(1) == b"1"
    for name, value in headers:
        if name == b"content-length":
            if length is not None or not _DIGITS.fullmatch(value):
                return UNUSUAL
            length = int(value)
        elif name == b"transfer-encoding":
            return UNUSUAL
        elif name == b"connection" and b"close" in _tokens(value):
            keep_alive = False
    if status in _NO_BODY_STATUSES or request_method == b"HEAD":
        length = 0
    elif length is None:
        return UNUSUAL  # read-until-close framing: h11's job
    response = h11.Response(
        status_code=status,
        headers=fast_headers(headers),
        reason=line.group(3) or b"",
        http_version=b"1." + line.group(1),
        _parsed=True,
    )
    return ResponseHead(response, end, length, keep_alive)


def _tokens(value: bytes) -> list[bytes]:
    return [token.strip(b" \t").lower() for token in value.split(b",")]


def write_request(method: bytes, target: bytes, headers: Headers) -> bytes:
    """Serialise a request head as h11 would (Host first). Values must already be valid: they
    come from a parsed request and ``core.headers``."""
    parts = [b"%s %s HTTP/1.1\r\n" % (method, target)]
    parts.extend(b"%s: %s\r\n" % item for item in headers if item[0] == b"host")
    parts.extend(b"%s: %s\r\n" % item for item in headers if item[0] != b"host")
    parts.append(b"\r\n")
    return b"".join(parts)


def write_response(status: int, reason: bytes, headers: Headers) -> bytes:
    """Serialise a response head as h11 would."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    parts.extend(b"%s: %s\r\n" % item for item in headers)
    parts.append(b"\r\n")
    return b"".join(parts)


def with_connection_close(headers: Headers) -> Headers:
    """The response headers h11 sends when the connection must close after the response (an
    HTTP/1.0 client): ``Connection`` fields merged into ``Connection: close`` at the end."""
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


def content_length(headers: Headers) -> int | None:
    """The single plain Content-Length of headers we are about to send, if the framing is that
    simple (no Transfer-Encoding, one value); None otherwise (h11 frames the message)."""
    length: int | None = None
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and length is not None):
            return None
        if name == b"content-length":
            if not _DIGITS.fullmatch(value):
                return None
            length = int(value)
    return length
