"""TLS 1.3 resumption by a client that sends its request right after its Finished, in the same
flight (as tlsfuzzer's test-tls13-session-resumption does), on listeners with and without
deferred tickets (health checks): every connection, resumed ones included, gets a fresh ticket
before the response, as from nginx (single-use tickets, RFC 8446 C.4)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import trio
import trustme

from tests.conftest import CertPaths
from tests.helpers.clients import split_address
from tests.helpers.proxy import address, proxy_config, running_proxy, tls_listener
from tests.helpers.tls_bio import BioClient, record_order
from tests.helpers.upstreams import RecordingUpstream

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("health_checks", [False, True], ids=["plain", "deferred-tickets"])
async def test_every_tls13_connection_gets_a_ticket_before_its_response(
    ca: trustme.CA, server_cert: CertPaths, health_checks: bool
) -> None:
    ctx = ssl.create_default_context()  # its own: record_order hooks the context
    ca.configure_trust(ctx)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    order = record_order(ctx)
    extra: dict[str, Any] = {}
    if health_checks:
        extra["health_checks"] = [{"path": "/healthz", "upstream": "app"}]
    async with RecordingUpstream() as up:
        listener = tls_listener(cert=server_cert.cert, key=server_cert.key, **extra)
        config = proxy_config([listener], {"app": {"servers": [up.address]}})
        async with running_proxy(config) as daemon:
            session: ssl.SSLSession | None = None
            for attempt in range(4):  # a full handshake, then each resumes the newest ticket
                order.clear()
                sock = await trio.open_tcp_stream(*split_address(address(daemon)))
                async with sock:
                    client = BioClient(sock, ctx, session=session)
                    await client.handshake(hold_last_flight=True)
                    await client.send(REQUEST)  # Finished and request in one write
                    assert (await client.read_response()).startswith(b"HTTP/1.1 200 ")
                    assert await client.receive_until_close() == "close_notify"
                    assert client.obj.session_reused == (attempt > 0)
                    session = client.obj.session
                assert "data" in order, order
                assert "ticket" in order[: order.index("data")], (attempt, order)
            stats = daemon.stats()
    tickets = stats["listeners"]["public"]["tls"]["tickets"]  # type: ignore[index]
    assert tickets["issued"] == 4 and tickets["renewed"] == 0 and tickets["rejected"] == 0
