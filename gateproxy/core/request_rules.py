"""Requests gateproxy refuses to forward even though h11 parsed them (smuggling, odd forms).

Theory of operation. h11 parses every client request and rejects most malformed input itself
(its ``RemoteProtocolError`` carries the status). It is, however, lenient in places where an
upstream server could read the same bytes differently, and gateproxy re-serialises every
forwarded request through h11 in one canonical form, so anything h11 *normalised away* is
invisible downstream of it. Two pure checks close those gaps, both returning ``(status, rule)``
for a request that must be answered locally (and never forwarded), or None:

* :func:`reject_reason` looks at the parsed :class:`h11.Request` (runs on every request before
  routing).
* :func:`raw_head_problem` looks at the raw bytes of the request head, for what h11 accepts and
  then hides: bare LF line endings, obs-fold continuation lines, duplicated Content-Length lines
  (h11 merges equal values), and the RFC status for a Transfer-Encoding where ``chunked`` is not
  final (h11 answers 501 for every non-``chunked`` coding).
* :func:`chunked_body_problem` checks the chunked body bytes that already arrived with the head
  (h11's ``trailing_data``), so a malformed chunk sent together with its head is refused before
  an upstream connection is even opened, as h11 would refuse it later.

The rule names below are counted in ``listeners.<name>.limits.<rule>``.

Rules (input: what h11 does; status, rule):

* Content-Length and Transfer-Encoding together: h11 accepts (chunked wins); 400,
  ``content_length_with_transfer_encoding``.
* Transfer-Encoding where ``chunked`` is not the final coding, or appears twice: h11 says 501;
  400 (RFC 9112 6.3), ``chunked_not_final``.
* Transfer-Encoding with any other coding (``gzip``, ``gzip, chunked``): h11 says 501; 501,
  ``unsupported_transfer_coding`` (as nginx).
* Two Content-Length lines or a list (``5, 5``): h11 merges equal values; 400,
  ``duplicate_content_length`` (as nginx). Differing or malformed values: h11's 400.
* Absolute-form target (``GET http://host/``): h11 accepts; 400, ``absolute_form_target``.
* Asterisk-form (``OPTIONS *``): h11 accepts; 400, ``asterisk_form_target`` (as nginx).
* Any other target not starting with ``/``: 400, ``invalid_target``; ``#`` in the target: 400,
  ``fragment_in_target``.
* CONNECT: 405, ``connect_method``; TRACE (cross-site tracing): 405, ``trace_method`` (as nginx).
* A body on GET, HEAD or TRACE (Content-Length > 0 or chunked): 400, ``body_not_allowed``.
* A method that is not ``[A-Z][A-Z0-9_-]*`` (``get``): 400, ``invalid_method`` (as nginx).
* An HTTP version other than 1.0/1.1 (h11 accepts ``HTTP/2.0``): 505, ``http_version``.
* A control character other than HTAB in a header (h11 accepts 0x01-0x1f and 0x7f): 400,
  ``control_character``. NUL or CR, a space before the colon: h11's 400 (the raw check agrees).
* A Host that is not ``host[:port]`` (``a/b``, ``user@a``): 400, ``invalid_host``.
* obs-fold, a header line starting with SP/HTAB: h11 unfolds it; 400, ``obs_fold``.
* Bare LF line endings: h11 accepts them; 400, ``bare_lf`` (bare CR: ``bare_cr``).
* A malformed chunk-size line (not hex, over 20 digits, ``0x``, a bare LF in an extension) or
  chunk data longer than its size: 400, ``invalid_chunk`` (h11 agrees, but only once it reads
  that far; by then the request head would already be upstream). Chunk extensions themselves are
  accepted and dropped: the re-serialised body carries none.

Choices. *Absolute-form*: nginx accepts it and routes by its authority; gateproxy has no forward
proxy clients, and routing by ``Host`` while the upstream reads the authority in the target is a
classic confusion, so it is refused rather than rewritten. *Bodies on GET/HEAD*: RFC 9110 allows
them (no semantics) and nginx forwards them, but an upstream that ignores them reads the body as
the next request on a shared keep-alive connection, so any non-empty body (Content-Length > 0 or
chunked) is refused; ``Content-Length: 0`` is fine. *TRACE* is refused like nginx does (405).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol

Rejection = tuple[int, str]

_METHOD = re.compile(rb"[A-Z][A-Z0-9_-]*")
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://")
_HEAD_END = re.compile(rb"\n\r?\n")  # where h11 ends a head (it accepts bare LF)
_NO_BODY_METHODS = frozenset({b"GET", b"HEAD", b"TRACE"})
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\r\n]*)?[ \t]*\r\n")  # h11's chunk_header
_HEX_PREFIXES = frozenset(bytes([c]) for c in b"0123456789abcdefABCDEF")
_BAD_CHUNK = (400, "invalid_chunk")


class RequestLike(Protocol):
    """A parsed request head (gateproxy's ``http_events.Request`` or h11's)."""

    @property
    def method(self) -> bytes: ...
    @property
    def target(self) -> bytes: ...
    @property
    def http_version(self) -> bytes: ...
    @property
    def headers(self) -> Iterable[tuple[bytes, bytes]]: ...


def reject_reason(request: RequestLike) -> Rejection | None:
    """The status and rule name for a parsed request that must not be forwarded, or None."""
    return (
        _version_problem(request.http_version)
        or _method_problem(request.method)
        or _target_problem(request.target)
        or _header_problem(request.headers)
        or _framing_problem(request.method, request.headers)
    )


def raw_head_problem(head: bytes) -> Rejection | None:
    """The status and rule for a raw request head h11 would accept or misreport, or None.

    ``head`` starts at the request line; bytes after the end of the head (a body, a pipelined
    request) are ignored, and a head without its end is checked as far as it goes.
    """
    end = _HEAD_END.search(head)
    head = head[: end.end()] if end else head
    lines = head.split(b"\n")
    for index, line in enumerate(lines):
        last = index == len(lines) - 1
        if not last and not line.endswith(b"\r"):
            return 400, "bare_lf"
        if b"\r" in (line.removesuffix(b"\r") if last else line[:-1]):
            return 400, "bare_cr"
        if b"\x00" in line:
            return 400, "control_character"
        if index > 0 and line[:1] in (b" ", b"\t"):
            return 400, "obs_fold"
    fields = [_split_field(line.rstrip(b"\r")) for line in lines[1:]]
    if any(name != name.rstrip(b" \t") for name, _ in fields):
        return 400, "space_before_colon"
    lengths = [value for name, value in fields if name.lower() == b"content-length"]
    codings = [value for name, value in fields if name.lower() == b"transfer-encoding"]
    if len(lengths) > 1 or any(b"," in value for value in lengths):
        return 400, "duplicate_content_length"
    return _transfer_encoding_problem(codings, has_length=bool(lengths))


def chunked_body_problem(data: bytes) -> Rejection | None:
    """The status and rule for the start of a chunked body that h11 will refuse, or None.

    ``data`` is what arrived so far after the head; it is checked chunk by chunk as far as it
    goes (trailers after the last chunk are left to h11).
    """
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            partial = data[pos:]
            return None if partial[:1] in _HEX_PREFIXES and len(partial) < 1024 else _BAD_CHUNK
        line = _CHUNK_LINE.fullmatch(data, pos, end + 1)
        if line is None:
            return _BAD_CHUNK
        size = int(line.group(1), 16)
        if size == 0:
            return None
        pos = end + 1 + size
        if data[pos : pos + 2] not in (b"\r\n", b"\r", b""):
            return _BAD_CHUNK
        pos += 2
    return None


def _split_field(line: bytes) -> tuple[bytes, bytes]:
    name, _, value = line.partition(b":")
    return name, value.strip(b" \t")


def _version_problem(version: bytes) -> Rejection | None:
    return None if version in (b"1.0", b"1.1") else (505, "http_version")


def _method_problem(method: bytes) -> Rejection | None:
    if not _METHOD.fullmatch(method):
        return 400, "invalid_method"
    if method == b"CONNECT":
        return 405, "connect_method"
    return None


def _target_problem(target: bytes) -> Rejection | None:
    if target == b"*":
        return 400, "asterisk_form_target"
    if _SCHEME.match(target):
        return 400, "absolute_form_target"
    if not target.startswith(b"/") or _CONTROL.search(target) or b" " in target:
        return 400, "invalid_target"
    if b"#" in target:
        return 400, "fragment_in_target"
    return None


def _header_problem(headers: Iterable[tuple[bytes, bytes]]) -> Rejection | None:
    for name, value in headers:
        if _CONTROL.search(name) or _CONTROL.search(value):
            return 400, "control_character"
        if name == b"host" and not _HOST.fullmatch(value):
            return 400, "invalid_host"
    return None


def _framing_problem(method: bytes, headers: Iterable[tuple[bytes, bytes]]) -> Rejection | None:
    lengths = [value for name, value in headers if name == b"content-length"]
    codings = [value for name, value in headers if name == b"transfer-encoding"]
    problem = _transfer_encoding_problem(codings, has_length=bool(lengths))
    if problem is not None:
        return problem
    if len(lengths) > 1:
        return 400, "duplicate_content_length"
    has_body = bool(codings) or any(value.strip(b"0") for value in lengths)
    if has_body and method in _NO_BODY_METHODS:
        return 400, "body_not_allowed"
    if method == b"TRACE":
        return 405, "trace_method"
    return None


def _transfer_encoding_problem(values: list[bytes], *, has_length: bool) -> Rejection | None:
    """RFC 9112 6.1/6.3 for the Transfer-Encoding field lines of a request (maybe none)."""
    if not values:
        return None
    if has_length:
        return 400, "content_length_with_transfer_encoding"
    codings = [c.strip(b" \t").lower() for value in values for c in value.split(b",")]
    codings = [c for c in codings if c]
    if b"chunked" in codings and (codings[-1] != b"chunked" or codings.count(b"chunked") > 1):
        return 400, "chunked_not_final"
    if codings != [b"chunked"]:
        return 501, "unsupported_transfer_coding"
    return None
