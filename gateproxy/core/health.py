"""Health checks: local answers to probers, pass-through answers, and the rise/fall machine.

A health check is an exact path (query string ignored) on a listener. gateproxy answers it
itself: 200 while at least ``min_healthy`` servers of the named upstream are usable, else 503;
405 for a method not allowed; 503 at once while draining. The answer carries
``Cache-Control: no-store`` and never a cookie.

In ``pass_through`` mode the answer comes from the upstream's own health path instead
(:func:`health_precheck` still answers 405 and the drain 503 locally; :func:`relayed_answer`
turns the upstream's response into an answer that keeps only its status, content type and a
bounded body; :class:`CachedAnswer` says whether an answer may be served again).

Active upstream checks feed :class:`ServerHealth`, HAProxy's rise/fall counter (rules there);
:class:`HealthBoard` holds one per checked server of a daemon and says which verdicts changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
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
    early = health_precheck(check, method=method, draining=draining)
    if early is not None:
        return early
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


def health_decision(
    check: HealthCheckConfig,
    *,
    method: bytes,
    servers_up: Sequence[str] | None,
    servers_total: int,
    draining: bool,
) -> HealthAnswer | HealthCheckConfig:
    """The answer to a health request, or the ``check`` itself when it is a pass-through one
    the upstream must answer (``servers_up`` None: the check names no upstream)."""
    if check.mode == "pass_through" and servers_up is not None:
        return health_precheck(check, method=method, draining=draining) or check
    return answer_health(
        check,
        method=method,
        servers_up=servers_up or [],
        servers_total=servers_total,
        draining=draining,
    )


def health_precheck(
    check: HealthCheckConfig, *, method: bytes, draining: bool
) -> HealthAnswer | None:
    """The answers that never depend on the upstream: 405 for a method not allowed, 503 while
    draining; None when the check must be answered from the upstream's state (or its reply)."""
    if method.decode("ascii", "replace") not in check.methods:
        allowed = ", ".join(check.methods).encode()
        return _answer(405, {"status": "method not allowed"}, extra=((b"allow", allowed),))
    if draining:
        return _answer(503, {"status": "draining"})
    return None


#: Largest upstream health body relayed in pass-through mode; longer bodies are cut.
MAX_RELAYED_BODY = 4096


def relayed_answer(
    status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes
) -> HealthAnswer:
    """The pass-through answer built from the upstream's health response.

    Only the status, ``Content-Type`` and the first :data:`MAX_RELAYED_BODY` bytes of the body
    are kept: ``Set-Cookie`` and every other upstream header are dropped, and the answer gets
    ``Cache-Control: no-store`` like a local one. A status outside 200-599 becomes 502.
    """
    if not 200 <= status <= 599:
        return unavailable_answer(f"upstream answered {status}")
    data = body[:MAX_RELAYED_BODY]
    content_type = next((v for n, v in headers if n.lower() == b"content-type"), None)
    out = [
        *([(b"content-type", content_type)] if content_type is not None else []),
        (b"cache-control", b"no-store"),
        (b"content-length", str(len(data)).encode()),
    ]
    return HealthAnswer(status, tuple(out), data)


def unavailable_answer(reason: str) -> HealthAnswer:
    """503 for a pass-through check whose upstream could not be asked (``reason`` says why)."""
    return _answer(503, {"status": "unavailable", "error": reason})


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A pass-through answer and when it was fetched; fresh for ``cache_time`` seconds."""

    answer: HealthAnswer
    fetched_at: float

    def fresh(self, *, now: float, cache_time: float) -> bool:
        """Whether the answer may still be served at ``now`` (a clock going back counts as
        fresh: the upstream is never asked twice because of clock noise)."""
        return now < self.fetched_at + cache_time


class ServerHealth:
    """Rise/fall state of one server under active checks: HAProxy's health counter.

    Rules (HAProxy ``check`` with ``rise``/``fall``, ``init-state up``):

    * A server starts **up but unconfirmed**: traffic goes to it from the start, and the first
      failed check before any passed one takes it down at once (a server that is dead at
      start-up is found after one check, not ``fall`` checks).
    * Once a check has passed, an up server goes down after ``fall`` *consecutive* failed
      checks; a passed check in between resets the count.
    * A down server comes back up after ``rise`` consecutive passed checks; a failed check in
      between starts the count again.

    The state is one integer, ``health`` in ``0 .. rise + fall - 1``: up iff ``health >= rise``.
    A pass while up sets it to the top; a failure while up decrements it and, at ``rise``,
    drops it to 0 (down); a pass while down increments it and, on reaching ``rise``, sets it
    to the top; a failure while down resets it to 0. It starts at ``rise``. The machine has no
    clock: the prober decides when a check happens and what counts as passed.
    """

    __slots__ = ("_fall", "_rise", "health")

    def __init__(self, *, rise: int, fall: int) -> None:
        if rise < 1 or fall < 1:
            raise ValueError(f"rise and fall must be >= 1, got rise={rise}, fall={fall}")
        self._rise = rise
        self._fall = fall
        self.health = rise

    @property
    def healthy(self) -> bool:
        """Whether the server may receive traffic."""
        return self.health >= self._rise

    def record(self, ok: bool) -> bool:
        """Record one check result; return True when ``healthy`` changed."""
        was = self.healthy
        top = self._rise + self._fall - 1
        if ok:
            self.health = top if was or self.health + 1 >= self._rise else self.health + 1
        elif was and self.health > self._rise:
            self.health -= 1
        else:
            self.health = 0
        return self.healthy != was


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


@dataclass(frozen=True, slots=True)
class Verdict:
    """The active checks' verdict on one server of one upstream."""

    upstream: str
    server: str
    healthy: bool


class HealthBoard:
    """The rise/fall state of every actively checked server of a daemon, and what changed.

    One board per daemon (the supervisor's, or a plain daemon's): the checker records each
    result and gets back the :class:`Verdict` to tell the balancers when the server's health
    changed. :meth:`verdicts` is the current state, for a worker that starts later. A server
    keeps its state across a reload while its upstream checks it with the same rise and fall.
    """

    def __init__(self) -> None:
        self._servers: dict[tuple[str, str], tuple[ServerHealth, int, int]] = {}

    def record(
        self, upstream: str, server: str, *, ok: bool, rise: int, fall: int
    ) -> Verdict | None:
        """Record one check result; the new verdict if the server's health changed."""
        key = (upstream, server)
        known = self._servers.get(key)
        if known is None or known[1:] != (rise, fall):
            health = ServerHealth(rise=rise, fall=fall)
            if known is not None and not known[0].healthy:
                health.health = 0  # new rise/fall: a down server stays down until it rises
            known = self._servers[key] = (health, rise, fall)
        health = known[0]
        if health.record(ok):
            return Verdict(upstream, server, health.healthy)
        return None

    def keep_only(self, checked: Iterable[tuple[str, str]]) -> None:
        """Forget the servers no longer checked (after a reload)."""
        keep = set(checked)
        for key in [k for k in self._servers if k not in keep]:
            del self._servers[key]

    def verdicts(self) -> list[Verdict]:
        return [Verdict(u, s, h.healthy) for (u, s), (h, _, _) in self._servers.items()]
