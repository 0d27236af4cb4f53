"""A real WebSocket upstream (trio-websocket, on wsproto) for integration tests, on 127.0.0.1.

::

    async with WebSocketEcho() as up:
        ...  # point the proxy at up.address; every message comes back as it was sent
        await up.wait_for(lambda: up.closed == 1)

It is one of ``tests.helpers.upstreams``' servers (same lifecycle, ``connections``,
``wait_for``); it records the handshake requests' headers (``requests``), WebSockets ``opened``
and ``closed``, and the close codes it saw (``close_codes``: 1006 when the peer vanished
without a close frame). ``set_cookie`` adds that ``Set-Cookie`` value to every 101.
"""

from __future__ import annotations

import trio
from trio_websocket import ConnectionClosed, wrap_server_stream

from tests.helpers.upstreams import _Upstream


class WebSocketEcho(_Upstream):
    """An echo WebSocket server (see the module docstring)."""

    def __init__(self, *, set_cookie: str | None = None) -> None:
        super().__init__()
        self.set_cookie = set_cookie
        self.requests: list[list[tuple[bytes, bytes]]] = []
        self.opened = 0
        self.closed = 0
        self.close_codes: list[int | None] = []

    async def _serve(self, stream: trio.SocketStream, connection_id: int) -> None:
        async with trio.open_nursery() as nursery:
            request = await wrap_server_stream(nursery, stream)
            self.requests.append(list(request.headers))
            extra = [(b"set-cookie", self.set_cookie.encode())] if self.set_cookie else None
            ws = await request.accept(extra_headers=extra)
            self.opened += 1
            self.notify()
            try:
                while True:
                    await ws.send_message(await ws.get_message())
            except ConnectionClosed as closed:
                self.close_codes.append(closed.reason.code)
            finally:
                self.closed += 1
                self.notify()
