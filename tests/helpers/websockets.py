"""A real WebSocket upstream (trio-websocket, on wsproto) for integration tests, on 127.0.0.1.

::

    async with WebSocketEcho() as up:
        ...  # point the proxy at up.address; every message comes back as it was sent
        await up.wait_for(lambda: up.closed == 1)

It records the handshake requests' headers (``requests``), connections ``opened`` and
``closed``, and the close codes it saw (``close_codes``: 1006 when the peer vanished without a
close frame). ``set_cookie`` adds that ``Set-Cookie`` value to every 101.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Self

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket


class WebSocketEcho:
    """An echo WebSocket server (see the module docstring)."""

    def __init__(self, *, set_cookie: str | None = None) -> None:
        self.set_cookie = set_cookie
        self.address = ""
        self.requests: list[list[tuple[bytes, bytes]]] = []
        self.opened = 0
        self.closed = 0
        self.close_codes: list[int | None] = []
        self._changed = trio.Event()
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> Self:
        self._nursery_cm = trio.open_nursery()
        nursery = self._nursery = await self._nursery_cm.__aenter__()
        serve = functools.partial(
            serve_websocket, self._handle, "127.0.0.1", 0, None, handler_nursery=nursery
        )
        server = await nursery.start(serve)
        self.address = f"127.0.0.1:{server.port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._nursery is not None and self._nursery_cm is not None
        self._nursery.cancel_scope.cancel()
        return await self._nursery_cm.__aexit__(exc_type, exc, tb)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool], *, max_wait: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, re-checking on every change."""
        with trio.fail_after(max_wait):
            while not predicate():
                await self._changed.wait()

    async def _handle(self, request: WebSocketRequest) -> None:
        self.requests.append(list(request.headers))
        extra = [(b"set-cookie", self.set_cookie.encode())] if self.set_cookie else None
        ws = await request.accept(extra_headers=extra)
        self.opened += 1
        self._notify()
        try:
            while True:
                message = await ws.get_message()
                await ws.send_message(message)
        except ConnectionClosed as closed:
            self.close_codes.append(closed.reason.code)
        finally:
            self.closed += 1
            self._notify()
