"""The request head gateproxy sends upstream for a client's request: rewritten headers, framing
re-derived from what h11 (or the fast parser) validated, and the session guard's pin and hook.

Only assembly happens here; every rule lives in ``core.headers`` and ``core.session_guard``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import h11

from gateproxy.core.headers import prepare_request_headers
from gateproxy.core.session_guard import SessionGuard, add_cookie

Headers = list[tuple[bytes, bytes]]
ResponseHook = Callable[[Headers], Headers]


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lowercase), or None."""
    for n, v in headers:
        if n == name:
            return v
    return None


def body_framing(headers: Iterable[tuple[bytes, bytes]]) -> tuple[Headers, bool]:
    """The framing header to send upstream (h11 already validated the client's)."""
    length = None
    for n, v in headers:
        if n == b"transfer-encoding":
            return [(b"transfer-encoding", b"chunked")], True
        if n == b"content-length" and length is None:
            length = v
    if length is not None:
        return [(b"content-length", b"%d" % int(length))], int(length) != 0
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
    # Framing is re-derived (h11 validated the client's); Expect is answered by us.
    headers = [(n, v) for n, v in headers if n not in (b"expect", b"content-length")]
    headers.extend(framing)
    if host is None:  # HTTP/1.0 without Host: like nginx's default $proxy_host
        headers.append((b"host", default_host))
    return headers


def apply_guard(
    guard: SessionGuard,
    headers: Headers,
    *,
    request: h11.Request,
    fields: Headers,
    client_ip: str,
    is_probe: bool,
    listener: str,
    scope: str,
) -> tuple[Headers, ResponseHook]:
    """Pin a session cookie if the guard says so; the hook reports the response head to it."""
    pin = guard.request_cookie_for(
        client=client_ip,
        request_headers=fields,
        is_probe=is_probe,
        method=request.method,
        now=time.monotonic(),  # pins are shared by every worker: one clock for all
        scope=scope,
    )
    if pin is not None:
        headers = add_cookie(headers, pin)

    def hook(response_headers: Headers) -> Headers:
        action = guard.on_response(
            request_headers=fields,
            response_headers=response_headers,
            path=request.target,
            client=client_ip,
            is_probe=is_probe,
            method=request.method,
            now=time.monotonic(),  # pins are shared by every worker: one clock for all
            listener=listener,
            scope=scope,
        )
        return action.apply(response_headers)

    return headers, hook
