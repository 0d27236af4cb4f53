"""Probers leave no TLS state: connections from ``probe_clients`` get the stateless probe
context, and connections that only ask a health-check path get no TLS 1.3 ticket and leave no
TLS 1.2 cache entry. Each test also shows the same client *does* get state where it should, so
an engine that handed out state everywhere (or nowhere) fails.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
import trio
import trustme

from gateproxy.daemon import Daemon
from tests.conftest import CertPaths
from tests.helpers.clients import Request, Response, https_exchange, https_request
from tests.helpers.proxy import address, proxy_config, running_proxy, tls_listener
from tests.helpers.tls_sessions import connections_closed, session_of, tls_stats
from tests.helpers.upstreams import RecordingUpstream


def _state(daemon: Daemon, name: str) -> dict[str, Any]:
    """The session state counters of a listener (everything but handshake counts)."""
    tls = tls_stats(daemon, name)
    tickets = {k: v for k, v in tls["tickets"].items() if k != "keys"}
    return {"session_cache": tls["session_cache"], "tickets": tickets}


def _holds_state(resp: Response) -> bool:
    """Did the client get anything it could resume with (a ticket or a TLS 1.2 session id)?"""
    session = session_of(resp)
    return bool(session.has_ticket or (resp.tls_version == "TLSv1.2" and session.id))


@pytest.mark.parametrize(
    ("version", "tickets"), [("TLSv1.2", True), ("TLSv1.2", False), ("TLSv1.3", True)]
)
async def test_probe_clients_get_no_ticket_and_no_cache_entry(
    ca: trustme.CA, server_cert: CertPaths, version: str, tickets: bool
) -> None:
    tls = {"session_cache": {"mode": "lru"}, "tickets": {"enabled": tickets}}
    probed = tls_listener(
        cert=server_cert.cert, key=server_cert.key, tls=tls, probe_clients=["127.0.0.1/32"]
    )
    control = tls_listener(cert=server_cert.cert, key=server_cert.key, tls=tls, name="control")
    async with RecordingUpstream() as up:
        config = proxy_config([probed, control], {"app": {"servers": [up.address]}})
        async with running_proxy(config) as daemon:
            before = _state(daemon, "public")
            with trio.fail_after(10):
                probe = await https_request(address(daemon), ca=ca, tls_version=version)
                again = await https_request(
                    address(daemon), ca=ca, tls_version=version, session=session_of(probe)
                )
                # The same client on a listener without probe_clients does get a session.
                user = await https_request(address(daemon, "control"), ca=ca, tls_version=version)
                user_again = await https_request(
                    address(daemon, "control"), ca=ca, tls_version=version, session=session_of(user)
                )
                await connections_closed(daemon)
                await connections_closed(daemon, "control")
            after = _state(daemon, "public")
            control_after = _state(daemon, "control")
    assert probe.status == again.status == 200
    assert not _holds_state(probe) and not _holds_state(again)
    assert not again.session_reused
    assert after == before  # not one counter of the main cache or ticket ring moved
    assert after["session_cache"]["entries"] == 0 and after["tickets"]["issued"] == 0
    assert _holds_state(user) and user_again.session_reused
    assert control_after != before


async def test_tls13_health_only_connection_gets_no_ticket(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    listener = tls_listener(
        cert=server_cert.cert, key=server_cert.key, health_checks=[{"path": "/healthz"}]
    )
    async with RecordingUpstream() as up:
        config = proxy_config([listener], {"app": {"servers": [up.address]}})
        async with running_proxy(config) as daemon:
            with trio.fail_after(10):
                health = await https_request(
                    address(daemon), path="/healthz", ca=ca, tls_version="TLSv1.3"
                )
                health_again = await https_request(
                    address(daemon),
                    path="/healthz",
                    ca=ca,
                    tls_version="TLSv1.3",
                    session=session_of(health),
                )
                issued_after_health = tls_stats(daemon)["tickets"]["issued"]
                app = await https_request(
                    address(daemon), path="/app", ca=ca, tls_version="TLSv1.3"
                )
                app_again = await https_request(
                    address(daemon),
                    path="/app",
                    ca=ca,
                    tls_version="TLSv1.3",
                    session=session_of(app),
                )
                # health first, then a real request on the same connection: a ticket after all
                mixed = await https_exchange(
                    address(daemon),
                    [Request(path="/healthz"), Request(path="/app")],
                    ca=ca,
                    tls_version="TLSv1.3",
                )
            stats = tls_stats(daemon)
    assert health.status == 200 and app.status == 200
    assert not _holds_state(health) and not _holds_state(health_again)
    assert not health_again.session_reused
    assert issued_after_health == 0
    assert _holds_state(app) and app_again.session_reused
    assert _holds_state(mixed[-1])
    # app, app_again (a resumption gets a fresh ticket) and mixed; none for the health-only ones
    assert stats["tickets"]["issued"] == 3
    assert [r.target for r in up.requests] == ["/app", "/app", "/app"]  # health never forwarded


@pytest.mark.parametrize("mode", ["lru", "openssl"])
async def test_tls12_health_only_session_leaves_the_cache(
    ca: trustme.CA, server_cert: CertPaths, mode: str
) -> None:
    listener = tls_listener(
        cert=server_cert.cert,
        key=server_cert.key,
        health_checks=[{"path": "/healthz"}],
        tls={"session_cache": {"mode": mode}, "tickets": {"enabled": False}},
    )
    async with RecordingUpstream() as up:
        config = proxy_config([listener], {"app": {"servers": [up.address]}})
        async with running_proxy(config) as daemon:

            async def entries() -> int:
                await connections_closed(daemon)
                gc.collect()  # free the SSL* objects: a freed connection must not change this
                return int(tls_stats(daemon)["session_cache"]["entries"])

            with trio.fail_after(10):
                app = await https_request(
                    address(daemon), path="/app", ca=ca, tls_version="TLSv1.2"
                )
                assert await entries() == 1
                health = await https_request(
                    address(daemon), path="/healthz", ca=ca, tls_version="TLSv1.2"
                )
                assert await entries() == 1  # the health-only session was removed
                health_again = await https_request(
                    address(daemon),
                    path="/healthz",
                    ca=ca,
                    tls_version="TLSv1.2",
                    session=session_of(health),
                )
                app_again = await https_request(
                    address(daemon),
                    path="/app",
                    ca=ca,
                    tls_version="TLSv1.2",
                    session=session_of(app),
                )
    assert health.status == 200
    assert not health_again.session_reused  # the client cannot resume the prober's session
    assert app_again.session_reused  # while a real user's session stays


async def test_tls12_tickets_cannot_be_recalled_from_health_only_connections(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    """The documented limit: a TLS 1.2 ticket is sent in the handshake, before the path is
    known, so a health-only client keeps a ticket it can resume with (the server holds
    nothing). Use probe_clients or tickets off for such probers."""
    listener = tls_listener(
        cert=server_cert.cert, key=server_cert.key, health_checks=[{"path": "/healthz"}]
    )
    async with RecordingUpstream() as up:
        config = proxy_config([listener], {"app": {"servers": [up.address]}})
        async with running_proxy(config) as daemon:
            with trio.fail_after(10):
                health = await https_request(
                    address(daemon), path="/healthz", ca=ca, tls_version="TLSv1.2"
                )
                again = await https_request(
                    address(daemon),
                    path="/healthz",
                    ca=ca,
                    tls_version="TLSv1.2",
                    session=session_of(health),
                )
            stats = tls_stats(daemon)
    assert session_of(health).has_ticket
    assert again.session_reused
    assert stats["session_cache"]["entries"] == 0  # but nothing is held server-side
