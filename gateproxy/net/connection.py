"""One accepted connection: admission, TLS handshake under a deadline, then the pump.

``handle_connection`` runs once per accepted socket. On a ``proxy_protocol`` listener the PROXY
header is read first (``net.proxy_header``): its source is the client address from then on,
for the access rules, admission, probe_clients, the TLS engine's per-client budget, the machine
and the logs. The listener's ``access`` rules (``core.access``) come next (on the real client,
as nginx's allow/deny with real_ip): a denied address is closed at once, counted, not logged
one by one. Admission (``max_connections``,
``max_connections_per_client``) is decided before any TLS work. Probers (``probe_clients``) get
the stateless ``probe`` context, chosen from the address before the handshake; the handshake runs
under ``handshake_timeout`` and is counted (full, resumed or failed). The request path itself is
a ``core.machine.ConnectionMachine`` executed by a ``net.pump.Pump``; when it ends, the TLS
engine forgets the connection (and the session of a connection that only asked health checks).
"""

from __future__ import annotations

from functools import partial

import trio

from gateproxy.core.client_address import UNKNOWN_PEER
from gateproxy.core.limits import Rejected
from gateproxy.core.machine import ConnectionMachine
from gateproxy.net.plain_stream import PlainStream
from gateproxy.net.proxy_header import proxied_client
from gateproxy.net.pump import Pump
from gateproxy.net.runtime import ListenerRuntime
from gateproxy.net.tls_stream import ServerTLSStream


async def handle_connection(listener: ListenerRuntime, stream: trio.SocketStream) -> None:
    """Serve one accepted connection until it closes; never raises for client faults."""
    client_ip = _peer_ip(stream)
    if listener.policy.client_trust.proxy_protocol:  # the PROXY header names the client
        proxied = await proxied_client(listener, stream, peer=client_ip)
        if proxied is None:
            await trio.aclose_forcefully(stream)
            return
        client_ip = proxied
    access = listener.policy.access
    if access is not None and not access.allows(client_ip):
        listener.denied(client=client_ip)
        await trio.aclose_forcefully(stream)
        return
    probe = listener.probes.is_probe_address(client_ip)
    limits = listener.limits_for(probe=probe)
    admitted = listener.admission.admit(client_ip, max_per_client=limits.max_connections_per_client)
    counters = listener.counters
    if isinstance(admitted, Rejected):
        counters.connections_rejected += 1
        listener.enforced(admitted.reason, client=client_ip)
        await trio.aclose_forcefully(stream)
        return
    counters.connections_open += 1
    counters.connections_total += 1
    try:
        await _serve_admitted(listener, stream, client_ip=client_ip, probe=probe)
    finally:
        counters.connections_open -= 1
        listener.admission.release(client_ip)


async def _serve_admitted(
    listener: ListenerRuntime, stream: trio.SocketStream, *, client_ip: str, probe: bool
) -> None:
    if listener.main_context is None:
        await Pump(
            listener,
            PlainStream(stream),
            _machine(listener, client_ip, probe),
            client_ip=client_ip,
            ssl_object=None,
        ).run()
        return
    assert listener.config.tls is not None
    tls = _tls_stream(listener, stream, client_ip=client_ip, probe=probe)
    # One deadline scope from the handshake on: the handshake's, re-armed by the pump to the
    # machine's (a deadline scope per connection is a measurable share of a resumption's cost).
    scope = trio.CancelScope(deadline=trio.current_time() + listener.config.tls.handshake_timeout)
    pump: Pump | None = None
    try:
        with scope:
            if not await _handshake(listener, tls, client_ip=client_ip, probe=probe):
                return
            machine = _machine(listener, client_ip, probe)
            pump = Pump(listener, tls, machine, client_ip=client_ip, ssl_object=tls.ssl_object)
            await pump.first_round(scope)
        if pump is None:  # the handshake timed out
            await _handshake_failed(listener, tls, probe=probe)
            return
        await pump.rest(scope)
    finally:
        if pump is not None:
            pump.finish()
            _forget(listener, tls, pump.machine, probe=probe)


def _machine(listener: ListenerRuntime, client_ip: str, probe: bool) -> ConnectionMachine:
    assert listener.policy is not None
    return ConnectionMachine(
        listener.policy, client_ip=client_ip, probe=probe, now=trio.current_time()
    )


def _forget(
    listener: ListenerRuntime, tls: ServerTLSStream, machine: ConnectionMachine, *, probe: bool
) -> None:
    """The connection ended: the TLS engine forgets it (and the session of a connection that
    only asked health checks)."""
    engine = listener.engine
    if engine is not None and not probe:
        if not machine.tickets_released and machine.health_requests:
            engine.forget_session(tls.ssl_object)
        if listener.shared_sessions is not None:  # never published: a prober's session
            listener.shared_sessions.drop_unwritten(tls.ssl_object)
        engine.unregister_connection(tls.ssl_object)


def _tls_stream(
    listener: ListenerRuntime, stream: trio.SocketStream, *, client_ip: str, probe: bool
) -> ServerTLSStream:
    assert listener.main_context is not None
    context = listener.probe_context if probe and listener.probe_context else listener.main_context
    # aclose() sends close_notify (without waiting for the peer's), so a complete response is
    # told apart from a cut one and OpenSSL keeps the TLS 1.2 session.
    tls_stream = ServerTLSStream(stream, context)
    engine = listener.engine
    if engine is not None and not probe:
        engine.register_connection(tls_stream.ssl_object, client=client_ip)
    return tls_stream


async def _handshake(
    listener: ListenerRuntime, tls: ServerTLSStream, *, client_ip: str, probe: bool
) -> bool:
    """The handshake (its deadline is the caller's scope), counted; False if it failed. On a
    shared-cache listener the ClientHello is shown to the shared cache first (a bounded lookup
    before OpenSSL reads it)."""
    shared = listener.shared_sessions if not probe else None
    on_hello = None if shared is None else partial(shared.on_hello, client=client_ip)
    try:
        await tls.do_handshake(on_hello=on_hello)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await _handshake_failed(listener, tls, probe=probe)
        return False
    ssl_object = tls.ssl_object
    listener.counters.handshake(ssl_object.version() or "", resumed=ssl_object.session_reused)
    return True


async def _handshake_failed(
    listener: ListenerRuntime, tls: ServerTLSStream, *, probe: bool
) -> None:
    listener.counters.handshakes_failed += 1
    engine = listener.engine
    if engine is not None and not probe:
        engine.unregister_connection(tls.ssl_object)
    await trio.aclose_forcefully(tls.transport_stream)


def _peer_ip(stream: trio.SocketStream) -> str:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return UNKNOWN_PEER
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)
