"""The built-in demo upstream over real sockets, with an h11 client on the other end."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import h11
import trio

from gateproxy.demo import (
    CHUNK_SIZE,
    listener_address,
    open_demo_listeners,
    serve_demo_upstream,
)


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)


class Client:
    """One keep-alive connection speaking HTTP/1.1 through h11."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    def _encode(self, event: h11.Event) -> bytes:
        data = self.conn.send(event)
        assert data is not None
        return data

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body_chunks: Sequence[bytes] = (),
    ) -> Reply:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        all_headers = [("host", "demo"), *headers]
        if body_chunks and not any(n == "content-length" for n, _ in headers):
            all_headers.append(("transfer-encoding", "chunked"))
        out = self._encode(h11.Request(method=method, target=target, headers=all_headers))
        for chunk in body_chunks:
            out += self._encode(h11.Data(data=chunk))
        await self.stream.send_all(out + self._encode(h11.EndOfMessage()))
        return await self._read_reply()

    async def _read_reply(self) -> Reply:
        reply = Reply(0, [], b"")
        body = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(1 << 20))
            elif isinstance(event, h11.Response):
                reply.status, reply.headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                reply.body = bytes(body)
                return reply


@asynccontextmanager
async def demo_client() -> AsyncIterator[Client]:
    listeners = await open_demo_listeners()
    address = listener_address(listeners[0])
    host, port = address.rsplit(":", 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_demo_upstream, listeners)
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            yield Client(stream)
        nursery.cancel_scope.cancel()


async def test_index_page_greets_and_lists_request_headers() -> None:
    with trio.fail_after(5):
        async with demo_client() as client:
            reply = await client.request("GET", "/", headers=[("x-forwarded-for", "203.0.113.7")])
    assert reply.status == 200
    assert reply.header(b"content-type") == b"text/html; charset=utf-8"
    assert b"Hello from the gateproxy demo upstream" in reply.body
    assert b"203.0.113.7" in reply.body


async def test_index_page_escapes_header_values() -> None:
    with trio.fail_after(5):
        async with demo_client() as client:
            reply = await client.request("GET", "/", headers=[("x-evil", "<script>&\"'")])
    assert b"<script>" not in reply.body
    assert b"&lt;script&gt;&amp;&quot;&#x27;" in reply.body


async def test_bytes_streams_exact_length() -> None:
    with trio.fail_after(5):
        async with demo_client() as client:
            reply = await client.request("GET", "/bytes/200000")
    assert reply.status == 200
    assert reply.header(b"content-length") == b"200000"
    assert len(reply.body) == 200000
    assert reply.body[:CHUNK_SIZE] == reply.body[CHUNK_SIZE : 2 * CHUNK_SIZE]  # same filler chunk


async def test_echo_streams_a_chunked_body_back() -> None:
    chunks = [b"first,", b"second,", b"x" * 100_000]
    with trio.fail_after(5):
        async with demo_client() as client:
            reply = await client.request(
                "POST", "/echo", headers=[("content-type", "text/x-test")], body_chunks=chunks
            )
    assert reply.status == 200
    assert reply.body == b"".join(chunks)
    assert reply.header(b"content-type") == b"text/x-test"
    assert reply.header(b"transfer-encoding") == b"chunked"


async def test_echo_keeps_content_length_framing() -> None:
    with trio.fail_after(5):
        async with demo_client() as client:
            reply = await client.request(
                "PUT", "/echo", headers=[("content-length", "5")], body_chunks=[b"hello"]
            )
    assert (reply.status, reply.body, reply.header(b"content-length")) == (200, b"hello", b"5")


async def test_head_has_headers_but_no_body() -> None:
    with trio.fail_after(5):
        async with demo_client() as client:
            head = await client.request("HEAD", "/bytes/1000")
            after = await client.request("GET", "/health")  # framing intact afterwards
    assert (head.status, head.header(b"content-length"), head.body) == (200, b"1000", b"")
    assert (after.status, after.body) == (200, b"ok")


async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    with trio.fail_after(5):
        async with demo_client() as client:
            replies = [await client.request("GET", "/health") for _ in range(3)]
            replies.append(await client.request("GET", "/headers", headers=[("x-a", "1")]))
            replies.append(await client.request("GET", "/bytes/10"))
            replies.append(await client.request("GET", "/nope"))
            replies.append(await client.request("POST", "/health", body_chunks=[b"ignored"]))
    assert [r.status for r in replies] == [200, 200, 200, 200, 200, 404, 405]
    assert json.loads(replies[3].body)["x-a"] == "1"
    assert replies[4].body == b"0123456789"


async def test_bad_request_gets_400_and_close() -> None:
    with trio.fail_after(5):
        async with demo_client() as client:
            await client.stream.send_all(b"GARBAGE\r\n\r\n")
            data = b""
            while chunk := await client.stream.receive_some(4096):
                data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in data.lower()


async def test_echo_answers_expect_100_continue_before_the_body_arrives() -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    with trio.fail_after(5):
        async with demo_client() as client:
            await client.stream.send_all(head)
            data = b""
            while b"HTTP/1.1 200" not in data:
                data += await client.stream.receive_some(4096)
            await client.stream.send_all(b"abc")
            while not data.endswith(b"abc"):
                data += await client.stream.receive_some(4096)
    assert data.startswith(b"HTTP/1.1 100 ")
