"""Listening sockets and the accept loop.

``open_listeners`` binds one ``host:port`` (port 0 picks a free port, for tests). ``serve_listener``
runs the accept loop (which backs off on EMFILE/ENFILE, event ``accept_failed``) and hands every
connection to ``handle_connection`` in the daemon's connection nursery; admission happens there
first, before the TLS handshake. A failure inside one connection is logged and contained: it
never reaches the accept loop or another client.
"""

from __future__ import annotations

import errno
import os
import socket
import traceback

import trio

from gateproxy.logs import event
from gateproxy.net.connection import handle_connection
from gateproxy.net.listen_slots import listening_socket
from gateproxy.net.runtime import ListenerRuntime

# accept(2) failures that mean "out of a resource for now" (as trio.serve_listeners treats them)
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_DELAY = 0.1


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
    """Accept forever (a reload starts new worker processes: nothing here is swapped); the
    sockets are closed when this is cancelled."""
    try:
        async with trio.open_nursery() as nursery:
            for sock in sockets:
                nursery.start_soon(_accept_loop, listener, sock, handler_nursery)
    finally:
        for sock in sockets:
            sock.socket.close()


async def _accept_loop(
    listener: ListenerRuntime, sock: trio.SocketListener, handler_nursery: trio.Nursery
) -> None:
    """trio.serve_listeners' loop, without its second close of every connection's stream (a
    cancel scope and a checkpoint each): ``_serve_accepted`` closes the socket itself."""
    while True:
        try:
            stream = await sock.accept()
        except OSError as exc:
            if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                raise
            event("accept_failed", listener=listener.name, error=os.strerror(exc.errno))
            await trio.sleep(ACCEPT_RETRY_DELAY)  # out of fds or memory: let some close first
            continue
        handler_nursery.start_soon(_serve_accepted, listener, stream)


async def _serve_accepted(listener: ListenerRuntime, stream: trio.SocketStream) -> None:
    try:
        await handle_connection(listener, stream)
    except Exception as exc:  # contained: one connection's bug never stops the proxy
        event(
            "connection_error",
            listener=listener.name,
            error=repr(exc),
            trace=traceback.format_exc(limit=8),
        )
    finally:
        stream.socket.close()  # a no-op once closed; never waits
