"""Pass-through health answers: the upstream's own health path, hit at most once per cache_time.

The first tests drive ``net.health_pass`` directly against a real Tomcat-like app (the cache's
clock is a parameter, so it needs no clock games); the last ones go through the running proxy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme

from gateproxy.core.config import HealthCheckConfig, UpstreamConfig
from gateproxy.core.metrics import UpstreamCounters
from gateproxy.core.pass_through import memory_board
from gateproxy.net.health_pass import PassThroughCache, pass_through_answer, upstream_health_path
from gateproxy.net.upstream_group import UpstreamGroup
from tests.conftest import CertPaths
from tests.helpers.clients import Request, https_exchange
from tests.helpers.proxy import address, proxy_config, running_proxy, tls_listener
from tests.helpers.supervised import supervised
from tests.helpers.upstreams import RecordingUpstream, SessionApp, refused_address


def _check(**kw: Any) -> HealthCheckConfig:
    return HealthCheckConfig.model_validate(
        {"path": "/healthz", "upstream": "app", "mode": "pass_through", **kw}
    )


def _group(*servers: str, **config: Any) -> UpstreamGroup:
    upstream = UpstreamConfig.model_validate({"servers": list(servers), **config})
    return UpstreamGroup("app", upstream, counters=UpstreamCounters())


class Clock:
    """The cache's clock, set by the test."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _cache(clock: Clock | None = None) -> PassThroughCache:
    return PassThroughCache(memory_board(), clock=clock or Clock())


def test_upstream_path_choice() -> None:
    plain, checked = _group("a:1"), _group("a:1", health={"path": "/ready"})
    assert upstream_health_path(_check(upstream_path="/status"), checked) == "/status"
    assert upstream_health_path(_check(), checked) == "/ready"
    assert upstream_health_path(_check(), plain) == "/healthz"


async def test_concurrent_probes_share_one_fetch_per_cache_time() -> None:
    async with SessionApp() as app:
        group = _group(app.address)
        clock = Clock()
        cache = _cache(clock)
        check = _check(upstream_path="/status", cache_time="1s")
        answers = []

        async def probe(now: float) -> None:
            clock.now = now
            answers.append(await pass_through_answer(check, group, cache=cache))

        async with trio.open_nursery() as nursery:  # 50 probes while the fetch is in flight
            for _ in range(50):
                nursery.start_soon(probe, 100.0)
        for now in (100.2, 100.5, 100.999):
            await probe(now)
        assert app.requests == 1 and cache.fetches == 1
        await probe(101.0)  # cache_time later: asked again
        assert app.requests == 2
        group.close_idle()
    first = answers[0]
    assert all(a == first for a in answers[:53])
    assert first.status == 200 and first.body.startswith(b"session ")
    headers = dict(first.headers)
    assert b"set-cookie" not in headers and headers[b"cache-control"] == b"no-store"
    assert headers[b"content-type"] == b"text/plain"
    seen = app.recorded[0]
    assert seen.target == "/status" and seen.header("cookie") is None
    assert seen.header("user-agent") == "gateproxy-health-check"
    assert len({r.connection_id for r in app.recorded}) == 1  # the kept-alive pool connection


async def test_upstream_status_is_relayed_and_failures_are_cached() -> None:
    async with RecordingUpstream(status=503, body=b"db down\n") as app:
        group = _group(app.address, health={"path": "/ready", "host": "app.internal"})
        answer = await pass_through_answer(_check(), group, cache=_cache())
        group.close_idle()
    assert (answer.status, answer.body) == (503, b"db down\n")
    assert app.requests[0].header("host") == "app.internal"

    group = _group(refused_address(), health={"timeout": "1s"})
    clock = Clock()
    cache = _cache(clock)
    refused = await pass_through_answer(_check(cache_time="5s"), group, cache=cache)
    clock.now = 4.0
    again = await pass_through_answer(_check(cache_time="5s"), group, cache=cache)
    assert refused.status == 503 and b"connect failed" in refused.body
    assert again == refused and cache.fetches == 1  # a dead upstream is not hammered


async def test_no_usable_server_is_503_without_connecting() -> None:
    async with SessionApp() as app:
        group = _group(app.address)
        group.balancer.set_healthy(app.address, healthy=False)
        answer = await pass_through_answer(_check(), group, cache=_cache())
    assert answer.status == 503 and b"no server" in answer.body
    assert app.requests == 0


async def test_slow_upstream_hits_the_probe_timeout() -> None:
    hold = trio.Event()
    async with RecordingUpstream(hold=hold) as app:
        group = _group(app.address, health={"timeout": "200ms"})
        with trio.fail_after(2):
            answer = await pass_through_answer(_check(), group, cache=_cache())
        hold.set()
        group.close_idle()
    assert answer.status == 503 and b"no response within 0.2s" in answer.body


async def test_cancelled_fetch_lets_a_waiter_fetch() -> None:
    hold = trio.Event()
    async with RecordingUpstream(hold=hold) as app:
        group = _group(app.address)
        cache = _cache()
        check = _check(cache_time="10s")
        got = []
        first = trio.CancelScope()

        async def fetcher() -> None:
            with first:
                await pass_through_answer(check, group, cache=cache)

        async def waiter() -> None:
            got.append(await pass_through_answer(check, group, cache=cache))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetcher)
            await app.wait_for(lambda: len(app.requests) == 1)  # the first fetch is in flight
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()  # ... and the waiter waits for it
            first.cancel()  # its client left
            await app.wait_for(lambda: len(app.requests) == 2)  # the waiter fetched instead
            hold.set()
        group.close_idle()
    assert cache.fetches == 2 and [a.status for a in got] == [200]


# --- through the proxy --------------------------------------------------------------------------


def _proxy_config(server_cert: CertPaths, app: str, **check: Any) -> dict[str, Any]:
    listener = tls_listener(
        cert=server_cert.cert,
        key=server_cert.key,
        health_checks=[
            {"path": "/healthz", "upstream": "app", "mode": "pass_through", **check},
        ],
        limits={"max_requests_per_connection": 0},
    )
    return proxy_config([listener], {"app": {"servers": [app]}})


async def test_pass_through_burst_hits_the_upstream_once_per_cache_time(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    async with SessionApp() as app:
        config = _proxy_config(server_cert, app.address, upstream_path="/status", cache_time="1s")
        async with running_proxy(config) as daemon:
            probes = [Request(path="/healthz", headers=[("Cookie", "JSESSIONID=from-prober")])]
            started = trio.current_time()
            responses = await https_exchange(address(daemon), probes * 300, ca=ca)
            elapsed = trio.current_time() - started
    assert {r.status for r in responses} == {200}
    assert all(r.header("set-cookie") is None for r in responses)
    assert responses[0].body.startswith(b"session ")  # the app's own answer
    assert 1 <= app.requests <= 1 + int(elapsed / 1.0)
    assert all(r.target == "/status" for r in app.recorded)
    assert all("from-prober" not in (r.header("cookie") or "") for r in app.recorded)
    assert app.sessions_created == 1  # later fetches send back gateproxy's own session


async def test_pass_through_relays_an_unhealthy_upstream(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    async with RecordingUpstream(status=503, body=b"db down\n") as app:
        async with running_proxy(_proxy_config(server_cert, app.address)) as daemon:
            probes = [Request(path="/healthz"), Request(method="POST", path="/healthz")]
            responses = await https_exchange(address(daemon), probes, ca=ca)
    assert (responses[0].status, responses[0].body) == (503, b"db down\n")
    assert responses[1].status == 405  # method rules stay local
    assert len(app.requests) == 1 and app.requests[0].target == "/healthz"


async def test_the_fetch_sends_back_the_session_the_app_gave_it(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    """Each fetch (one per cache_time) carries the app's session: one session, not one a fetch."""
    async with SessionApp() as app:
        config = _proxy_config(server_cert, app.address, upstream_path="/status", cache_time="0s")
        async with running_proxy(config) as daemon:
            await https_exchange(address(daemon), [Request(path="/healthz")] * 5, ca=ca)
            guard = daemon.stats()["session_guard"]
    assert app.requests == 5  # cache_time 0: every probe is a fetch
    assert app.sessions_created == 1
    cookies = [r.header("cookie") for r in app.recorded]
    assert cookies[0] is None and len(set(cookies[1:])) == 1 and cookies[1] is not None
    assert guard["minted_by_health_checks"] == 1 and guard["minted_for_probes"] == 1  # type: ignore[index]


async def _probe_from_many_connections(
    address: str, ca: trustme.CA, *, connections: int, per_connection: int
) -> list[int]:
    statuses: list[int] = []

    async def one() -> None:
        answers = await https_exchange(address, [Request(path="/healthz")] * per_connection, ca=ca)
        statuses.extend(r.status for r in answers)

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(one)
    return statuses


def _per_worker(stats: dict[str, Any], key: str) -> list[int]:
    return [w["stats"]["listeners"]["public"]["requests"][key] for w in stats["workers"]]


@pytest.mark.slow
async def test_cache_time_holds_for_the_whole_daemon_with_two_workers(
    tmp_path: Path, ca: trustme.CA, server_cert: CertPaths
) -> None:
    """300 probes on 30 connections spread over 2 workers: the upstream is asked as if by one.

    Fetches start at least cache_time apart daemon-wide, all within ``elapsed``, so there are at
    most floor(elapsed / cache_time) + 1 of them (per-worker caches: one per worker at least).
    """
    async with SessionApp() as app:
        config = _proxy_config(server_cert, app.address, upstream_path="/status", cache_time="1s")
        async with supervised({**config, "workers": 2}, tmp_path) as gp:
            started = trio.current_time()
            statuses = await _probe_from_many_connections(
                gp.address(), ca, connections=30, per_connection=10
            )
            elapsed = trio.current_time() - started
            stats = await gp.stats()
    assert statuses == [200] * 300
    served = _per_worker(stats, "health_checks")
    assert len(served) == 2 and all(n > 0 for n in served) and sum(served) == 300, served
    assert 1 <= app.requests <= math.floor(elapsed / 1.0) + 1, (app.requests, elapsed)
    assert app.sessions_created == 1  # and every later fetch carries that session
    assert stats["session_guard"]["minted_by_health_checks"] == 1
