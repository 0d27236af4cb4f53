"""net.listener: the accept loop backs off when out of descriptors, serves real connections, and
closes its sockets when cancelled."""

from __future__ import annotations

import errno
import json
from functools import partial

import pytest
import trio
import trio.testing

from gateproxy.net.listener import (
    ACCEPT_RETRY_DELAY,
    bound_address,
    open_listeners,
    serve_listener,
)
from tests.helpers.runtime import plain_listener_runtime

_listener = plain_listener_runtime


class _OutOfDescriptors:
    """trio's listener, as seen by the loop, when accept(2) keeps failing: EMFILE twice, then a
    failure that is not about capacity (which must end the loop)."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.socket = self  # serve_listener closes ``listener.socket`` on the way out
        self.closed = False

    def close(self) -> None:
        self.closed = True

    async def accept(self) -> trio.SocketStream:
        self.calls.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        code = errno.EMFILE if len(self.calls) <= 2 else errno.EBADF
        raise OSError(code, "accept failed")


async def test_out_of_descriptors_pauses_then_retries(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    failing = _OutOfDescriptors()
    with pytest.raises(BaseExceptionGroup) as raised:
        async with trio.open_nursery() as handlers:
            await serve_listener(_listener(), [failing], handler_nursery=handlers)  # type: ignore[list-item]
    assert raised.group_contains(OSError, match="accept failed")
    assert failing.closed
    gaps = [b - a for a, b in zip(failing.calls, failing.calls[1:], strict=False)]
    assert gaps == pytest.approx([ACCEPT_RETRY_DELAY, ACCEPT_RETRY_DELAY])
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    failed = [line for line in lines if line["event"] == "accept_failed"]
    assert len(failed) == 2 and failed[0]["listener"] == "plain"


async def test_serves_connections_and_closes_its_sockets_when_cancelled() -> None:
    sockets = open_listeners("127.0.0.1:0")
    host, port = bound_address(sockets)
    async with trio.open_nursery() as handlers:
        handlers.start_soon(partial(serve_listener, _listener(), sockets, handler_nursery=handlers))
        for _ in range(3):  # each answered (502: the upstream's port 9 refuses) and closed, and
            # the loop keeps accepting
            stream = await trio.open_tcp_stream(host, port)
            await stream.send_all(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := await stream.receive_some(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 502 ")
            await stream.aclose()
        handlers.cancel_scope.cancel()
    assert sockets[0].socket.fileno() == -1
