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
* :func:`prepare_forward` puts these together for one request: the route (None: 404), the
  chunked-body check, the rewritten head and the session guard's pin and observer.
* :func:`retry_on_fresh_connection` is the one retry rule of the project (requests, pass-through
  health answers and active checks use it): a *reused* keep-alive connection that failed before
  any response byte, for a request without a body, is retried once on a new connection — the
  server merely closed an idle connection.
"""

from __future__ import annotations

from gateproxy.core.headers import prepare_request_headers, prepare_response_headers
from gateproxy.core.http_events import Headers, Request
from gateproxy.core.policy import ListenerPolicy
from gateproxy.core.request_rules import Rejection, chunked_body_problem
from gateproxy.core.session_guard import SessionGuard, add_cookie
from gateproxy.core.upstream_state import UpstreamState


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
    out = prepare_response_headers(headers, date=date or None)
    if close:
        out.append((b"connection", b"close"))
    return out


def retry_on_fresh_connection(
    *, attempt: int, reused: bool, bytes_received: int, has_body: bool, response_started: bool
) -> bool:
    """Whether a failed exchange is tried once more on a new connection (module docstring)."""
    return attempt == 0 and reused and bytes_received == 0 and not has_body and not response_started


class GuardContext:
    """What the session guard needs to see one response (the request as the client sent it)."""

    __slots__ = (
        "client",
        "clock_offset",
        "fields",
        "guard",
        "is_probe",
        "listener",
        "method",
        "path",
    )

    def __init__(
        self,
        *,
        guard: SessionGuard,
        fields: Headers,
        client: str,
        is_probe: bool,
        listener: str,
        method: bytes,
        path: bytes,
        clock_offset: float = 0.0,
    ) -> None:
        self.clock_offset = clock_offset  # ``now`` minus the guard's shared clock
        self.guard = guard
        self.fields = fields
        self.client = client
        self.is_probe = is_probe
        self.listener = listener
        self.method = method
        self.path = path

    def pin(self, headers: Headers, *, scope: str, now: float) -> Headers:
        """``headers`` with the session cookie pinned for this prober, if the guard has one."""
        cookie = self.guard.request_cookie_for(
            client=self.client,
            request_headers=self.fields,
            is_probe=self.is_probe,
            method=self.method,
            now=now - self.clock_offset,
            scope=scope,
        )
        return headers if cookie is None else add_cookie(headers, cookie)


class Forward:
    """A request ready to go upstream: where, with which head, and the guard's observer."""

    __slots__ = ("guard", "has_body", "headers", "upstream", "websocket")

    def __init__(
        self,
        *,
        upstream: UpstreamState,
        headers: Headers,
        has_body: bool,
        guard: GuardContext | None,
        websocket: bool = True,
    ) -> None:
        self.upstream = upstream
        self.headers = headers
        self.has_body = has_body
        self.guard = guard
        self.websocket = websocket  # the route allows upgrades (core.upgrade)


def prepare_forward(
    policy: ListenerPolicy,
    request: Request,
    *,
    client_ip: str,
    probe: bool,
    buffered: bytes,
    now: float,
    client: str | None = None,
) -> Forward | Rejection | None:
    """Route and assemble ``request`` for its upstream; None when no route matches (404), a
    rejection when the start of a chunked body (``buffered``) is already malformed.

    ``client_ip`` (the connection's) is appended to X-Forwarded-For; ``client`` (default: the
    same) is the request's client for the session guard (``trusted_forwarded``: from the XFF)."""
    fields = request.headers
    host = header(fields, b"host")
    route = policy.router.match(host=host, path=request.target)
    if route is None:
        return None
    upstream = policy.upstreams[route.upstream]
    framing, has_body = request_framing(fields)
    if framing and framing[0][0] == b"transfer-encoding":
        problem = chunked_body_problem(buffered)
        if problem is not None:
            return problem
    headers = upstream_headers(
        fields,
        client_ip=client_ip,
        scheme="https" if policy.tls else "http",
        host=host,
        framing=framing,
        default_host=route.upstream.encode(),
    )
    context = None
    if policy.guard is not None:
        context = GuardContext(
            guard=policy.guard,
            fields=fields,
            client=client or client_ip,
            is_probe=probe or policy.probes.is_probe_agent(header(fields, b"user-agent")),
            listener=policy.name,
            method=request.method,
            path=request.target,
            clock_offset=policy.service.shared_clock_offset,
        )
        headers = context.pin(headers, scope=upstream.name, now=now)
    return Forward(
        upstream=upstream,
        headers=headers,
        has_body=has_body,
        guard=context,
        websocket=route.websocket,
    )
