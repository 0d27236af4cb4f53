"""ListenerTLSEngine session-cache modes, probes and per-connection calls, over real handshakes."""

from __future__ import annotations

import ssl
import time
from typing import Any

import pytest
import trustme

from gateproxy.tls import libssl as L
from tests.tls.tlsutil import (
    FakeClock,
    Server,
    client_context,
    handshake,
    make_server,
    server_context,
)


def _cache(server: Server) -> dict[str, Any]:
    stats = server.engine.stats(now=server.clock())
    cache = stats["session_cache"]
    assert isinstance(cache, dict)
    return cache


def _stateful_tls13(server: Server, n: int = 2) -> None:
    """TLS 1.3 with OP_NO_TICKET and num_tickets > 0: one stateful cache entry per ticket."""
    server.main.options |= ssl.OP_NO_TICKET
    server.main.num_tickets = n


# --- lru ----------------------------------------------------------------------------------------


def test_lru_never_exceeds_max_entries(ca: trustme.CA) -> None:
    server = make_server(ca, mode="lru", tickets=False, max_entries=5)
    _stateful_tls13(server)
    c12, c13 = client_context(ca, version="1.2"), client_context(ca, version="1.3", no_ticket=True)
    for i in range(12):
        result = handshake(server, c12 if i % 2 else c13, client=f"198.51.100.{i}")
        assert not result.reused
        assert _cache(server)["entries"] <= 5  # after every handshake
    cache = _cache(server)
    assert cache["entries"] == 5
    assert cache["evictions_capacity"] == cache["evictions"] == 6 * 1 + 6 * 2 - 5


def test_lru_resumes_tls12_and_stateful_tls13(ca: trustme.CA) -> None:
    server = make_server(ca, mode="lru", tickets=False)
    for client in (client_context(ca, version="1.2"), client_context(ca, version="1.3")):
        _stateful_tls13(server, n=1)
        first = handshake(server, client)
        second = handshake(server, client, session=first.session)
        assert (first.reused, second.reused, second.server_reused) == (False, True, True)
    cache = _cache(server)
    assert cache["hits"] == 2
    assert cache["bytes"] > 0


def test_lru_order_through_handshakes(ca: trustme.CA) -> None:
    server = make_server(ca, mode="lru", tickets=False, max_entries=3)
    c12 = client_context(ca, version="1.2")
    a, b, c = (handshake(server, c12).session for _ in range(3))
    assert handshake(server, c12, session=a).reused  # A becomes most recently used
    handshake(server, c12)  # D evicts the least recently used: B
    assert handshake(server, c12, session=b).reused is False
    # B's full handshake just evicted C (A was refreshed after C was made)
    assert handshake(server, c12, session=a).reused
    assert handshake(server, c12, session=c).reused is False


def test_lru_per_client_budget(ca: trustme.CA) -> None:
    server = make_server(ca, mode="lru", tickets=False, max_entries=100, max_per_client=2)
    c12 = client_context(ca, version="1.2")
    for _ in range(5):
        handshake(server, c12, client="203.0.113.7")
    handshake(server, c12, client="203.0.113.8")
    cache = _cache(server)
    assert cache["entries"] == 3
    assert cache["evictions_budget"] == 3


def test_lru_expiry_is_lazy_and_swept(ca: trustme.CA) -> None:
    clock = FakeClock()
    server = make_server(ca, mode="lru", tickets=False, timeout=60, clock=clock)
    c12 = client_context(ca, version="1.2")
    old = handshake(server, c12).session
    clock.now += 30
    handshake(server, c12)
    clock.now += 31
    assert server.engine.sweep(now=clock.now) == 1
    assert _cache(server)["entries"] == 1
    assert not handshake(server, c12, session=old).reused


def test_lru_timeout_is_also_openssl_session_timeout(ca: trustme.CA) -> None:
    server = make_server(ca, mode="lru", timeout=42)
    lib = L.get_libssl()
    assert lib.ctx_get_timeout(L.ctx_pointer(server.main)) == 42
    result = handshake(server, client_context(ca))
    assert result.session is not None and result.session.ticket_lifetime_hint == 42


def test_stateless_tls13_tickets_never_reach_the_cache(ca: trustme.CA) -> None:
    server = make_server(ca, mode="lru", tickets=True, per_handshake=3)
    for _ in range(4):
        assert handshake(server, client_context(ca)).session is not None
    assert _cache(server)["entries"] == 0


def test_callback_exception_becomes_a_cache_miss(ca: trustme.CA) -> None:
    def broken_clock() -> float:
        raise RuntimeError("clock broke")

    main, probe = server_context(ca), server_context(ca)
    from gateproxy.tls.engine import ListenerTLSEngine
    from tests.tls.tlsutil import tls_config

    engine = ListenerTLSEngine(
        main=main,
        probe=probe,
        tls=tls_config(mode="lru", tickets=False),
        keyring=None,
        defer_tickets=False,
        clock=broken_clock,
    )
    server = Server(main, probe, engine, FakeClock())
    c12 = client_context(ca, version="1.2")
    first = handshake(server, c12)  # new_cb raises inside: logged, handshake unaffected
    assert not handshake(server, c12, session=first.session).reused
    assert _cache(server)["entries"] == 0


# --- openssl ------------------------------------------------------------------------------------


def test_openssl_mode_caps_at_max_entries(ca: trustme.CA) -> None:
    server = make_server(ca, mode="openssl", tickets=False, max_entries=3)
    ptr = L.ctx_pointer(server.main)
    lib = L.get_libssl()
    assert lib.ctx_ctrl(ptr, L.SSL_CTRL_GET_SESS_CACHE_SIZE) == 4
    assert lib.ctx_ctrl(ptr, L.SSL_CTRL_GET_SESS_CACHE_MODE) == 0x82
    c12 = client_context(ca, version="1.2")
    seen = []
    for _ in range(8):
        handshake(server, c12)
        seen.append(_cache(server)["entries"])
    assert max(seen) == 3 and seen[-1] == 3
    assert _cache(server)["evictions"] == 5
    last = handshake(server, c12).session
    assert handshake(server, c12, session=last).reused
    assert _cache(server)["hits"] == 1
    assert _cache(server)["entries"] == server.main.session_stats()["number"] == 3


def test_openssl_mode_flush(ca: trustme.CA) -> None:
    server = make_server(ca, mode="openssl", tickets=False, timeout=100)
    c12 = client_context(ca, version="1.2")
    for _ in range(3):
        handshake(server, c12)
    assert server.engine.sweep(now=0.0) == 0  # nothing expired yet (wall clock)
    ptr = L.ctx_pointer(server.main)
    L.get_libssl().ctx_flush_sessions(ptr, int(time.time()) + 101)  # as if 101 s had passed
    assert _cache(server)["entries"] == 0


# --- off ----------------------------------------------------------------------------------------


def test_off_mode_holds_nothing_and_never_resumes_by_id(ca: trustme.CA) -> None:
    server = make_server(ca, mode="off", tickets=False)
    _stateful_tls13(server)
    assert L.get_libssl().ctx_ctrl(L.ctx_pointer(server.main), L.SSL_CTRL_GET_SESS_CACHE_MODE) == 0
    for version in ("1.2", "1.3"):
        client = client_context(ca, version=version)
        first = handshake(server, client)
        assert not handshake(server, client, session=first.session).reused
    assert _cache(server)["entries"] == 0
    assert server.main.session_stats()["number"] == 0


# --- tickets disabled, probe, deferred tickets, forget_session ----------------------------------


def test_tickets_disabled_means_no_ticket_at_all(ca: trustme.CA) -> None:
    server = make_server(ca, mode="lru", tickets=False)
    assert server.main.num_tickets == 0 and server.main.options & ssl.OP_NO_TICKET
    for version in ("1.2", "1.3"):
        result = handshake(server, client_context(ca, version=version))
        assert result.session is not None and not result.session.has_ticket
    assert _cache(server)["entries"] == 1  # the TLS 1.2 session id only


@pytest.mark.parametrize("mode", ["lru", "openssl"])
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_probe_context_leaves_no_state(ca: trustme.CA, mode: str, version: str) -> None:
    server = make_server(ca, mode=mode, tickets=True)
    client = client_context(ca, version=version)
    first = handshake(server, client, probe=True)
    assert first.session is not None and not first.session.has_ticket
    assert first.session.id == b"" or version == "1.3"
    assert not handshake(server, client, probe=True, session=first.session).reused
    assert server.probe.session_stats()["number"] == 0
    assert all(v == 0 for v in server.main.session_stats().values())
    stats = server.engine.stats(now=0.0)
    assert stats["tickets"] == {**stats["tickets"], "issued": 0, "renewed": 0, "rejected": 0}  # type: ignore[dict-item]  # stats values are object
    assert _cache(server)["entries"] == 0


def test_deferred_tickets(ca: trustme.CA) -> None:
    server = make_server(ca, mode="lru", tickets=True, defer_tickets=True, per_handshake=2)
    assert server.main.num_tickets == 0
    client = client_context(ca)
    health = handshake(server, client)
    assert health.session is not None and not health.session.has_ticket

    def twice(obj: ssl.SSLObject) -> None:
        server.engine.send_deferred_tickets(obj)
        server.engine.send_deferred_tickets(obj)  # idempotent

    user = handshake(server, client, after_handshake=twice)
    assert user.session is not None and user.session.has_ticket
    assert server.engine.ticket_stats.issued == 2
    resumed = handshake(server, client, session=user.session, after_handshake=twice)
    assert resumed.reused
    # One fresh ticket on a resumption (not per_handshake), as OpenSSL sends without deferral.
    assert server.engine.ticket_stats.issued == 3
    assert resumed.session is not None and resumed.session.has_ticket
    probe = handshake(server, client, probe=True, after_handshake=twice)
    assert probe.session is not None and not probe.session.has_ticket
    assert server.probe.session_stats()["number"] == 0


def test_deferred_tickets_after_renewal(ca: trustme.CA) -> None:
    server = make_server(ca, mode="lru", tickets=True, defer_tickets=True, keep=1)
    client = client_context(ca)
    send = server.engine.send_deferred_tickets
    first = handshake(server, client, after_handshake=send)
    assert server.engine.keyring is not None
    server.engine.keyring.rotate(now=2000.0)
    renewed = handshake(server, client, session=first.session, after_handshake=send)
    assert renewed.reused and server.engine.ticket_stats.renewed == 1
    assert server.engine.ticket_stats.issued == 2  # the renewed ticket still went out


def test_deferred_is_a_noop_for_tls12(ca: trustme.CA) -> None:
    server = make_server(ca, mode="lru", tickets=True, defer_tickets=True)
    client = client_context(ca, version="1.2")
    result = handshake(server, client, after_handshake=server.engine.send_deferred_tickets)
    assert result.session is not None and result.session.has_ticket  # TLS 1.2: in the handshake
    assert server.engine.ticket_stats.issued == 1


@pytest.mark.parametrize("mode", ["lru", "openssl"])
def test_forget_session_removes_the_tls12_entry(ca: trustme.CA, mode: str) -> None:
    server = make_server(ca, mode=mode, tickets=False)
    client = client_context(ca, version="1.2")
    kept = handshake(server, client)
    probe = handshake(server, client, after_handshake=server.engine.forget_session)
    assert _cache(server)["entries"] == 1
    assert not handshake(server, client, session=probe.session).reused
    assert handshake(server, client, session=kept.session).reused


def test_sni_switch_keeps_cache_and_tickets_on_the_listener(ca: trustme.CA) -> None:
    cert_ctx = server_context(ca)
    server = make_server(ca, mode="lru", tickets=False)

    def switch(obj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        obj.context = cert_ctx

    server.main.sni_callback = switch
    client = client_context(ca, version="1.2")
    first = handshake(server, client)
    assert handshake(server, client, session=first.session).reused
    assert _cache(server)["entries"] == 1 and _cache(server)["hits"] == 1
    assert cert_ctx.session_stats()["number"] == 0


# --- stats and degraded mode --------------------------------------------------------------------


def test_stats_shape(ca: trustme.CA) -> None:
    server = make_server(ca, mode="lru")
    stats = server.engine.stats(now=server.clock() + 5)
    assert stats["engine"] == "full"
    assert set(_cache(server)) == {
        "mode", "entries", "max_entries", "hits", "misses", "evictions",
        "evictions_capacity", "evictions_budget", "expired", "bytes",
    }  # fmt: skip
    tickets = stats["tickets"]
    assert isinstance(tickets, dict)
    assert tickets["enabled"] is True
    assert tickets["keys"] == [
        {"name_prefix": tickets["keys"][0]["name_prefix"], "role": "encrypt", "age_s": 5.0}
    ]


def test_degraded_uses_only_stdlib_settings(ca: trustme.CA) -> None:
    server = make_server(ca, mode="lru", tickets=True, per_handshake=1, degraded=True)
    ptr = L.ctx_pointer(server.main)
    assert L.get_libssl().ctx_ctrl(ptr, L.SSL_CTRL_GET_SESS_CACHE_MODE) == 2  # untouched
    assert server.main.num_tickets == 1
    client = client_context(ca, version="1.2")
    server.main.options |= ssl.OP_NO_TICKET  # TLS 1.2 session ids: OpenSSL's own cache
    first = handshake(server, client)
    assert handshake(server, client, session=first.session).reused
    stats = server.engine.stats(now=0.0)
    assert stats["engine"] == "stdlib_only"
    cache = _cache(server)
    assert cache["mode"] == "openssl" and cache["entries"] == 1 and cache["hits"] == 1
    assert server.engine.sweep(now=0.0) == 0
    assert server.engine.rotate_if_due(now=1e9) is False
