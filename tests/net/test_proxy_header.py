"""Reading a PROXY header off a real socket: exactly its bytes are consumed, in any pieces."""

from __future__ import annotations

import trio
import trio.testing

from gateproxy.core.proxy_protocol import ProxyHeader, ProxyHeaderInvalid
from gateproxy.net.plain_stream import PlainStream
from gateproxy.net.proxy_header import read_header
from tests.helpers.sockets import tcp_pair

HEADER = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n"
AFTER = b"GET / HTTP/1.1\r\n\r\n"


async def test_the_bytes_after_the_header_stay_for_the_stream() -> None:
    async with tcp_pair() as (server, client):
        await client.send_all(HEADER + AFTER)
        outcome = await read_header(server.socket)
        assert isinstance(outcome, ProxyHeader) and outcome.source == ("203.0.113.7", 51000)
        assert await PlainStream(server).receive_some(4096) == AFTER


async def test_a_header_in_pieces_is_read_without_spinning() -> None:
    async with tcp_pair() as (server, client):
        result: list[ProxyHeader | ProxyHeaderInvalid] = []

        async def read() -> None:
            result.append(await read_header(server.socket))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            for i in range(0, len(HEADER), 5):
                await trio.testing.wait_all_tasks_blocked()  # the reader waits, not polls
                assert not result
                await client.send_all(HEADER[i : i + 5])
            await client.send_all(AFTER)
        assert isinstance(result[0], ProxyHeader)
        assert await PlainStream(server).receive_some(4096) == AFTER


async def test_eof_before_any_byte_is_a_missing_header_and_inside_one_is_invalid() -> None:
    async with tcp_pair() as (server, client):
        await client.aclose()
        outcome = await read_header(server.socket)
        assert outcome == ProxyHeaderInvalid("not a PROXY protocol header")
    async with tcp_pair() as (server, client):
        await client.send_all(HEADER[:10])
        await client.aclose()
        outcome = await read_header(server.socket)
        assert outcome == ProxyHeaderInvalid("connection closed inside the PROXY header")
