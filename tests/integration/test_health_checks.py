"""Local health answers and active upstream checks through the running proxy.

The seed scenario of the session-hygiene issue: a prober without cookies hitting ``/healthz``
against an app that mints a session for every cookie-less request. Behind a plain forwarding
proxy each probe is one app session; with a local health check it is none, and no TLS session
state is left at the front door either.
"""

from __future__ import annotations

from typing import Any

import trio
import trustme

from gateproxy.daemon import Daemon
from tests.conftest import CertPaths
from tests.helpers.clients import Request, https_exchange, https_request
from tests.helpers.proxy import address, proxy_config, running_proxy, tls_listener
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
