"""The session guard through the running proxy, against a Tomcat-like app.

These need the guard wired into the forwarding path (``request_cookie_for`` before forwarding,
``on_response`` on the response head) and its tables into ``/stats``.
"""

from __future__ import annotations

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
from tests.helpers.upstreams import SessionApp


def _config(
    server_cert: CertPaths, app: str, *, guard: dict[str, Any], **listener: Any
) -> dict[str, Any]:
    lc = tls_listener(
        cert=server_cert.cert,
        key=server_cert.key,
        limits={"max_requests_per_connection": 0},
        **listener,
    )
    return proxy_config([lc], {"app": {"servers": [app]}}, session_guard=guard)


def _guard_stats(daemon: Daemon) -> dict[str, Any]:
    stats: dict[str, Any] = daemon.stats()["session_guard"]  # type: ignore[assignment]
    return stats


async def test_pinned_probe_makes_one_session_for_1000_requests(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    async with SessionApp() as app:
        config = _config(
            server_cert,
            app.address,
            guard={"pin_probes": True},
            probe_clients=["127.0.0.0/8"],
        )
        async with running_proxy(config) as daemon:
            responses = await https_exchange(address(daemon), [Request(path="/")] * 1000, ca=ca)
            guard = _guard_stats(daemon)
    assert {r.status for r in responses} == {200}
    assert app.requests == 1000
    assert app.sessions_created == 1 and app.live_sessions == 1
    assert guard["minted"] == 1 and guard["minted_for_probes"] == 1
    assert guard["pinned_reused"] == 999
    assert guard["pinned"] == {"entries": 1, "max_entries": 10000}


async def test_user_agent_probes_are_pinned_and_others_are_not(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    async with SessionApp() as app:
        config = _config(
            server_cert,
            app.address,
            guard={"pin_probes": True, "probe_user_agents": ["^kube-probe/"]},
        )
        async with running_proxy(config) as daemon:
            probe = Request(path="/", headers=[("User-Agent", "kube-probe/1.29")])
            await https_exchange(address(daemon), [probe] * 50, ca=ca)
            assert app.sessions_created == 1
            browser = Request(path="/", headers=[("User-Agent", "Mozilla/5.0")])
            await https_exchange(address(daemon), [browser] * 5, ca=ca)
            guard = _guard_stats(daemon)
    assert app.sessions_created == 1 + 5  # a user is never given the prober's session
    assert guard["minted"] == 6 and guard["minted_for_probes"] == 1


async def test_stateless_paths_strip_and_count(ca: trustme.CA, server_cert: CertPaths) -> None:
    async with SessionApp() as app:
        config = _config(server_cert, app.address, guard={"stateless_paths": ["/static/"]})
        async with running_proxy(config) as daemon:
            asset = await https_request(address(daemon), ca=ca, path="/static/app.js?v=3")
            page = await https_request(address(daemon), ca=ca, path="/users/42")
            guard = _guard_stats(daemon)
    assert asset.status == 200 and asset.header("set-cookie") is None
    assert page.header("set-cookie") is not None and page.header("set-cookie").startswith(
        "JSESSIONID="
    )
    assert guard["stripped"] == 1 and guard["minted"] == 2
    paths = {row["path"]: row["minted"] for row in guard["top_paths"]}
    assert paths == {"/static/app.js": 1, "/users/{n}": 1}
    assert guard["top_clients"] == [{"client": "127.0.0.1", "minted": 2}]


async def test_seed_scenario_stats_show_minted_sessions_without_local_health(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    """Without a local health check, /stats shows who makes the app mint sessions."""
    async with SessionApp() as app:
        config = _config(server_cert, app.address, guard={}, probe_clients=["127.0.0.1/32"])
        async with running_proxy(config) as daemon:
            await https_exchange(address(daemon), [Request(path="/healthz")] * 100, ca=ca)
            guard = _guard_stats(daemon)
    assert app.sessions_created == 100
    assert guard["minted"] == 100 and guard["minted_for_probes"] == 100
    assert guard["top_paths"] == [{"path": "/healthz", "minted": 100}]


@pytest.mark.slow
async def test_two_workers_share_one_pinned_session_per_prober(
    tmp_path: Path, ca: trustme.CA, server_cert: CertPaths
) -> None:
    """One prober on 40 connections, served by both workers: the app makes one session.

    The first request goes alone (it mints the session the pin remembers); the other 120 come
    on 40 connections at once, spread by the kernel over both workers, and all reuse that pin.
    """
    async with SessionApp() as app:
        config = _config(
            server_cert, app.address, guard={"pin_probes": True}, probe_clients=["127.0.0.0/8"]
        )
        async with supervised({**config, "workers": 2}, tmp_path) as gp:
            first = await https_request(gp.address(), ca=ca, path="/")
            statuses: list[int] = []

            async def prober() -> None:
                answers = await https_exchange(gp.address(), [Request(path="/")] * 3, ca=ca)
                statuses.extend(r.status for r in answers)

            async with trio.open_nursery() as nursery:
                for _ in range(40):
                    nursery.start_soon(prober)
            stats = await gp.stats()
    assert first.status == 200 and statuses == [200] * 120
    served = [w["stats"]["listeners"]["public"]["requests"]["total"] for w in stats["workers"]]
    assert len(served) == 2 and all(n > 0 for n in served) and sum(served) == 121, served
    assert app.requests == 121
    assert app.sessions_created == 1 and app.live_sessions == 1
    guard = stats["session_guard"]
    assert guard["minted"] == 1 and guard["pinned_reused"] == 120
    assert guard["pinned"] == {"entries": 1, "max_entries": 10000}  # one table, not one a worker
