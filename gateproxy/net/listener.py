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

from gateproxy.core.config import split_hostport
from gateproxy.logs import event
from gateproxy.net.connection import handle_connection
from gateproxy.net.runtime import ListenerRuntime


async def open_listeners(bind: str, *, reuse_port: bool = False) -> list[trio.SocketListener]:
    """Bind and listen on ``host:port``; IPv6 as ``[::1]:8443``."""
    host, port = split_hostport(bind)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        await sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return [trio.SocketListener(sock)]


def bound_address(listeners: list[trio.SocketListener]) -> tuple[str, int]:
    """The (host, port) actually bound (useful with port 0)."""
    name = listeners[0].socket.getsockname()
    return str(name[0]), int(name[1])


async def serve_listener(
    runtime_ref: list[ListenerRuntime],
    listeners: list[trio.SocketListener],
    *,
    handler_nursery: trio.Nursery,
) -> None:
    """Accept forever; ``runtime_ref[0]`` is read per connection so a reload swaps it."""

    async def handler(stream: trio.SocketStream) -> None:
        listener = runtime_ref[0]
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

    await trio.serve_listeners(handler, listeners, handler_nursery=handler_nursery)
