"""What the connection machine asks its shell to do, besides moving bytes.

The machine (``core.machine``) puts bytes for each peer in two buffers and these small objects,
in order, in its ``actions`` list; the pump (``net.pump``) executes them before it sends the
buffered bytes (so deferred TLS tickets leave with the response they precede). Whatever the
pump learns from executing one (an upstream connection is ready, a pass-through answer came
back) it feeds back as an event. How the connection ends is not an action but the machine's
final ``wait`` state (``CLOSE_NOTIFY``, ``ABORT``, ``LINGER``), taken after the last bytes left.
"""

from __future__ import annotations

from gateproxy.core.config import HealthCheckConfig
from gateproxy.core.http_events import Headers


class Action:
    __slots__ = ()


class Acquire(Action):
    """Get a connection to ``server`` of ``upstream``: an idle one from the pool unless
    ``fresh``, else a new one (under the upstream's ``connect_timeout``, the machine's
    deadline). Answer with ``upstream_ready`` or ``upstream_failed``."""

    __slots__ = ("fresh", "server", "upstream")

    def __init__(self, *, upstream: str, server: str, fresh: bool) -> None:
        self.upstream = upstream
        self.server = server
        self.fresh = fresh

    def __repr__(self) -> str:
        return f"Acquire({self.upstream}/{self.server}{' fresh' if self.fresh else ''})"


class Release(Action):
    """The exchange is over: give the upstream connection back to the pool when ``reusable``,
    else close it."""

    __slots__ = ("reusable",)

    def __init__(self, *, reusable: bool) -> None:
        self.reusable = reusable

    def __repr__(self) -> str:
        return f"Release(reusable={self.reusable})"


class Enforced(Action):
    """A limit or request rule was enforced: count it and maybe log it (``limit_enforced``)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Enforced({self.reason})"


class LogRecord(Action):
    """One access-log line (``kind`` ``request``, ``health`` or ``probe``) and the request's
    latencies for the histograms: ``duration`` from its head to the end of its response,
    ``first_byte`` to the first byte of the upstream's response (-1.0: none came). ``headers``
    are the request's own (not a copy), read only when a log line is written."""

    __slots__ = (
        "bytes_sent",
        "client",
        "duration",
        "first_byte",
        "headers",
        "kind",
        "method",
        "status",
        "target",
        "upstream",
    )

    def __init__(
        self,
        *,
        kind: str,
        method: bytes,
        target: bytes,
        status: int,
        bytes_sent: int,
        upstream: str,
        duration: float,
        first_byte: float,
        headers: Headers,
        client: str | None = None,
    ) -> None:
        self.client = client  # None: the connection's client
        self.kind = kind
        self.method = method
        self.target = target
        self.status = status
        self.bytes_sent = bytes_sent
        self.upstream = upstream
        self.duration = duration
        self.first_byte = first_byte
        self.headers = headers

    def __repr__(self) -> str:
        return f"LogRecord({self.kind} {self.method!r} {self.target!r} {self.status})"


class ReleaseTickets(Action):
    """The first request that is not a health check: send the deferred TLS 1.3 tickets."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ReleaseTickets()"


class PassThrough(Action):
    """Answer a pass-through health check from the upstream's health endpoint; feed the
    answer back with ``health_answer``."""

    __slots__ = ("check",)

    def __init__(self, check: HealthCheckConfig) -> None:
        self.check = check

    def __repr__(self) -> str:
        return f"PassThrough({self.check.path})"


RELEASE_TICKETS = ReleaseTickets()
RELEASE_REUSABLE = Release(reusable=True)
RELEASE_CLOSE = Release(reusable=False)
