"""The engine on the real contexts from contexts.py, with an SNI switch to a second certificate."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from gateproxy.core.config import CertificateConfig
from gateproxy.tls.contexts import build_listener_contexts
from tests.conftest import CertPaths
from tests.tls.tlsutil import Server, handshake, server_on, tls_config


def _server(
    server_cert: CertPaths, second_cert: CertPaths, *, defer: bool, **config: Any
) -> Server:
    tls = tls_config(**config).model_copy(
        update={
            "certificates": (
                CertificateConfig(cert=str(server_cert.cert), key=str(server_cert.key)),
                CertificateConfig(cert=str(second_cert.cert), key=str(second_cert.key)),
            )
        }
    )
    contexts = build_listener_contexts(tls, base_dir=Path("/"))
    return server_on(contexts.main, contexts.probe, tls, defer_tickets=defer)


def _client(ca: trustme.CA, version: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    ctx.check_hostname = False  # the helper always sends SNI "localhost"; see below
    v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ctx.maximum_version = v
    return ctx


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_deferred_tickets_survive_the_sni_switch(
    ca: trustme.CA,
    server_cert: CertPaths,
    second_cert: CertPaths,
    version: str,
) -> None:
    server = _server(server_cert, second_cert, defer=True, mode="lru", tickets=True)
    switched: list[bool] = []
    original = server.main.sni_callback
    assert original is not None

    def via_second(obj: ssl.SSLObject, _name: str | None, ctx: ssl.SSLContext) -> int | None:
        before = obj.context
        result = original(obj, "example.test", ctx)
        switched.append(obj.context is not before)
        return result

    server.main.sni_callback = via_second
    client = _client(ca, version)
    health = handshake(server, client)
    assert switched == [True]
    assert health.session is not None
    if version == "1.3":  # deferred: nothing until the shell asks
        assert not health.session.has_ticket
    user = handshake(server, client, after_handshake=server.engine.send_deferred_tickets)
    assert user.session is not None and user.session.has_ticket
    assert handshake(server, client, session=user.session).reused
    assert server.engine.ticket_stats.decrypted == 1


def test_lru_cache_on_real_contexts(
    ca: trustme.CA, server_cert: CertPaths, second_cert: CertPaths
) -> None:
    server = _server(server_cert, second_cert, defer=False, mode="lru", tickets=False)
    client = _client(ca, "1.2")
    first = handshake(server, client)
    assert handshake(server, client, session=first.session).reused
    cache = server.engine.stats(now=0.0)["session_cache"]
    assert isinstance(cache, dict) and cache["entries"] == 1 and cache["hits"] == 1
    probe = handshake(server, client, probe=True)
    assert probe.session is not None and probe.session.id == b""
