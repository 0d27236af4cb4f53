"""net.lingering: half-close, then discard within the bounds (in memory, on a mock clock); the
TLS half (close_notify first) runs over real sockets in tests/net/test_tls_stream.py and
tests/integration/test_lingering_close.py."""

from __future__ import annotations

import trio
import trio.testing

from gateproxy.core.lingering import Linger
from gateproxy.net.lingering import linger

PLAN = Linger(time=10.0, timeout=2.0, max_bytes=1000)


def streams() -> tuple[trio.StapledStream, trio.abc.SendStream, trio.abc.ReceiveStream]:
    """The server's stream and the client's two ends (what it sends, what it receives)."""
    client_out, server_in = trio.testing.memory_stream_one_way_pair()
    server_out, client_in = trio.testing.memory_stream_one_way_pair()
    return trio.StapledStream(server_out, server_in), client_out, client_in


async def _client(out: trio.abc.SendStream, pieces: list[bytes], gap: float, close: bool) -> None:
    for piece in pieces:
        await out.send_all(piece)
        await trio.sleep(gap)
    if close:
        await out.aclose()


async def test_linger_endings(autojump_clock: trio.testing.MockClock) -> None:
    cases = [
        ([b"y" * 10] * 3, 1.0, True, "eof", 3.0),  # the client closes after its last piece
        ([b"y" * 10], 0.0, False, "lingering_timeout", 2.0),  # quiet for `timeout`
        ([b"y"] * 100, 1.0, False, "lingering_time", 10.0),  # trickling: cut at `time`
        ([b"y" * 600] * 2, 0.0, False, "lingering_max_bytes", 0.0),  # over `max_bytes`
    ]
    for pieces, gap, close, ending, took in cases:
        stream, client_out, client_in = streams()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_client, client_out, pieces, gap, close)
            start = trio.current_time()
            assert await linger(stream, PLAN) == ending
            assert trio.current_time() - start == took, ending
            assert await client_in.receive_some(10) == b""  # the client saw our FIN at once
            nursery.cancel_scope.cancel()


async def test_linger_on_a_broken_connection_ends_at_once() -> None:
    stream, _, _ = streams()
    await stream.receive_stream.aclose()  # reading fails as on a reset socket
    assert await linger(stream, PLAN) == "reset"
