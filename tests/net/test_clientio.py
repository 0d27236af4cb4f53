"""net.clientio: the client side over in-memory streams: the fast path, and the hand-over to h11
(at the start of a request, and in the middle of a fast exchange) giving h11's exact bytes."""

from __future__ import annotations

import h11
import trio
import trio.testing

from gateproxy.net.clientio import ClientSide

PLAIN = b"GET /a HTTP/1.1\r\nHost: app.test\r\n\r\n"
CHUNKED_UPLOAD = (
    b"POST /u HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
)


def pair() -> tuple[ClientSide, trio.abc.SendStream, trio.abc.ReceiveStream]:
    """A ClientSide and the client's two ends (what the client sends, what it receives)."""
    client_out, server_in = trio.testing.memory_stream_one_way_pair()
    server_out, client_in = trio.testing.memory_stream_one_way_pair()
    side = ClientSide(trio.StapledStream(server_out, server_in), max_header_bytes=8192)
    return side, client_out, client_in


def h11_answer(request: bytes, *events: h11.Event) -> bytes:
    """The bytes h11 itself would send for ``events`` after reading ``request``."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(request)
    while conn.next_event() not in (h11.NEED_DATA, h11.PAUSED):
        pass
    return b"".join(conn.send(event) or b"" for event in events)


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    """What was sent so far (a memory stream hands over all it buffered in one receive)."""
    return bytes(await stream.receive_some(1 << 20))


async def test_a_plain_exchange_is_fast_and_byte_identical_to_h11() -> None:
    side, client_out, client_in = pair()
    await client_out.send_all(PLAIN + PLAIN)
    request = await side.next_event(max_wait=0, limit="x")
    assert isinstance(request, h11.Request) and side.head_was_fast
    assert isinstance(await side.next_event(max_wait=0, limit="x"), h11.EndOfMessage)
    events = (
        h11.Response(status_code=200, headers=[(b"content-length", b"2")], reason=b"OK"),
        h11.Data(data=b"hi"),
        h11.EndOfMessage(),
    )
    for event in events:
        side.queue(event)
    await side.flush()
    assert await read_all(client_in) == h11_answer(PLAIN, *events)
    assert side.cycle_reusable() and side.has_buffered_bytes()
    side.start_next_cycle()
    assert isinstance(side.poll_event(), h11.Request) and side.head_was_fast


async def test_a_response_without_length_hands_over_to_h11_mid_exchange() -> None:
    side, client_out, client_in = pair()
    await client_out.send_all(PLAIN)
    assert isinstance(await side.next_event(max_wait=0, limit="x"), h11.Request)
    assert isinstance(await side.next_event(max_wait=0, limit="x"), h11.EndOfMessage)
    events = (
        h11.Response(status_code=200, headers=[], reason=b"OK"),  # h11 will chunk it
        h11.Data(data=b"hello"),
        h11.EndOfMessage(),
    )
    for event in events:
        side.queue(event)
    await side.flush()
    sent = await read_all(client_in)
    assert sent == h11_answer(PLAIN, *events)
    assert b"transfer-encoding: chunked" in sent.lower()
    assert side.cycle_reusable()
    side.start_next_cycle()
    assert not side.head_was_fast and not side.request_started


async def test_an_unusual_request_goes_to_h11_and_the_next_one_is_fast_again() -> None:
    side, client_out, _client_in = pair()
    await client_out.send_all(CHUNKED_UPLOAD + PLAIN)
    side.start_head()
    request = await side.next_event(max_wait=0, limit="x")
    assert isinstance(request, h11.Request) and not side.head_was_fast
    assert side.raw_head().startswith(CHUNKED_UPLOAD)
    data = await side.next_event(max_wait=0, limit="x")
    assert isinstance(data, h11.Data) and data.data == b"abc"
    assert isinstance(await side.next_event(max_wait=0, limit="x"), h11.EndOfMessage)
    await side.send_simple(200, b"ok")
    side.start_next_cycle()
    assert isinstance(side.poll_event(), h11.Request) and side.head_was_fast


async def test_fast_path_refuses_a_body_longer_than_its_content_length() -> None:
    side, client_out, _client_in = pair()
    await client_out.send_all(PLAIN)
    await side.next_event(max_wait=0, limit="x")
    side.queue(h11.Response(status_code=200, headers=[(b"content-length", b"1")], reason=b""))
    try:
        side.queue(h11.Data(data=b"too long"))
    except h11.LocalProtocolError:
        pass
    else:
        raise AssertionError("a body over its Content-Length was accepted")


async def test_an_http10_exchange_is_fast_byte_identical_to_h11_and_closes() -> None:
    request = b"GET /a HTTP/1.0\r\n\r\n"
    for upstream_connection in ([], [(b"connection", b"keep-alive, x-opt")]):
        side, client_out, client_in = pair()
        await client_out.send_all(request)
        assert isinstance(await side.next_event(max_wait=0, limit="x"), h11.Request)
        assert side.head_was_fast
        assert isinstance(await side.next_event(max_wait=0, limit="x"), h11.EndOfMessage)
        events = (
            h11.Response(
                status_code=200,
                headers=[(b"content-length", b"2"), *upstream_connection, (b"x-a", b"1")],
                reason=b"OK",
            ),
            h11.Data(data=b"hi"),
            h11.EndOfMessage(),
        )
        for event in events:
            side.queue(event)
        await side.flush()
        sent = await read_all(client_in)
        assert sent == h11_answer(request, *events)
        assert sent.endswith(b"\r\nConnection: close\r\n\r\nhi") or b"x-opt" in sent
        assert not side.cycle_reusable()  # HTTP/1.0: h11 would close too


# --- what a lingering close needs to know ---------------------------------------------------------

UPLOAD = b"POST /u HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n" + b"x" * 10


async def test_request_unread_while_the_client_may_still_be_sending() -> None:
    side, client_out, _ = pair()
    await client_out.send_all(UPLOAD)
    assert isinstance(await side.next_event(max_wait=0, limit="x"), h11.Request)
    assert side.request_unread  # 90 body bytes still to come
    await client_out.aclose()
    await side.receive(max_wait=0, limit="x")  # ... or not: the client closed its side
    assert not side.request_unread


async def test_request_read_whole_is_not_unread_even_when_the_client_said_close() -> None:
    side, client_out, client_in = pair()
    await client_out.send_all(PLAIN.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    assert isinstance(await side.next_event(max_wait=0, limit="x"), h11.Request)
    assert isinstance(await side.next_event(max_wait=0, limit="x"), h11.EndOfMessage)
    await side.send_simple(200, b"ok")
    assert side.response_status == 200 and not side.request_unread
    assert b"200 OK" in await read_all(client_in)


async def test_pipelined_bytes_are_unread_and_a_new_cycle_forgets_the_status() -> None:
    side, client_out, _ = pair()
    await client_out.send_all(PLAIN + b"GET /next")
    assert isinstance(await side.next_event(max_wait=0, limit="x"), h11.Request)
    assert isinstance(await side.next_event(max_wait=0, limit="x"), h11.EndOfMessage)
    await side.send_simple(204, b"")  # the fast path
    assert side.response_status == 204 and side.request_unread
    side.start_next_cycle()
    assert side.response_status == 0
