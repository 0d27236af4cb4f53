"""ControlChannel over a real socketpair: framing, reassembly, EOF, bad lines, concurrent sends."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from gateproxy.net.control import MAX_LINE, ControlChannel, ControlError, Message


@asynccontextmanager
async def channel_pair() -> AsyncIterator[tuple[ControlChannel, ControlChannel]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left, right = ControlChannel.from_socket(a), ControlChannel.from_socket(b)
    try:
        yield left, right
    finally:
        await left.aclose()
        await right.aclose()


@pytest.fixture
def raw_pair() -> Iterator[tuple[ControlChannel, socket.socket]]:
    """A channel and the plain blocking socket at the other end, for writing raw bytes."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.settimeout(5)
    with b:
        yield ControlChannel.from_socket(a), b
        a.close()


async def test_messages_round_trip_in_order_both_ways() -> None:
    sent: list[Message] = [
        {"op": "setup", "index": 0, "listeners": {"public": 7}},
        {"op": "stats", "id": 1},
        {"op": "keys", "ticket_keys": {"public": [{"name": "ab" * 16, "age_s": 1.5}]}},
        {"op": "stop", "at_once": True, "text": "line\nbreak \u00e9 \u2603"},
    ]
    async with channel_pair() as (left, right):
        for message in sent:
            await left.send(message)
        assert [await right.receive() for _ in sent] == sent
        await right.send({"op": "ready", "pid": 42})
        assert await left.receive() == {"op": "ready", "pid": 42}


async def test_one_line_per_message_on_the_wire(
    raw_pair: tuple[ControlChannel, socket.socket],
) -> None:
    channel, raw = raw_pair
    await channel.send({"op": "a", "s": "x\ny"})
    await channel.send({"op": "b"})
    expected = b'{"op":"a","s":"x\\ny"}\n{"op":"b"}\n'
    data = b""
    while len(data) < len(expected):
        data += raw.recv(4096)
    assert data == expected


async def test_a_message_split_across_sends_is_reassembled(
    raw_pair: tuple[ControlChannel, socket.socket],
) -> None:
    channel, raw = raw_pair
    line = json.dumps({"op": "stats_reply", "id": 3, "stats": {"a": [1, 2, 3]}}).encode() + b"\n"
    pieces = [line[:1], line[1:9], line[9:-1], line[-1:]]
    received: list[Message | None] = []

    async def receiver() -> None:
        received.append(await channel.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        for piece in pieces:
            await trio.testing.wait_all_tasks_blocked()
            assert received == []  # still waiting for the newline
            raw.sendall(piece)
    assert received == [{"op": "stats_reply", "id": 3, "stats": {"a": [1, 2, 3]}}]


async def test_several_messages_in_one_send_come_out_one_by_one(
    raw_pair: tuple[ControlChannel, socket.socket],
) -> None:
    channel, raw = raw_pair
    raw.sendall(b'{"op":"a"}\n{"op":"b"}\n{"op":"c","n":1')
    assert await channel.receive() == {"op": "a"}
    assert await channel.receive() == {"op": "b"}
    raw.sendall(b"}\n")
    assert await channel.receive() == {"op": "c", "n": 1}


async def test_eof_gives_none(raw_pair: tuple[ControlChannel, socket.socket]) -> None:
    channel, raw = raw_pair
    raw.sendall(b'{"op":"last"}\n')
    raw.shutdown(socket.SHUT_WR)
    assert await channel.receive() == {"op": "last"}
    assert await channel.receive() is None
    assert await channel.receive() is None


async def test_eof_in_the_middle_of_a_line_gives_none(
    raw_pair: tuple[ControlChannel, socket.socket],
) -> None:
    channel, raw = raw_pair
    raw.sendall(b'{"op":"trunc')
    raw.shutdown(socket.SHUT_WR)
    assert await channel.receive() is None


async def test_peer_closed_gives_none_and_sending_breaks() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = ControlChannel.from_socket(a)
    b.close()
    assert await channel.receive() is None
    with pytest.raises(trio.BrokenResourceError):
        await channel.send({"op": "stats", "id": 1})
    await channel.aclose()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"hello", "control line is not JSON: b'hello'"),
        (b"", "control line is not JSON: b''"),
        (b'{"op": "a"', "control line is not JSON"),
        (b"\xff\xfe", "control line is not JSON"),
        (b'{"id": 1}', "control message without an 'op'"),
        (b'{"op": 5}', "control message without an 'op'"),
        (b'["op", "stop"]', "control message without an 'op'"),
        (b'"stop"', "control message without an 'op'"),
        (b"null", "control message without an 'op'"),
    ],
)
async def test_bad_lines_raise_control_error(
    raw_pair: tuple[ControlChannel, socket.socket], line: bytes, message: str
) -> None:
    channel, raw = raw_pair
    raw.sendall(line + b'\n{"op":"next"}\n')
    with pytest.raises(ControlError) as info:
        await channel.receive()
    assert message in str(info.value)
    # the bad line was consumed; the framing is intact
    assert await channel.receive() == {"op": "next"}


async def test_error_message_quotes_at_most_80_bytes(
    raw_pair: tuple[ControlChannel, socket.socket],
) -> None:
    channel, raw = raw_pair
    raw.sendall(b"z" * 500 + b"\n")
    with pytest.raises(ControlError) as info:
        await channel.receive()
    assert ("z" * 80) in str(info.value) and ("z" * 81) not in str(info.value)


async def test_concurrent_sends_never_interleave() -> None:
    per_task = 30
    payload = {"a": "A" * 200_000, "b": "B" * 150_000}
    received: list[Message] = []
    async with channel_pair() as (left, right):

        async def sender(tag: str) -> None:
            for n in range(per_task):
                await left.send({"op": "blob", "tag": tag, "n": n, "data": payload[tag]})

        async def receiver() -> None:
            for _ in range(2 * per_task):
                message = await right.receive()
                assert message is not None
                received.append(message)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receiver)
                nursery.start_soon(sender, "a")
                nursery.start_soon(sender, "b")
    assert len(received) == 2 * per_task
    for tag in ("a", "b"):
        mine = [m for m in received if m["tag"] == tag]
        assert [m["n"] for m in mine] == list(range(per_task))
        assert all(m["data"] == payload[tag] for m in mine)
    # both tasks really were sending at the same time, not one after the other
    tags = [m["tag"] for m in received]
    assert tags[:per_task] != ["a"] * per_task or tags[per_task:] != ["b"] * per_task


async def test_a_line_longer_than_max_line_is_refused_not_buffered() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = ControlChannel.from_socket(a)
    flood = trio.SocketStream(trio.socket.from_stdlib_socket(b))

    async def feed() -> None:
        chunk = b"x" * (1 << 20)
        try:
            for _ in range(MAX_LINE // len(chunk) + 2):
                await flood.send_all(chunk)
        except trio.BrokenResourceError:
            pass  # the reader gave up and closed its end

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            with pytest.raises(ControlError, match=f"control line longer than {MAX_LINE} bytes"):
                await channel.receive()
            await channel.aclose()
    await flood.aclose()
