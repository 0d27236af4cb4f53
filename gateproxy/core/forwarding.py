"""What gateproxy sends each way for a forwarded exchange, and when a failed one is retried.

Only assembly happens here; the header rules live in ``core.headers`` and the guard's in
``core.session_guard``. The connection machine (``core.machine``) calls these once per request
and once per response.

* :func:`request_framing` re-derives the upstream request's framing from the client's parsed
  head (the parser validated it): ``Content-Length`` as a plain number, or chunked.
* :func:`upstream_headers` rewrites the client's headers for the upstream (hop-by-hop gone,
  ``X-Forwarded-*``, ``Via``), drops ``Expect`` (gateproxy answers it) and adds the framing.
* :func:`client_headers` rewrites the upstream's response headers for the client, adding
  ``Connection: close`` when the connection ends after it and ``Date`` when the upstream sent
  none (RFC 9110 6.6.1: a proxy adds Date to a response that lacks one).
* :func:`retry_on_fresh_connection` is the one retry rule of the project (requests, pass-through
  health answers and active checks use it): a *reused* keep-alive connection that failed before
  any response byte, for a request without a body, is retried once on a new connection — the
  server merely closed an idle connection.
"""

from __future__ import annotations

from gateproxy.core.headers import prepare_request_headers, prepare_response_headers
from gateproxy.core.http_events import Headers


def header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lowercase), or None."""
    for n, v in headers:
        if n == name:
            return v
    return None


def request_framing(headers: Headers) -> tuple[Headers, bool]:
    """The framing header to send upstream, and whether the request has a body."""
    length = None
    for n, v in headers:
        if n == b"transfer-encoding":
            return [(b"transfer-encoding", b"chunked")], True
        if n == b"content-length" and length is None:
            length = v
    if length is not None:
        size = int(length)
        return [(b"content-length", b"%d" % size)], size != 0
    return [], False


def upstream_headers(
    fields: Headers,
    *,
    client_ip: str,
    scheme: str,
    host: bytes | None,
    framing: Headers,
    default_host: bytes,
) -> Headers:
    """The client's headers rewritten for the upstream, with the framing we chose."""
    headers = prepare_request_headers(fields, client_ip=client_ip, scheme=scheme, host=host)
    headers = [(n, v) for n, v in headers if n != b"expect" and n != b"content-length"]
    headers.extend(framing)
    if host is None:  # HTTP/1.0 without Host: like nginx's default $proxy_host
        headers.append((b"host", default_host))
    return headers


def client_headers(headers: Headers, *, close: bool, date: bytes) -> Headers:
    """The upstream's response headers rewritten for the client."""
    out = prepare_response_headers(headers)
    if date and not any(n == b"date" for n, _ in out):
        out.append((b"date", date))
    if close:
        out.append((b"connection", b"close"))
    return out


def retry_on_fresh_connection(
    *, attempt: int, reused: bool, bytes_received: int, has_body: bool, response_started: bool
) -> bool:
    """Whether a failed exchange is tried once more on a new connection (module docstring)."""
    return attempt == 0 and reused and bytes_received == 0 and not has_body and not response_started
