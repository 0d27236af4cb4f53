"""Pass-through health answers: ask the upstream's own health path, at most once per cache_time.

Theory of operation (Envoy's health-check filter with ``pass_through_mode`` and ``cache_time``).
A health check with ``mode: pass_through`` is answered from the upstream's health endpoint:
``upstream_path``, else the upstream's ``health.path``, else the check's own path. gateproxy
builds that request itself (``Host`` = ``health.host`` or the server address, a gateproxy
``User-Agent``, no ``Cookie`` and nothing else of the prober's), sends it through the upstream
group (balancer + keep-alive pool, so a down server is never asked), and relays only the status,
content type and a bounded body (``core.health.relayed_answer``: no ``Set-Cookie``, ever).

The answer is cached for the check's ``cache_time``, measured from the start of the fetch, so
the upstream sees at most one health request per ``cache_time`` whatever the probe rate.
Failures are cached too (503 naming the reason): a dead upstream is not hammered either. Probes
arriving while a fetch is in flight wait for it instead of starting another; if the fetching
task is cancelled (its client left), one of the waiters fetches instead.

The 405 and drain answers do not depend on the upstream: the caller answers them first with
``core.health.health_precheck``. Caches are per upstream group (a config generation) and held
in a weak mapping, so a reload starts with a fresh cache and an old group's cache goes with it.
"""

from __future__ import annotations

import weakref

import trio

from gateproxy.core.config import HealthCheckConfig, UpstreamHealthConfig
from gateproxy.core.forwarding import retry_on_fresh_connection
from gateproxy.core.health import (
    MAX_RELAYED_BODY,
    CachedAnswer,
    HealthAnswer,
    relayed_answer,
    unavailable_answer,
)
from gateproxy.errors import UpstreamError
from gateproxy.net.http_client import fetch
from gateproxy.net.upstream_group import UpstreamGroup

__all__ = ["PassThroughCache", "pass_through_answer", "upstream_health_path"]

USER_AGENT = b"gateproxy-health-check"
_DEFAULT_HEALTH = UpstreamHealthConfig()


def upstream_health_path(check: HealthCheckConfig, group: UpstreamGroup) -> str:
    """The path asked upstream: ``upstream_path``, the upstream's ``health.path``, the check's."""
    if check.upstream_path is not None:
        return check.upstream_path
    if group.config.health is not None:
        return group.config.health.path
    return check.path


class PassThroughCache:
    """Cached pass-through answers of one upstream group, one per upstream path."""

    def __init__(self, group: UpstreamGroup) -> None:
        self._group = weakref.ref(group)
        self._entries: dict[str, CachedAnswer] = {}
        self._inflight: dict[str, trio.Event] = {}
        self.fetches = 0

    async def answer(self, check: HealthCheckConfig, *, now: float) -> HealthAnswer:
        """The cached answer if fresh at ``now``; else the one fetch's (started or joined)."""
        group = self._group()
        if group is None:
            return unavailable_answer("upstream was reconfigured")
        path = upstream_health_path(check, group)
        while True:
            entry = self._entries.get(path)
            if entry is not None and entry.fresh(now=now, cache_time=check.cache_time):
                return entry.answer
            running = self._inflight.get(path)
            if running is None:
                break
            await running.wait()
            newer = self._entries.get(path)
            if newer is not None and newer is not entry:
                return newer.answer  # the fetch we waited for
            # that fetch was cancelled (its client left): look again, fetch if nobody does
        done = self._inflight[path] = trio.Event()
        try:
            self.fetches += 1
            answer = await _fetch(group, path)
            self._entries[path] = CachedAnswer(answer, fetched_at=now)
            return answer
        finally:
            del self._inflight[path]
            done.set()


_CACHES: weakref.WeakKeyDictionary[UpstreamGroup, PassThroughCache] = weakref.WeakKeyDictionary()


def cache_for(group: UpstreamGroup) -> PassThroughCache:
    """The pass-through cache of ``group`` (created on first use, gone with the group)."""
    cache = _CACHES.get(group)
    if cache is None:
        cache = _CACHES[group] = PassThroughCache(group)
    return cache


async def pass_through_answer(
    check: HealthCheckConfig,
    group: UpstreamGroup,
    *,
    now: float,
    cache: PassThroughCache | None = None,
) -> HealthAnswer:
    """Answer ``check`` from ``group``'s health endpoint, cached for ``check.cache_time``.

    ``now`` is ``trio.current_time()``; ``cache`` defaults to the group's own. Never raises for
    an upstream failure: that is a 503 answer. Answer 405/draining first with
    ``health_precheck``.
    """
    return await (cache or cache_for(group)).answer(check, now=now)


async def _fetch(group: UpstreamGroup, path: str) -> HealthAnswer:
    timeout = (group.config.health or _DEFAULT_HEALTH).timeout
    answer = unavailable_answer(f"no response within {timeout:g}s")
    with trio.move_on_after(timeout):
        answer = await _fetch_once(group, path, max_wait=timeout)
    return answer


async def _fetch_once(group: UpstreamGroup, path: str, *, max_wait: float) -> HealthAnswer:
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
        group.checkin(conn, reusable=reply.reusable, now=trio.current_time())
        return relayed_answer(reply.status, reply.headers, reply.body)
    raise AssertionError("unreachable: the second attempt always returns")
