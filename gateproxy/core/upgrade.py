"""HTTP/1.1 Upgrade (WebSocket) pass-through, sans-IO: which requests upgrade, and the tunnel.

Theory of operation. A request *asks* to upgrade (:func:`requested_upgrade`) when it is
HTTP/1.1, carries ``Upgrade: <protocol>`` and lists ``upgrade`` in ``Connection``, and has no
body (a WebSocket handshake is a body-less GET; an Upgrade request with a body is forwarded as
an ordinary request, its hop-by-hop ``Upgrade`` dropped, as for any other request). CONNECT is
refused earlier by the request rules and never gets here. The connection machine
(``core.machine``) checks it like every request — rules, limits, health paths (answered
locally, never upgraded) — and then :func:`upgrade_refusal`: the route must allow it
(``routes[].websocket``, default true: nginx's ``proxy_set_header Upgrade/Connection``
recipe), else ``403`` as Envoy answers an upgrade it is not configured for; and the
listener's upgraded connections (per worker, like ``max_connections``) must stay under
``limits.max_upgraded_connections``, else ``503``. Either refusal is counted under
``limits`` and the connection stays usable for the next request.

A forwarded upgrade carries ``Connection: upgrade`` and the client's ``Upgrade`` value to the
upstream (:func:`upstream_upgrade_headers`). Any final response is relayed as usual and the
connection goes on as HTTP; a ``101`` is relayed with the ``Upgrade`` the upstream chose
(:func:`switched_headers`), after the session guard saw its ``Set-Cookie``, and from then on
the connection is a :class:`Tunnel`: bytes go through as they are, both ways, the bytes that
came after either head first. The upstream connection is never pooled again and the client
connection serves no more requests (the upgrade is its last).

The tunnel ends when either side closes its end (after what it sent has been passed on, the
other side is closed too, as nginx does: WebSocket has its own close handshake, so no
half-close is kept), when either side breaks, or when nothing moved either way for
``limits.websocket_idle_timeout``.
"""

from __future__ import annotations

from typing import Final

from gateproxy.core.config import LimitsConfig
from gateproxy.core.headers import has_token
from gateproxy.core.http_events import Headers, Request

UPGRADE_FORBIDDEN: Final = "upgrade_forbidden"  # the Enforced reason for a route's 403
OPEN: Final = 0  # the tunnel goes on
CLOSED: Final = 1  # a side closed its end: pass on what is buffered, then close both


def requested_upgrade(request: Request) -> bytes | None:
    """The protocol ``request`` asks to switch to (its ``Upgrade`` value), or None."""
    if request.http_version < b"1.1":
        return None
    protocol = None
    for name, value in request.headers:
        if name == b"upgrade":
            protocol = value
        elif name in (b"content-length", b"transfer-encoding") and value.strip(b" \t") != b"0":
            return None
    if not protocol or not has_token(request.headers, b"connection", b"upgrade"):
        return None
    return protocol


def upgrade_refusal(
    *, route_allows: bool, upgraded: int, limits: LimitsConfig
) -> tuple[int, str] | None:
    """``(status, reason)`` when an upgrade request may not go upstream, else None."""
    if not route_allows:
        return 403, UPGRADE_FORBIDDEN
    if upgraded >= limits.max_upgraded_connections:
        return 503, "max_upgraded_connections"
    return None


def upstream_upgrade_headers(headers: Headers, protocol: bytes) -> Headers:
    """The rewritten request head (hop-by-hop already gone) with the upgrade asked again."""
    return [*headers, (b"connection", b"upgrade"), (b"upgrade", protocol)]


def switched_headers(response_headers: Headers, rewritten: Headers) -> Headers:
    """The 101's head for the client: ``rewritten`` (hop-by-hop gone) plus the upgrade."""
    protocol = next((v for n, v in response_headers if n == b"upgrade"), None)
    out = [(n, v) for n, v in rewritten if n != b"connection"]
    out.append((b"connection", b"upgrade"))
    if protocol is not None:
        out.append((b"upgrade", protocol))
    return out


class Tunnel:
    """The byte relay of one upgraded connection (see the module docstring)."""

    __slots__ = (
        "_out_client",
        "_out_upstream",
        "bytes_to_client",
        "bytes_to_upstream",
        "deadline",
        "idle_timeout",
    )

    def __init__(
        self,
        *,
        out_client: bytearray,
        out_upstream: bytearray,
        idle_timeout: float,
        now: float,
    ) -> None:
        self._out_client = out_client
        self._out_upstream = out_upstream
        self.idle_timeout = idle_timeout
        self.deadline = now + idle_timeout
        self.bytes_to_client = 0
        self.bytes_to_upstream = 0

    def client_data(self, data: bytes, *, now: float) -> int:
        """Bytes from the client (``b""``: it closed): :data:`OPEN` or :data:`CLOSED`."""
        if not data:
            return CLOSED
        self._out_upstream += data
        self.bytes_to_upstream += len(data)
        self.deadline = now + self.idle_timeout
        return OPEN

    def upstream_data(self, data: bytes, *, now: float) -> int:
        """Bytes from the upstream (``b""``: it closed): :data:`OPEN` or :data:`CLOSED`."""
        if not data:
            return CLOSED
        self._out_client += data
        self.bytes_to_client += len(data)
        self.deadline = now + self.idle_timeout
        return OPEN

    def idle(self, *, now: float) -> bool:
        """Nothing moved either way for ``idle_timeout``."""
        return now >= self.deadline
