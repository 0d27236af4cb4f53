"""Pass-through health answers: ask the upstream's own health path, at most once per cache_time.

Theory of operation (Envoy's health-check filter with ``pass_through_mode`` and ``cache_time``).
A health check with ``mode: pass_through`` is answered from the upstream's health endpoint:
``upstream_path``, else the upstream's ``health.path``, else the check's own path. gateproxy
builds that request itself (``Host`` = ``health.host`` or the server address, a gateproxy
``User-Agent``, nothing of the prober's: no prober ``Cookie``), sends it through the upstream
group (balancer + keep-alive pool, so a down server is never asked), and relays only the status,
content type and a bounded body (``core.health.relayed_answer``: no ``Set-Cookie``, ever).

The answer is cached for the check's ``cache_time``, measured from the start of the fetch, so
the upstream sees at most one health request per ``cache_time`` *for the whole daemon*: the
cache is ``core.pass_through.AnswerBoard`` over memory every worker maps (``net.shared``).
Failures are cached too (503 naming the reason): a dead upstream is not hammered either. A probe
arriving while a fetch is in flight, in any worker, polls the shared slot every
:data:`POLL_INTERVAL` instead of starting another; if the fetching task is cancelled (its client
left) or its process died, one of the waiters fetches instead.

The fetch is one of gateproxy's own health requests for the session guard: it carries the
session cookie the app gave gateproxy's earlier health requests to that server, and every
session the app mints for it is counted (``SessionGuard.on_own_response``).

The 405 and drain answers do not depend on the upstream: the caller answers them first with
``core.health.health_precheck``. The shared memory outlives a reload that keeps its layout
(``net.fleet_health``); cached answers are then served for the rest of their ``cache_time``.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from gateproxy.core.config import HealthCheckConfig, UpstreamHealthConfig
from gateproxy.core.forwarding import retry_on_fresh_connection
from gateproxy.core.health import (
    MAX_RELAYED_BODY,
    HealthAnswer,
    relayed_answer,
    unavailable_answer,
)
from gateproxy.core.pass_through import AnswerBoard, Fetch, Serve
from gateproxy.core.session_guard import OWN_CLIENT, SessionGuard
from gateproxy.errors import UpstreamError
from gateproxy.net.http_client import Reply, fetch
from gateproxy.net.shared import pid_alive
from gateproxy.net.upstream_group import UpstreamGroup

__all__ = ["PassThroughCache", "pass_through_answer", "upstream_health_path"]

USER_AGENT = OWN_CLIENT.encode()
POLL_INTERVAL = 0.01  # a probe waiting for another worker's fetch looks again this often
MARK_SLACK = 1.0  # a fetch mark goes stale this long after the fetch's own timeout
_DEFAULT_HEALTH = UpstreamHealthConfig()


def upstream_health_path(check: HealthCheckConfig, group: UpstreamGroup) -> str:
    """The path asked upstream: ``upstream_path``, the upstream's ``health.path``, the check's."""
    if check.upstream_path is not None:
        return check.upstream_path
    if group.config.health is not None:
        return group.config.health.path
    return check.path


class PassThroughCache:
    """The pass-through answers of a daemon: shared by its workers through ``board``.

    ``clock`` must be the same clock in every process (``time.monotonic``); ``guard`` gets
    the session cookies of the fetches. ``fetches`` counts the fetches of this process.
    """

    def __init__(
        self,
        board: AnswerBoard,
        *,
        guard: SessionGuard | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._board = board
        self._guard = guard
        self._clock = clock
        self._pid = os.getpid()
        self._ids = itertools.count(1)
        self.fetches = 0

    async def answer(self, check: HealthCheckConfig, group: UpstreamGroup) -> HealthAnswer:
        """The shared answer if fresh; else this process fetches it or waits for the fetch."""
        path = upstream_health_path(check, group)
        timeout = (group.config.health or _DEFAULT_HEALTH).timeout
        waited = 0
        while True:
            plan = self._board.begin(
                group.name,
                path,
                now=self._clock(),
                cache_time=check.cache_time,
                timeout=timeout + MARK_SLACK,
                me=self._pid,
                fetch_id=self._pid << 32 | next(self._ids),
                waited_for=waited,
                alive=pid_alive,
            )
            if isinstance(plan, Serve):
                return plan.answer
            if isinstance(plan, Fetch):
                break
            waited = plan.fetch_id
            await trio.sleep(POLL_INTERVAL)
        try:
            self.fetches += 1
            answer = await _fetch(group, path, guard=self._guard, clock=self._clock)
        except BaseException:
            self._board.abandon(group.name, path, plan, now=self._clock())
            raise
        self._board.finish(group.name, path, plan, answer, now=self._clock())
        return answer


async def pass_through_answer(
    check: HealthCheckConfig, group: UpstreamGroup, *, cache: PassThroughCache
) -> HealthAnswer:
    """Answer ``check`` from ``group``'s health endpoint, cached for ``check.cache_time``.

    Never raises for an upstream failure: that is a 503 answer. Answer 405/draining first with
    ``health_precheck``.
    """
    return await cache.answer(check, group)


@dataclass(frozen=True, slots=True)
class _Own:
    """What a fetch needs to be one of gateproxy's own requests for the session guard: it
    carries the session cookie the app gave gateproxy before, and what the app sets is seen."""

    guard: SessionGuard | None
    clock: Callable[[], float]

    def cookie(self, *, upstream: str, server: str) -> bytes | None:
        """The session cookie to send (what the app set for gateproxy's earlier requests)."""
        if self.guard is None:
            return None
        return self.guard.own_request_cookie(upstream=upstream, server=server, now=self.clock())

    def seen(
        self, reply: Reply, *, sent: bytes | None, path: str, upstream: str, server: str
    ) -> None:
        """Show the guard what the app answered (a minted session is counted and kept)."""
        if self.guard is None:
            return
        self.guard.on_own_response(
            sent=sent,
            response_headers=reply.headers,
            path=path.encode(),
            upstream=upstream,
            server=server,
            now=self.clock(),
        )


async def _fetch(
    group: UpstreamGroup, path: str, *, guard: SessionGuard | None, clock: Callable[[], float]
) -> HealthAnswer:
    timeout = (group.config.health or _DEFAULT_HEALTH).timeout
    answer = unavailable_answer(f"no response within {timeout:g}s")
    with trio.move_on_after(timeout):
        answer = await _fetch_once(group, path, max_wait=timeout, own=_Own(guard, clock))
    return answer


async def _fetch_once(
    group: UpstreamGroup, path: str, *, max_wait: float, own: _Own
) -> HealthAnswer:
    health = group.config.health or _DEFAULT_HEALTH
    for attempt in range(2):
        server = group.balancer.pick(now=trio.current_time())
        if server is None:
            return unavailable_answer("no server of this upstream is available")
        try:
            conn = await group.acquire(server, fresh=attempt > 0)
        except UpstreamError as exc:
            group.state.report_failure(server, reason="connect", now=trio.current_time())
            return unavailable_answer(exc.args[-1] if exc.args else type(exc).__name__)
        headers = [
            (b"host", (health.host or server).encode()),
            (b"user-agent", USER_AGENT),
            (b"accept", b"*/*"),
        ]
        cookie = own.cookie(upstream=group.name, server=server)
        if cookie is not None:
            headers.append((b"cookie", cookie))
        group.counters.requests += 1
        try:
            reply = await fetch(
                conn,
                conn.http,
                method=b"GET",
                target=path.encode(),
                headers=headers,
                max_body=MAX_RELAYED_BODY,
            )
        except UpstreamError as exc:
            group.discard(conn)
            if retry_on_fresh_connection(
                attempt=attempt,
                reused=conn.http.reused,
                bytes_received=conn.http.bytes_received,
                has_body=False,
                response_started=False,
            ):
                continue  # a stale keep-alive connection: once more on a fresh one
            return unavailable_answer(exc.args[-1] if exc.args else type(exc).__name__)
        except BaseException:
            group.discard(conn)
            raise
        own.seen(reply, sent=cookie, path=path, upstream=group.name, server=server)
        group.checkin(conn, reusable=reply.reusable, now=trio.current_time())
        return relayed_answer(reply.status, reply.headers, reply.body)
    raise AssertionError("unreachable: the second attempt always returns")
