"""UpstreamConnection's direct socket reads: taking what is already there without waiting, and
waiting first when nothing can have arrived yet. Real TCP sockets on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator

import h11
import pytest
import trio
import trio.testing

from gateproxy.errors import UpstreamProtocolError, UpstreamTimeout
from gateproxy.net.upstream import UpstreamConnection
from tests.helpers.sockets import tcp_pair

REQUEST = h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"app")])
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"


@pytest.fixture
async def pair() -> AsyncIterator[tuple[UpstreamConnection, trio.SocketStream]]:
    """(our connection, the server's end of it)."""
    async with tcp_pair() as (server, client):
        yield UpstreamConnection(client, server="127.0.0.1:9"), server


async def arrived(conn: UpstreamConnection, server: trio.SocketStream, data: bytes) -> None:
    """The server sends ``data`` and it is waiting in our socket."""
    await server.send_all(data)
    with trio.fail_after(5):
        await trio.lowlevel.wait_readable(conn.stream.socket)


async def sent_request(conn: UpstreamConnection, server: trio.SocketStream) -> None:
    await conn.send(REQUEST, max_wait=5)
    await conn.send(h11.EndOfMessage(), max_wait=5)
    assert b"GET / HTTP/1.1\r\n" in await server.receive_some(4096)


async def test_receive_ready_is_false_when_nothing_arrived(
    pair: tuple[UpstreamConnection, trio.SocketStream],
) -> None:
    conn, server = pair
    await sent_request(conn, server)
    assert conn.receive_ready() is False
    assert conn.poll_event() is h11.NEED_DATA


async def test_receive_ready_takes_what_is_there_without_waiting(
    pair: tuple[UpstreamConnection, trio.SocketStream],
) -> None:
    conn, server = pair
    await sent_request(conn, server)
    await arrived(conn, server, RESPONSE)
    assert conn.receive_ready() is True
    response = conn.poll_event()
    assert isinstance(response, h11.Response) and response.status_code == 200
    body = conn.poll_event()
    assert isinstance(body, h11.Data) and body.data == b"hello"
    assert isinstance(conn.poll_event(), h11.EndOfMessage)
    assert conn.bytes_received == len(RESPONSE)


async def test_receive_ready_reports_eof_mid_body(
    pair: tuple[UpstreamConnection, trio.SocketStream],
) -> None:
    conn, server = pair
    await sent_request(conn, server)
    await arrived(conn, server, RESPONSE[:-2])
    assert conn.receive_ready() is True
    assert isinstance(conn.poll_event(), h11.Response)
    assert isinstance(conn.poll_event(), h11.Data)
    await server.aclose()
    with trio.fail_after(5):
        await trio.lowlevel.wait_readable(conn.stream.socket)
    with pytest.raises(UpstreamProtocolError, match="mid-body"):
        conn.receive_ready()


async def test_wait_first_still_returns_an_answer_that_was_already_there(
    pair: tuple[UpstreamConnection, trio.SocketStream],
) -> None:
    conn, server = pair
    await sent_request(conn, server)
    await server.send_all(RESPONSE)
    with trio.fail_after(5):
        event = await conn.next_event(max_wait=5, wait_first=True)
    assert isinstance(event, h11.Response) and event.status_code == 200


async def test_wait_first_times_out_under_max_wait(
    pair: tuple[UpstreamConnection, trio.SocketStream], autojump_clock: trio.testing.MockClock
) -> None:
    conn, server = pair
    await sent_request(conn, server)
    start = trio.current_time()
    with pytest.raises(UpstreamTimeout, match="no data for 3s"):
        await conn.next_event(max_wait=3, wait_first=True)
    assert trio.current_time() - start == pytest.approx(3)
