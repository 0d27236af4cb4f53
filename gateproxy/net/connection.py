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
from gateproxy.net.pump import ClientStream, Pump
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
    client: ClientStream
    if listener.main_context is None:
        client, tls = PlainStream(stream), None
    else:
        tls = await _handshake(listener, stream, client_ip=client_ip, probe=probe)
        if tls is None:
            return
        client = tls
    assert listener.policy is not None
    machine = ConnectionMachine(
        listener.policy, client_ip=client_ip, probe=probe, now=trio.current_time()
    )
    ssl_object = tls.ssl_object if tls is not None else None
    try:
        await Pump(listener, client, machine, client_ip=client_ip, ssl_object=ssl_object).run()
    finally:
        engine = listener.engine
        if engine is not None and ssl_object is not None and not probe:
            if not machine.tickets_released and machine.health_requests:
                engine.forget_session(ssl_object)
            if listener.shared_sessions is not None:  # never published: a prober's session
                listener.shared_sessions.drop_unwritten(ssl_object)
            engine.unregister_connection(ssl_object)


async def _handshake(
    listener: ListenerRuntime, stream: trio.SocketStream, *, client_ip: str, probe: bool
) -> ServerTLSStream | None:
    assert listener.config.tls is not None and listener.main_context is not None
    context = listener.probe_context if probe and listener.probe_context else listener.main_context
    # aclose() sends close_notify (without waiting for the peer's), so a complete response is
    # told apart from a cut one and OpenSSL keeps the TLS 1.2 session.
    tls_stream = ServerTLSStream(stream, context)
    engine = listener.engine
    if engine is not None and not probe:
        engine.register_connection(tls_stream.ssl_object, client=client_ip)
    counters = listener.counters
    shared = listener.shared_sessions if not probe else None
    on_hello = None if shared is None else partial(shared.on_hello, client=client_ip)
    with trio.CancelScope(deadline=trio.current_time() + listener.config.tls.handshake_timeout):
        try:
            await tls_stream.do_handshake(on_hello=on_hello)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        else:
            ssl_object = tls_stream.ssl_object
            counters.handshake(ssl_object.version() or "", resumed=ssl_object.session_reused)
            return tls_stream
    counters.handshakes_failed += 1
    if engine is not None and not probe:
        engine.unregister_connection(tls_stream.ssl_object)
    await trio.aclose_forcefully(stream)
    return None


def _peer_ip(stream: trio.SocketStream) -> str:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return UNKNOWN_PEER
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)
