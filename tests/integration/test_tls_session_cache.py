"""Session caches through the running proxy: the hard cap holds after every handshake, and
resumption works for real clients (TLS 1.2 session id, TLS 1.2 ticket, TLS 1.3 ticket).

Every client here comes from 127.0.0.1, so ``max_per_client: 0`` turns the per-client budget
off: otherwise the budget (not the cap under test) would bound the cache.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from tests.conftest import CertPaths
from tests.helpers.clients import https_request
from tests.helpers.proxy import address, proxy_config, running_proxy, tls_listener
from tests.helpers.tls_sessions import connections_closed, s_client, session_of, tls_stats
from tests.helpers.upstreams import RecordingUpstream

CAP = 50
CLIENTS = 220  # a little over four times the cap
TLS13_CLIENTS = 20  # the stdlib client waits ~40 ms per TLS 1.3 request (Nagle, no NODELAY)


def _config(server_cert: CertPaths, upstream: str, *, tls: dict[str, Any]) -> dict[str, Any]:
    listener = tls_listener(cert=server_cert.cert, key=server_cert.key, tls=tls)
    return proxy_config([listener], {"app": {"servers": [upstream]}})


@pytest.mark.parametrize("mode", ["lru", "openssl"])
async def test_cache_never_exceeds_max_entries_under_non_resuming_tls12_clients(
    ca: trustme.CA, server_cert: CertPaths, mode: str
) -> None:
    tls = {
        "max_version": "1.2",
        "session_cache": {"mode": mode, "max_entries": CAP, "max_per_client": 0},
        "tickets": {"enabled": False},
    }
    seen: list[int] = []
    async with (
        RecordingUpstream() as up,
        running_proxy(_config(server_cert, up.address, tls=tls)) as daemon,
    ):
        with trio.fail_after(25):
            for _ in range(CLIENTS):
                resp = await https_request(address(daemon), ca=ca, tls_version="TLSv1.2")
                assert resp.status == 200 and not resp.session_reused
                assert session_of(resp).id  # a cacheable session
                seen.append(tls_stats(daemon)["session_cache"]["entries"])
        stats = tls_stats(daemon)
    assert max(seen) <= CAP, f"cache grew to {max(seen)} (cap {CAP})"
    assert seen[-1] == CAP  # the cache really filled up: the cap was what held it
    assert seen[:CAP] == list(range(1, CAP + 1))  # one entry per full handshake until full
    cache = stats["session_cache"]
    assert cache["max_entries"] == CAP
    assert cache["evictions"] >= CLIENTS - CAP
    assert stats["handshakes"]["full"] == CLIENTS and stats["handshakes"]["resumed"] == 0


@pytest.mark.parametrize("mode", ["lru", "openssl"])
async def test_cache_cap_holds_under_stateful_tls13_tickets_and_they_resume(
    ca: trustme.CA, server_cert: CertPaths, mode: str
) -> None:
    """The HAProxy #1103 / Jetty #12284 shape: TLS 1.3 with stateful tickets stores one cache
    entry per ticket (two per full handshake here), from clients that never come back."""
    tls = {
        "min_version": "1.3",
        "session_cache": {"mode": mode, "max_entries": CAP, "max_per_client": 0},
        "tickets": {"stateless": False, "per_handshake": 2},
    }
    seen: list[int] = []
    async with (
        RecordingUpstream() as up,
        running_proxy(_config(server_cert, up.address, tls=tls)) as daemon,
    ):
        with trio.fail_after(25):
            first = await https_request(address(daemon), ca=ca, tls_version="TLSv1.3")
            seen.append(tls_stats(daemon)["session_cache"]["entries"])
            again = await https_request(
                address(daemon), ca=ca, tls_version="TLSv1.3", session=first.session
            )
            for _ in range(CAP):
                resp = await https_request(address(daemon), ca=ca, tls_version="TLSv1.3")
                assert resp.status == 200 and not resp.session_reused
                seen.append(tls_stats(daemon)["session_cache"]["entries"])
        stats = tls_stats(daemon)
    assert seen[0] == 2  # two tickets, two entries: the state really is on the server
    assert again.session_reused
    assert max(seen) <= CAP, f"cache grew to {max(seen)} (cap {CAP})"
    assert seen[-1] >= CAP - 2  # it filled up: the cap held it
    assert stats["tickets"]["stateless"] is False
    assert stats["tickets"]["issued"] == 0  # no ticket keys in play


@pytest.mark.parametrize("tickets", [{"enabled": False}, {"enabled": True}])
async def test_tls13_clients_leave_no_cache_entries(
    ca: trustme.CA, server_cert: CertPaths, tickets: dict[str, Any]
) -> None:
    """TLS 1.3 state is stateless tickets or nothing: the server cache stays empty.

    (Stateful TLS 1.3 tickets, ``stateless: false``, are the next test.)
    """
    tls = {
        "session_cache": {"mode": "lru", "max_entries": CAP, "max_per_client": 0},
        "tickets": tickets,
    }
    async with (
        RecordingUpstream() as up,
        running_proxy(_config(server_cert, up.address, tls=tls)) as daemon,
    ):
        with trio.fail_after(15):
            for _ in range(TLS13_CLIENTS):
                resp = await https_request(address(daemon), ca=ca, tls_version="TLSv1.3")
                assert resp.status == 200
                assert session_of(resp).has_ticket is tickets["enabled"]
                assert tls_stats(daemon)["session_cache"]["entries"] == 0
        stats = tls_stats(daemon)
    assert stats["tickets"]["issued"] == (TLS13_CLIENTS if tickets["enabled"] else 0)


@pytest.mark.parametrize(
    ("version", "tickets", "mode"),
    [
        ("TLSv1.2", False, "lru"),  # session id through gateproxy's own cache
        ("TLSv1.2", False, "openssl"),  # session id through OpenSSL's internal cache
        ("TLSv1.2", True, "off"),  # TLS 1.2 ticket, no cache at all
        ("TLSv1.3", True, "off"),  # TLS 1.3 ticket
    ],
)
async def test_resumption_through_the_proxy(
    ca: trustme.CA, server_cert: CertPaths, version: str, tickets: bool, mode: str
) -> None:
    tls = {"session_cache": {"mode": mode}, "tickets": {"enabled": tickets}}
    async with (
        RecordingUpstream() as up,
        running_proxy(_config(server_cert, up.address, tls=tls)) as daemon,
    ):
        with trio.fail_after(10):
            first = await https_request(address(daemon), ca=ca, tls_version=version)
            assert session_of(first).has_ticket is tickets
            # The first connection is over and its SSL* freed before anyone resumes: OpenSSL
            # drops the cache entry of an SSL* freed without a close_notify sent.
            await connections_closed(daemon)
            gc.collect()
            second = await https_request(
                address(daemon), ca=ca, tls_version=version, session=session_of(first)
            )
            # a stranger without the session gets a full handshake
            third = await https_request(address(daemon), ca=ca, tls_version=version)
        stats = tls_stats(daemon)
    assert (first.session_reused, second.session_reused, third.session_reused) == (
        False,
        True,
        False,
    )
    assert second.status == 200 and second.tls_version == version
    assert stats["handshakes"] == {
        "full": 2,
        "resumed": 1,
        "failed": 0,
        "by_version": {version: {"full": 2, "resumed": 1}},
    }
    if not tickets:
        assert stats["session_cache"]["hits"] == 1
        assert stats["tickets"]["issued"] == 0


async def test_a_finished_connection_ends_with_close_notify(
    server_cert: CertPaths, ca_pem_path: Path
) -> None:
    async with (
        RecordingUpstream() as up,
        running_proxy(_config(server_cert, up.address, tls={})) as daemon,
    ):
        host, port = daemon.addresses["public"]
        result = await s_client(host, port, ca_file=ca_pem_path, version="1.2")
    assert result.http_status == b"200"
    assert result.closed_cleanly, result.output
