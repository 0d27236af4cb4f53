"""Local health-check answers: which requests are health checks, and what to answer.

A health check is an exact path (query string ignored) on a listener. gateproxy answers it
itself: 200 while at least ``min_healthy`` servers of the named upstream are usable, else 503;
405 for a method not allowed; 503 at once while draining. The answer carries
``Cache-Control: no-store`` and never a cookie.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateproxy.core.config import HealthCheckConfig


@dataclass(frozen=True, slots=True)
class HealthAnswer:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


class HealthMatcher:
    """Finds the health check configured for a request path."""

    def __init__(self, checks: Sequence[HealthCheckConfig]) -> None:
        self._by_path = {c.path.encode(): c for c in checks}

    def __bool__(self) -> bool:
        return bool(self._by_path)

    def match(self, target: bytes) -> HealthCheckConfig | None:
        if not self._by_path:
            return None
        path = target.split(b"?", 1)[0]
        return self._by_path.get(path)


def answer_health(
    check: HealthCheckConfig,
    *,
    method: bytes,
    servers_up: Sequence[str],
    servers_total: int,
    draining: bool,
) -> HealthAnswer:
    """Decide the local answer to a health-check request."""
    allowed = ", ".join(check.methods).encode()
    if method.decode("ascii", "replace") not in check.methods:
        return _answer(405, {"status": "method not allowed"}, extra=((b"allow", allowed),))
    if draining:
        return _answer(503, {"status": "draining"})
    if check.upstream is None:
        return _answer(200, {"status": "ok"})
    healthy = len(servers_up) >= check.min_healthy
    body = {
        "status": "ok" if healthy else "unavailable",
        "upstream": check.upstream,
        "servers_up": list(servers_up),
        "servers_total": servers_total,
    }
    return _answer(200 if healthy else 503, body)


def _answer(
    status: int, body: Mapping[str, object], *, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> HealthAnswer:
    data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
    headers = (
        (b"content-type", b"application/json"),
        (b"cache-control", b"no-store"),
        (b"content-length", str(len(data)).encode()),
        *extra,
    )
    return HealthAnswer(status, headers, data)
