"""Header rewriting between the client and the upstream, with nginx semantics.

Theory of operation
-------------------
Headers are what h11 gives and takes: ``list[tuple[bytes, bytes]]`` with *lowercase* names (h11
lowercases every name it parses; callers that build headers themselves must do the same).

Each direction is rewritten in one pass over the headers, using a dict that maps the few names we
care about to an action; every other header is copied in order. A second, filtering pass runs only
when something rare turns up: a ``Connection`` header naming a header that is not already
hop-by-hop, or a message carrying both ``Transfer-Encoding`` and ``Content-Length``.

Rules:

* **Hop-by-hop headers** (:data:`HOP_BY_HOP`) are removed in both directions, plus every header
  named as a token of any ``Connection`` header (comma-separated, case-insensitive, whitespace
  around tokens ignored).
* **Connection tokens cannot remove framing or Host.** A token naming ``content-length`` or
  ``host`` (:data:`PROTECTED`) is ignored: ``Connection: content-length`` would otherwise turn a
  sized body into an unframed one, a request-smuggling lever. ``transfer-encoding`` is always
  stripped anyway, and framing for the next hop is re-derived as below.
* **Framing.** ``Transfer-Encoding`` is hop-by-hop, so the received value is never copied. If the
  received message had one (h11 only accepts ``chunked``), any ``Content-Length`` is dropped too
  (RFC 9112 section 6.3: an intermediary must remove it). A kept ``Content-Length`` is the body's
  true length (h11 validated it) and is always safe to forward. Nothing is added: for a *response*
  h11's server side picks chunked (or close-delimited for HTTP/1.0 clients) by itself; for a
  *request* h11's client side frames a message without length headers as an *empty* body, so the
  caller must append ``transfer-encoding: chunked`` when the client's body was chunked (the shell
  derives the framing from the received headers; these functions never emit a Transfer-Encoding,
  so it cannot be doubled).
* **X-Forwarded-For**: every client-sent value is joined, in order, into one header and the
  client address appended: ``"a, b, client"``. **X-Forwarded-Proto** and **X-Forwarded-Host** are
  replaced, never trusted. **Via** values are joined into one header and ours appended.
  These rewritten headers go at the end of the list; every other header keeps its order.
  Because client headers are filtered *before* ours are added, ``Connection: x-forwarded-for``
  can only remove the client's own claims, never the address we append.
* ``Host`` is passed through untouched; ``Forwarded`` (RFC 7239) is passed through untouched too.
* **Date**: a response without one gets ours (RFC 9110 section 6.6.1: a recipient with a clock
  that forwards a response without Date must add one); an upstream's Date is kept as sent. The
  value is a parameter (:func:`http_date` of the wall clock, which the shell caches per second).
"""

from __future__ import annotations

from collections.abc import Iterable
from email.utils import formatdate

__all__ = [
    "HOP_BY_HOP",
    "PROTECTED",
    "Headers",
    "connection_tokens",
    "cookie_names_in_request",
    "has_token",
    "http_date",
    "prepare_request_headers",
    "prepare_response_headers",
    "set_cookie_names",
]

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

# Headers a Connection token may never remove (see the module docstring).
PROTECTED: frozenset[bytes] = frozenset({b"content-length", b"host"})

DEFAULT_VIA = b"1.1 gateproxy"

# Actions of the single pass.
_DROP = 0  # hop-by-hop: drop
_CONNECTION = 1  # drop, collect tokens
_TRANSFER_ENCODING = 2  # drop, remember the body was chunked
_CONTENT_LENGTH = 3  # keep, but remember it is there
_XFF = 4  # collect, re-emit at the end
_VIA = 5  # collect, re-emit at the end
_DATE = 6  # keep, but remember it is there

_COMMON_ACTIONS: dict[bytes, int] = dict.fromkeys(HOP_BY_HOP, _DROP)
_COMMON_ACTIONS[b"connection"] = _CONNECTION
_COMMON_ACTIONS[b"transfer-encoding"] = _TRANSFER_ENCODING
_COMMON_ACTIONS[b"content-length"] = _CONTENT_LENGTH
_COMMON_ACTIONS[b"via"] = _VIA

_RESPONSE_ACTIONS: dict[bytes, int] = dict(_COMMON_ACTIONS)
_RESPONSE_ACTIONS[b"date"] = _DATE
_REQUEST_ACTIONS: dict[bytes, int] = dict(_COMMON_ACTIONS)
_REQUEST_ACTIONS[b"x-forwarded-for"] = _XFF
_REQUEST_ACTIONS[b"x-forwarded-proto"] = _DROP
_REQUEST_ACTIONS[b"x-forwarded-host"] = _DROP

# Connection tokens that need no extra pass: already dropped, or protected.
_NO_EXTRA_PASS = HOP_BY_HOP | PROTECTED


class _Pass:
    """The result of the single pass over one message's headers."""

    __slots__ = ("chunked", "content_length", "date", "kept", "tokens", "via", "xff")

    def __init__(self) -> None:
        self.kept: Headers = []
        self.tokens: list[bytes] = []
        self.xff: list[bytes] = []
        self.via: list[bytes] = []
        self.chunked = False
        self.content_length = False
        self.date = False


def _one_pass(headers: Iterable[tuple[bytes, bytes]], actions: dict[bytes, int]) -> _Pass:
    out = _Pass()
    kept = out.kept
    for item in headers:
        action = actions.get(item[0])
        if action is None:
            kept.append(item)
        elif action == _CONNECTION:
            out.tokens.append(item[1])
        elif action == _XFF:
            out.xff.append(item[1])
        elif action == _VIA:
            out.via.append(item[1])
        elif action == _CONTENT_LENGTH:
            out.content_length = True
            kept.append(item)
        elif action == _TRANSFER_ENCODING:
            out.chunked = True
        elif action == _DATE:
            out.date = True
            kept.append(item)
        # _DROP: nothing to do
    return out


def _split_tokens(values: Iterable[bytes]) -> set[bytes]:
    tokens: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


def _finish(result: _Pass) -> Headers:
    """Apply the rare second pass: Connection-named headers and conflicting Content-Length."""
    remove: set[bytes] = set()
    if result.tokens:
        remove = _split_tokens(result.tokens) - _NO_EXTRA_PASS
        # Values collected (not kept) in the pass are forgotten here when Connection names them.
        if b"x-forwarded-for" in remove:
            result.xff.clear()
        if b"via" in remove:
            result.via.clear()
        if b"date" in remove:
            result.date = False  # dropped: ours replaces it
    if result.chunked and result.content_length:
        remove.add(b"content-length")
    if not remove:
        return result.kept
    return [item for item in result.kept if item[0] not in remove]


def _join(values: list[bytes], last: bytes) -> bytes:
    parts = [stripped for v in values if (stripped := v.strip())]
    parts.append(last)
    return b", ".join(parts)


def prepare_request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    client_ip: str,
    scheme: str = "https",
    host: bytes | None,
    via: bytes = DEFAULT_VIA,
) -> Headers:
    """Rewrite a client's request headers for the upstream.

    Strips hop-by-hop and Connection-named headers (and Content-Length if the body was chunked),
    appends ``client_ip`` to X-Forwarded-For, sets X-Forwarded-Proto to ``scheme`` and
    X-Forwarded-Host to ``host`` (the request's Host as the shell saw it; ``None`` sends no
    X-Forwarded-Host) and appends ``via`` to Via. Host is kept as sent. The caller adds
    ``transfer-encoding: chunked`` for a chunked body (see the module docstring).
    """
    result = _one_pass(headers, _REQUEST_ACTIONS)
    out = _finish(result)
    out.append((b"x-forwarded-for", _join(result.xff, client_ip.encode("ascii"))))
    out.append((b"x-forwarded-proto", scheme.encode("ascii")))
    if host is not None:
        out.append((b"x-forwarded-host", host))
    out.append((b"via", _join(result.via, via)))
    return out


def prepare_response_headers(
    headers: Iterable[tuple[bytes, bytes]], *, date: bytes | None, via: bytes = DEFAULT_VIA
) -> Headers:
    """Rewrite an upstream's response headers for the client.

    Strips hop-by-hop and Connection-named headers, drops Content-Length if the upstream also sent
    Transfer-Encoding, adds ``Date: date`` if the upstream sent no Date (``None``: add none) and
    appends ``via`` to Via. Framing is left to h11's server side.
    """
    result = _one_pass(headers, _RESPONSE_ACTIONS)
    out = _finish(result)
    if date is not None and not result.date:
        out.append((b"date", date))
    out.append((b"via", _join(result.via, via)))
    return out


def http_date(epoch_seconds: float) -> bytes:
    """The IMF-fixdate of a wall-clock time (RFC 9110 section 5.6.7): ``Sun, 06 Nov 1994
    08:49:37 GMT``."""
    return formatdate(epoch_seconds, usegmt=True).encode("ascii")


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Return the lowercased tokens of every ``Connection`` header (empty tokens skipped)."""
    return _split_tokens(value for name, value in headers if name == b"connection")


def has_token(headers: Iterable[tuple[bytes, bytes]], name: bytes, token: bytes) -> bool:
    """Whether any header called ``name`` lists ``token`` (comma-separated, case-insensitive)."""
    wanted = token.strip().lower()
    return wanted in _split_tokens(value for n, value in headers if n == name)


def cookie_names_in_request(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Return the cookie names of every ``Cookie`` header (``a=1; b=2`` gives ``{a, b}``).

    Names are case-sensitive and stripped of surrounding whitespace; a pair without ``=`` or with
    an empty name carries no name and is skipped.
    """
    names: set[bytes] = set()
    for name, value in headers:
        if name != b"cookie":
            continue
        for pair in value.split(b";"):
            cookie, eq, _ = pair.partition(b"=")
            cookie = cookie.strip()
            if eq and cookie:
                names.add(cookie)
    return names


def set_cookie_names(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """Return the cookie name of each ``Set-Cookie`` header, in order (duplicates kept).

    ``NAME=value; Path=/`` gives ``NAME``. As in RFC 6265 section 5.2, a Set-Cookie whose first
    pair has no ``=`` or an empty name is ignored.
    """
    names: list[bytes] = []
    for name, value in headers:
        if name != b"set-cookie":
            continue
        pair = value.split(b";", 1)[0]
        cookie, eq, _ = pair.partition(b"=")
        cookie = cookie.strip()
        if eq and cookie:
            names.append(cookie)
    return names
