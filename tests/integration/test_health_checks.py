"""Local health answers and active upstream checks through the running proxy.

The seed scenario of the session-hygiene issue: a prober without cookies hitting ``/healthz``
against an app that mints a session for every cookie-less request. Behind a plain forwarding
proxy each probe is one app session; with a local health check it is none, and no TLS session
state is left at the front door either.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from gateproxy.daemon import Daemon
from tests.conftest import CertPaths
from tests.helpers.clients import Request, https_exchange, https_request
from tests.helpers.proxy import address, proxy_config, running_proxy, tls_listener
from tests.helpers.supervised import supervised
from tests.helpers.upstreams import RecordedRequest, RecordingUpstream, Response, SessionApp

HEALTHZ = {"path": "/healthz", "upstream": "app"}
NO_REQUEST_CAP = {"max_requests_per_connection": 0}
INTERVAL = 0.1
RISE, FALL = 2, 3
SLACK = 0.3  # scheduling slack on a loaded CI machine, on top of the intervals


def _config(
    server_cert: CertPaths,
    servers: list[str],
    *,
    health_checks: list[dict[str, Any]] | None = None,
    **upstream: Any,
) -> dict[str, Any]:
    listener = tls_listener(
        cert=server_cert.cert,
        key=server_cert.key,
        health_checks=[HEALTHZ] if health_checks is None else health_checks,
        limits=NO_REQUEST_CAP,
    )
    return proxy_config([listener], {"app": {"servers": servers, **upstream}})


def _stats(daemon: Daemon, *path: str) -> Any:
    node: Any = daemon.stats()
    for key in path:
        node = node[key]
    return node


async def test_burst_of_1000_probes_reaches_nothing_upstream(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    async with SessionApp() as app, running_proxy(_config(server_cert, [app.address])) as daemon:
        probes = [Request(path="/healthz")] * 500 + [Request(method="HEAD", path="/healthz")] * 500
        with trio.fail_after(30):
            responses = await https_exchange(address(daemon), probes, ca=ca)
        requests = _stats(daemon, "listeners", "public", "requests")
    assert [r.status for r in responses] == [200] * 1000
    assert all(r.header("set-cookie") is None for r in responses)
    assert all(r.header("cache-control") == "no-store" for r in responses)
    assert responses[0].header("content-type") == "application/json"
    assert responses[-1].body == b""  # HEAD
    assert (app.requests, app.sessions_created, app.live_sessions) == (0, 0, 0)
    assert requests["health_checks"] == 1000 and requests["total"] == 0


async def test_seed_scenario_prober_creates_sessions_only_without_local_health(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    """600 probes (10/s for a minute; the prober reconnects every 10 s), before and after."""
    probes_per_connection, connections = 100, 6
    probes = [Request(path="/healthz")] * probes_per_connection
    async with SessionApp() as app:
        before = _config(server_cert, [app.address], health_checks=[])
        async with running_proxy(before) as daemon:
            with trio.fail_after(30):
                for _ in range(connections):
                    await https_exchange(address(daemon), probes, ca=ca)
        assert app.sessions_created == 600  # one app session per probe
        created_before = app.sessions_created

        async with running_proxy(_config(server_cert, [app.address])) as daemon:
            with trio.fail_after(30):
                for _ in range(connections):
                    answers = await https_exchange(address(daemon), probes, ca=ca)
                    assert {r.status for r in answers} == {200}
                    assert not any(r.session_reused for r in answers)
            listener = _stats(daemon, "listeners", "public")
    assert app.sessions_created == created_before  # zero new app sessions
    assert listener["requests"]["health_checks"] == 600
    assert listener["tls"]["session_cache"]["entries"] == 0  # no TLS session state either
    assert listener["tls"]["tickets"]["issued"] == 0


def _health_app(state: dict[str, int]) -> RecordingUpstream:
    def respond(request: RecordedRequest) -> Response:
        if request.target == "/health":
            return Response(status=state["health"], body=b"health\n")
        return Response(body=b"page\n")

    return RecordingUpstream(respond=respond)


async def _wait_usable(daemon: Daemon, count: int, *, within: float) -> float:
    """Seconds until the upstream has ``count`` usable servers; fails after ``within``."""
    group = daemon.runtime.upstreams["app"]
    started = trio.current_time()
    with trio.fail_after(within):
        while True:  # the prober's verdicts land in the balancer: poll it in process
            now = trio.current_time()
            if group.balancer.usable_count(now=now) == count:
                return now - started
            await trio.sleep(0.005)


async def test_active_checks_turn_health_503_within_fall_and_200_within_rise(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    state = {"health": 200}
    health = {"interval": f"{INTERVAL}s", "timeout": "1s", "rise": RISE, "fall": FALL}
    async with _health_app(state) as app:
        config = _config(server_cert, [app.address], health=health)
        async with running_proxy(config) as daemon:
            await app.wait_for(lambda: len(app.requests) >= 2)  # confirmed up
            assert (await https_request(address(daemon), ca=ca, path="/healthz")).status == 200

            state["health"] = 503
            down_after = await _wait_usable(daemon, 0, within=FALL * INTERVAL + SLACK)
            answer = await https_request(address(daemon), ca=ca, path="/healthz")
            assert answer.status == 503
            assert b'"servers_up":[]' in answer.body

            # all servers down: a proxied request is 503 at once and never reaches the app
            forwarded = len([r for r in app.requests if r.target != "/health"])
            started = trio.current_time()
            page = await https_request(address(daemon), ca=ca, path="/page")
            assert page.status == 503 and trio.current_time() - started < 0.5
            assert len([r for r in app.requests if r.target != "/health"]) == forwarded

            state["health"] = 200
            up_after = await _wait_usable(daemon, 1, within=RISE * INTERVAL + SLACK)
            assert (await https_request(address(daemon), ca=ca, path="/healthz")).status == 200
            assert (await https_request(address(daemon), ca=ca, path="/page")).body == b"page\n"
    assert down_after <= FALL * INTERVAL + SLACK
    assert up_after <= RISE * INTERVAL + SLACK
    probes = [r for r in app.requests if r.target == "/health"]
    assert all(r.header("cookie") is None for r in probes)
    assert probes[0].header("user-agent") == "gateproxy-health-check"
    assert len({r.connection_id for r in probes}) == 1  # one kept-alive probe connection


async def _serve(
    up: RecordingUpstream, stop: trio.Event, *, task_status: trio.TaskStatus[None]
) -> None:
    async with up:
        task_status.started()
        await stop.wait()


async def test_stopped_upstream_is_found_down_and_503_comes_at_once(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    health = {"interval": f"{INTERVAL}s", "timeout": "1s", "rise": RISE, "fall": FALL}
    up, stop = RecordingUpstream(), trio.Event()
    async with RecordingUpstream() as other, trio.open_nursery() as nursery:
        await nursery.start(_serve, up, stop)
        servers = [up.address, other.address]
        config = _config(
            server_cert, servers, health=health, health_checks=[{**HEALTHZ, "min_healthy": 2}]
        )
        async with running_proxy(config) as daemon:
            await up.wait_for(lambda: len(up.requests) >= 2)
            assert (await https_request(address(daemon), ca=ca, path="/healthz")).status == 200
            stop.set()  # the first server stops: its connections close, new ones are refused
            down_after = await _wait_usable(daemon, 1, within=FALL * INTERVAL + SLACK)
            answer = await https_request(address(daemon), ca=ca, path="/healthz")
            assert answer.status == 503  # min_healthy 2
            served = [await https_request(address(daemon), ca=ca, path="/x") for _ in range(4)]
            assert {r.status for r in served} == {200}  # routing never picks the down server
            assert len([r for r in other.requests if r.target == "/x"]) == 4
    assert down_after <= FALL * INTERVAL + SLACK


async def test_drain_turns_health_503_at_once(ca: trustme.CA, server_cert: CertPaths) -> None:
    async with SessionApp() as app, running_proxy(_config(server_cert, [app.address])) as daemon:
        daemon.shared.draining = True  # what the daemon sets when a drain begins
        answer = await https_request(address(daemon), ca=ca, path="/healthz")
        refused = await https_request(address(daemon), ca=ca, method="POST", path="/healthz")
    assert answer.status == 503 and b"draining" in answer.body
    assert refused.status == 405
    assert app.requests == 0


# --- the checker is no session leak, and runs once per daemon ----------------------------------

FAST = {"interval": f"{INTERVAL}s", "timeout": "1s"}


async def test_active_checks_mint_one_session_per_server_and_count_it(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    """25 checks of each of two servers: each app makes one session (the first check's), every
    later check sends it back, and /stats counts exactly those two."""
    async with SessionApp() as one, SessionApp() as two:
        health = {**FAST, "interval": "50ms"}
        config = _config(server_cert, [one.address, two.address], health=health)
        async with running_proxy(config) as daemon:
            with trio.fail_after(30):
                for app in (one, two):
                    await app.wait_for(lambda app=app: app.requests >= 25, max_wait=30)
            guard = _stats(daemon, "session_guard")
    for app in (one, two):
        assert app.sessions_created == 1 and app.live_sessions == 1
        cookies = [r.header("cookie") for r in app.recorded]
        assert cookies[0] is None and set(cookies[1:]) == {cookies[1]} and cookies[1]
    assert guard["minted_by_health_checks"] == 2
    assert guard["minted"] == 2 and guard["minted_for_probes"] == 2
    assert {"client": "gateproxy-health-check", "minted": 2} in guard["top_clients"]
    assert guard["pinned"]["entries"] == 2  # one remembered session per server


async def test_checks_and_pass_through_share_the_one_session_with_pin_probes(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    """Active checks and pass-through fetches (cache_time 0: one fetch per probe) are all
    gateproxy's own health requests to the one server: one app session between them."""
    async with SessionApp() as app:
        check = {**HEALTHZ, "mode": "pass_through", "cache_time": "0s"}
        config = _config(server_cert, [app.address], health=FAST, health_checks=[check])
        config["session_guard"] = {"pin_probes": True}
        async with running_proxy(config) as daemon:
            await app.wait_for(lambda: app.requests >= 1)  # the first check made the session
            for _ in range(10):
                answers = await https_exchange(
                    address(daemon), [Request(path="/healthz")] * 2, ca=ca
                )
                assert {r.status for r in answers} == {200}
            await app.wait_for(lambda: app.requests >= 30, max_wait=10)
            guard = _stats(daemon, "session_guard")
    assert app.sessions_created == 1
    assert all(r.header("cookie") for r in app.recorded[1:])  # every later one sent it back
    assert guard["minted_by_health_checks"] == 1 and guard["pinned"]["entries"] == 1


def _checks_within(times: list[float], *, interval: float) -> int:
    """How many checks one checker can make between the first and the last of ``times``
    (check starts are >= interval apart; 50 ms of arrival jitter allowed)."""
    return math.floor((times[-1] - times[0] + 0.05) / interval) + 1


@pytest.mark.slow
async def test_two_workers_make_one_checker_and_one_session_across_a_reload(
    tmp_path: Path, ca: trustme.CA, server_cert: CertPaths
) -> None:
    """``gateproxy run`` with 2 workers: the app sees the checks of one checker (not one per
    worker) and one session, counted in /stats; after a reload (SIGHUP, same layout) the new
    generation's checks go on at one checker's rate with that same session."""
    async with SessionApp() as app:
        config = {**_config(server_cert, [app.address], health=FAST), "workers": 2}
        async with supervised(config, tmp_path) as gp:
            await app.wait_for(lambda: app.requests >= 10, max_wait=20)
            before = list(app.received_at)
            gp.signal(signal.SIGHUP)
            await gp.wait_event("reloaded")
            reloaded_at = len(app.received_at)
            await app.wait_for(lambda: app.requests >= reloaded_at + 10, max_wait=20)
            stats = await gp.stats()
            after = app.received_at[reloaded_at:]
    assert len(before) <= _checks_within(before, interval=INTERVAL), before
    assert len(after) <= _checks_within(after, interval=INTERVAL), after
    assert app.sessions_created == 1
    assert stats["supervisor"]["reloads"] == 1
    assert stats["session_guard"]["minted_by_health_checks"] == 1
    assert stats["session_guard"]["minted_for_probes"] == 1


@pytest.mark.slow
async def test_the_supervisors_verdicts_reach_every_worker(
    tmp_path: Path, ca: trustme.CA, server_cert: CertPaths
) -> None:
    """The server fails its checks: /healthz is 503 from both workers, and from a worker that
    restarts meanwhile (it gets the verdicts in its setup); it recovers: 200 from all."""
    state = {"health": 200}
    health = {**FAST, "rise": 1, "fall": 1}
    async with _health_app(state) as app:
        config = {**_config(server_cert, [app.address], health=health), "workers": 2}
        async with supervised(config, tmp_path) as gp:

            async def answers_after(status: int) -> set[int]:
                state["health"] = status
                checks = len(app.requests)  # + 3: one whole check under the new status is done
                await app.wait_for(lambda: len(app.requests) >= checks + 3)
                return await _healthz_statuses(gp.address(), ca)

            assert await answers_after(503) == {503}
            victim = (await gp.stats())["workers"][0]["pid"]
            os.kill(victim, signal.SIGKILL)
            await gp.wait_event("worker_restarted")
            assert await _healthz_statuses(gp.address(), ca) == {503}
            restarted = await gp.stats()
            assert await answers_after(200) == {200}
    served = [
        w["stats"]["listeners"]["public"]["requests"]["health_checks"] for w in restarted["workers"]
    ]
    assert len(served) == 2 and all(n > 0 for n in served), served  # the new worker said 503


async def _healthz_statuses(address: str, ca: trustme.CA) -> set[int]:
    """/healthz on 20 connections at once (the kernel spreads them over the workers)."""
    statuses: set[int] = set()

    async def one() -> None:
        statuses.add((await https_request(address, ca=ca, path="/healthz")).status)

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(one)
    return statuses
