"""The PROXY protocol header of an accepted connection, read before anything else.

On a listener with ``proxy_protocol``, :func:`proxied_client` runs first for every accepted
socket, before admission and the TLS handshake, under ``proxy_protocol.timeout``:

* From a ``trusted`` source it reads the header with ``MSG_PEEK``: it peeks at most
  ``parser.wanted`` bytes, feeds them to the sans-IO ``core.proxy_protocol`` parser and then
  consumes exactly the bytes the parser took. What follows the header (the ClientHello, the
  request) is never read here: it stays in the kernel for the TLS or plain stream, which read
  the descriptor directly. Peeked bytes that belong to an incomplete header are consumed, so the
  next peek waits for new bytes (a slow header does not spin).
* From any other source it peeks once at the first bytes; a connection that starts with a PROXY
  signature is refused (a client must not choose its own address). If nothing arrives within
  the timeout the connection goes on as usual (the handshake and request timeouts apply).

``core.client_address.decide_proxy`` decides; a refused connection is counted by reason
(``listeners.<name>.proxy_protocol.rejected``) and logged at most once per source and reason per
interval, then closed by the caller.
"""

from __future__ import annotations

import socket

import trio

from gateproxy.core.client_address import (
    UNKNOWN_PEER,
    ProxyAccepted,
    ProxyRejected,
    decide_proxy,
    untrusted_header,
)
from gateproxy.core.proxy_protocol import (
    V2_SIGNATURE,
    NeedMore,
    ProxyHeader,
    ProxyHeaderInvalid,
    ProxyHeaderParser,
    looks_like_header,
)
from gateproxy.logs import event
from gateproxy.net.runtime import ListenerRuntime


async def proxied_client(
    listener: ListenerRuntime, stream: trio.SocketStream, *, peer: str
) -> str | None:
    """The client address of this connection (the header's source, or ``peer``); None when
    the connection must be closed (already counted and logged)."""
    config = listener.config.proxy_protocol
    assert config is not None
    if peer == UNKNOWN_PEER:  # reset before we asked (HAProxy's checks close so): gone already
        return None
    trust = listener.policy.client_trust
    sock = stream.socket
    if not trust.proxy_trusted(peer):
        with trio.move_on_after(config.timeout):
            if await _starts_with_header(sock):
                _refused(listener, peer, untrusted_header(peer))
                return None
        return peer
    outcome: ProxyHeader | ProxyHeaderInvalid | None = None
    with trio.move_on_after(config.timeout):
        outcome = await read_header(sock)
    decision = decide_proxy(peer=peer, outcome=outcome)
    if isinstance(decision, ProxyRejected):
        _refused(listener, peer, decision)
        return None
    _accepted(listener, decision)
    return decision.client


async def read_header(sock: trio.socket.SocketType) -> ProxyHeader | ProxyHeaderInvalid:
    """Read one PROXY header off ``sock``, taking no byte past its end (module docstring)."""
    parser = ProxyHeaderParser()
    seen = 0
    while True:
        try:
            data = await sock.recv(parser.wanted, socket.MSG_PEEK)
        except OSError as exc:
            return ProxyHeaderInvalid(f"connection lost inside the PROXY header: {exc}")
        if not data:
            # A trusted source that sent nothing at all (a balancer's bare TCP check) has no
            # header: "missing"; one that stopped inside it sent an invalid one.
            closed = "connection closed inside the PROXY header"
            return ProxyHeaderInvalid(closed if seen else "not a PROXY protocol header")
        fed = parser.feed(data)
        seen += fed.consumed
        try:
            await _consume(sock, fed.consumed)
        except OSError as exc:
            return ProxyHeaderInvalid(f"connection lost inside the PROXY header: {exc}")
        if not isinstance(fed.outcome, NeedMore):
            return fed.outcome


async def _consume(sock: trio.socket.SocketType, count: int) -> None:
    """Drop ``count`` bytes already seen by a peek (they are in the kernel's buffer)."""
    while count > 0:
        data = await sock.recv(count)
        if not data:
            return
        count -= len(data)


async def _starts_with_header(sock: trio.socket.SocketType) -> bool:
    try:
        first = await sock.recv(len(V2_SIGNATURE), socket.MSG_PEEK)
    except OSError:
        return False
    return looks_like_header(first)


def _accepted(listener: ListenerRuntime, decision: ProxyAccepted) -> None:
    counters = listener.counters
    counters.proxy_accepted += 1
    if decision.local:
        counters.proxy_local += 1


def _refused(listener: ListenerRuntime, peer: str, decision: ProxyRejected) -> None:
    counters = listener.counters
    counters.proxy_rejected[decision.reason] = counters.proxy_rejected.get(decision.reason, 0) + 1
    suppressed = listener.rejections.note(
        peer, f"proxy_protocol_{decision.reason}", now=trio.current_time()
    )
    if suppressed is not None:
        event(
            "proxy_protocol_rejected",
            listener=listener.name,
            client=peer,
            reason=decision.reason,
            detail=decision.detail,
            suppressed_since_last=suppressed,
        )
