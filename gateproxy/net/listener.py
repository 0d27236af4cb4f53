"""Listening sockets and the accept loop.

``open_listeners`` binds one ``host:port`` (port 0 picks a free port, for tests). ``serve_listener``
runs trio's accept loop (which backs off on EMFILE/ENFILE) and hands every connection to
``handle_connection`` in the daemon's connection nursery; admission happens there first, before
the TLS handshake. A failure inside one connection is logged and contained: it never reaches the
accept loop or another client.
"""

from __future__ import annotations

import socket
import traceback

import trio

from gateproxy.logs import event
from gateproxy.net.connection import handle_connection
from gateproxy.net.listen_slots import listening_socket
from gateproxy.net.runtime import ListenerRuntime


def open_listeners(bind: str) -> list[trio.SocketListener]:
    """Bind and listen on ``host:port`` (IPv6 as ``[::1]:8443``); port 0 picks a free port."""
    return [trio_listener(listening_socket(bind, reuse_port=False))]


def trio_listener(sock: socket.socket) -> trio.SocketListener:
    """A listening stdlib socket (bound here, or inherited from the supervisor) for trio."""
    sock.setblocking(False)
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def bound_address(listeners: list[trio.SocketListener]) -> tuple[str, int]:
    """The (host, port) actually bound (useful with port 0)."""
    name = listeners[0].socket.getsockname()
    return str(name[0]), int(name[1])


async def serve_listener(
    listener: ListenerRuntime,
    sockets: list[trio.SocketListener],
    *,
    handler_nursery: trio.Nursery,
) -> None:
    """Accept forever (a reload starts new worker processes: nothing here is swapped)."""

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await handle_connection(listener, stream)
        except Exception as exc:  # contained: one connection's bug never stops the proxy
            event(
                "connection_error",
                listener=listener.name,
                error=repr(exc),
                trace=traceback.format_exc(limit=8),
            )
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handler, sockets, handler_nursery=handler_nursery)
