"""MAC'd session ids on a real SSL_CTX, and a session carried from one engine to another."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import trustme

from gateproxy.core.session_ids import SessionIds
from gateproxy.tls.engine import ListenerTLSEngine
from tests.tls.tlsutil import client_context, handshake, make_server

IDS = SessionIds(b"fleet-secret-of-at-least-32-bytes", listener="public")


def _taker(
    engine: ListenerTLSEngine, into: list[list[tuple[bytes, bytes, float]]]
) -> Callable[[ssl.SSLObject], None]:
    def take(srv: ssl.SSLObject) -> None:
        into.append(engine.take_new_sessions(srv))

    return take


def test_new_tls12_session_ids_carry_the_mac(ca: trustme.CA) -> None:
    server = make_server(ca, mode="lru", tickets=False, session_ids=IDS)
    taken: list[list[tuple[bytes, bytes, float]]] = []
    first = handshake(
        server,
        client_context(ca, version="1.2", no_ticket=True),
        after_handshake=_taker(server.engine, taken),
    )
    assert first.session is not None and IDS.is_ours(first.session.id)
    [(session_id, der, made_at)] = taken[0]
    assert session_id == first.session.id and der and made_at == server.clock()
    assert server.engine.holds_session(session_id)


def test_a_prefetched_session_resumes_on_another_engine(ca: trustme.CA) -> None:
    host_a = make_server(ca, mode="lru", tickets=False, session_ids=IDS)
    host_b = make_server(ca, mode="lru", tickets=False, session_ids=IDS)
    client = client_context(ca, version="1.2", no_ticket=True)
    taken: list[list[tuple[bytes, bytes, float]]] = []
    first = handshake(host_a, client, after_handshake=_taker(host_a.engine, taken))
    [(session_id, der, _)] = taken[0]
    cold = handshake(host_b, client, session=first.session)
    assert not cold.reused  # B does not have it
    second = handshake(host_a, client, session=first.session)
    assert second.reused
    host_b.engine.hold_prefetched(session_id, der, client="192.0.2.1")
    assert handshake(host_b, client, session=first.session).reused


def test_without_session_ids_nothing_is_kept_aside(ca: trustme.CA) -> None:
    server = make_server(ca, mode="lru", tickets=False)
    taken: list[list[tuple[bytes, bytes, float]]] = []
    first = handshake(
        server,
        client_context(ca, version="1.2", no_ticket=True),
        after_handshake=_taker(server.engine, taken),
    )
    assert taken == [[]]
    assert first.session is not None and not IDS.is_ours(first.session.id)


def test_tls13_stateful_tickets_carry_the_mac_and_resume_on_another_engine(
    ca: trustme.CA,
) -> None:
    """``tickets.stateless: false``: each TLS 1.3 ticket is a session id in the cache."""
    host_a = make_server(ca, mode="lru", tickets=False, session_ids=IDS)
    host_b = make_server(ca, mode="lru", tickets=False, session_ids=IDS)
    for server in (host_a, host_b):  # what the engine does for stateless: false
        server.main.options |= ssl.OP_NO_TICKET
        server.main.num_tickets = 1
    client = client_context(ca, version="1.3")
    taken: list[list[tuple[bytes, bytes, float]]] = []
    first = handshake(host_a, client)
    assert first.session is not None and first.session.has_ticket
    second = handshake(
        host_a, client, session=first.session, after_handshake=_taker(host_a.engine, taken)
    )
    assert second.reused
    made = handshake(host_a, client, after_handshake=_taker(host_a.engine, taken))
    [(ticket_id, der, _)] = taken[1]
    assert IDS.is_ours(ticket_id)
    assert not handshake(host_b, client, session=made.session).reused
    host_b.engine.hold_prefetched(ticket_id, der, client="192.0.2.1")
    assert handshake(host_b, client, session=made.session).reused
