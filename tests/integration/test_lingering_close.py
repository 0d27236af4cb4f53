"""Lingering close: an error answered while the client is still sending reaches the client.

A client that declares a body too large (or is too slow, or sends a bad chunk or a huge head)
gets its error response while its bytes are still arriving. Closing a socket with unread bytes
sends a TCP RST instead of a FIN: the client's next write fails, its read ends in a reset (on
TLS: no close_notify, so a complete response looks truncated), and a client whose kernel gets
the RST before it read the response loses the response itself. These tests send through real
sockets (stdlib ``ssl`` for TLS) and require, every time, the whole response then a clean close.

Lingering bounds are short (hundreds of ms) so the tests that wait for them stay well under a
second each; waits poll with deadlines.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trustme

from gateproxy.daemon import Daemon
from tests.conftest import CertPaths
from tests.helpers.clients import client_context
from tests.helpers.proxy import poll, proxy_config, running_proxy, tls_listener
from tests.helpers.rawhttp import EarlyAnswer, RawClient, plain_listener, upload_regardless
from tests.helpers.upstreams import RecordingUpstream

KIB = 1024
TOO_LARGE = b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2097152\r\n\r\n"
GET = b"GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n"
SHORT = {"lingering_time": "600ms", "lingering_timeout": "300ms"}


@asynccontextmanager
async def proxy(server_cert: CertPaths | None = None, **limits: object) -> AsyncIterator[Daemon]:
    """A proxy with one listener, ``public`` (TLS, when ``server_cert``) or ``plain``, that
    refuses :data:`TOO_LARGE`."""
    limits.setdefault("max_body_bytes", "1MiB")
    if server_cert is None:
        spec = plain_listener(limits=limits)
    else:
        spec = tls_listener(cert=server_cert.cert, key=server_cert.key, limits=limits)
    async with RecordingUpstream() as up:
        async with running_proxy(proxy_config([spec], {"app": {"servers": [up.address]}})) as d:
            yield d


def stats(daemon: Daemon, name: str = "plain") -> dict[str, Any]:
    return daemon.stats()["listeners"][name]  # type: ignore[index, no-any-return]


def lingered(daemon: Daemon, name: str = "plain") -> dict[str, int]:
    return dict(stats(daemon, name)["lingering_closes"])


async def upload(
    daemon: Daemon, name: str, context: ssl.SSLContext | None, head: bytes, body: list[bytes]
) -> EarlyAnswer:
    run = functools.partial(upload_regardless, daemon.addresses[name], context, head, body)
    return await trio.to_thread.run_sync(run, abandon_on_cancel=True)


def answered(answer: EarlyAnswer, status: int) -> bool:
    """The client wrote all it meant to, then read the whole response and a clean close."""
    response = answer.response()
    return (
        response is not None
        and response.status == status
        and answer.write_error is None
        and answer.ended == "eof"
    )


# --- the early answer arrives whole, then a clean close -----------------------------------------


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
@pytest.mark.parametrize("piece", [64 * KIB, 256 * KIB, 1024 * KIB], ids=["64k", "256k", "1m"])
async def test_413_reaches_a_client_that_keeps_uploading(
    ca: trustme.CA, server_cert: CertPaths, tls: bool, piece: int
) -> None:
    name, context = ("public", client_context(ca)) if tls else ("plain", None)
    async with proxy(server_cert if tls else None) as daemon:
        answers = [
            await upload(daemon, name, context, TOO_LARGE, [b"x" * piece]) for _ in range(20)
        ]
        failed = [a for a in answers if not answered(a, 413)]
        assert not failed, f"{len(failed)}/20 lost the 413 or its clean close: {failed[0]}"
        await poll(lambda: lingered(daemon, name)["eof"] == 20)  # each client closed: EOF
        counts = lingered(daemon, name)
    assert counts == {**dict.fromkeys(counts, 0), "eof": 20}


BAD_CHUNK = b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
HUGE_HEAD = b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: " + b"b" * 4096  # ... still going


@pytest.mark.parametrize(
    ("head", "status"), [(BAD_CHUNK, 400), (HUGE_HEAD, 431)], ids=["bad_chunk", "huge_head"]
)
@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
async def test_400_and_431_reach_a_client_that_keeps_sending(
    ca: trustme.CA, server_cert: CertPaths, tls: bool, head: bytes, status: int
) -> None:
    name, context = ("public", client_context(ca)) if tls else ("plain", None)
    async with proxy(server_cert if tls else None, max_header_bytes="1KiB") as daemon:
        answers = [await upload(daemon, name, context, head, [b"x" * 256 * KIB]) for _ in range(20)]
    failed = [a for a in answers if not answered(a, status)]
    assert not failed, f"{len(failed)}/20 lost the {status} or its clean close: {failed[0]}"


async def test_408_reaches_a_client_that_resumes_its_upload() -> None:
    async with proxy(body_timeout="200ms") as daemon:
        async with await RawClient.connect(daemon) as client:
            await client.send(
                b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 200000\r\n\r\n"
                + b"x" * 10
            )
            await trio.lowlevel.wait_readable(client.stream.socket)  # the 408 is here, unread
            await client.send(b"x" * 64 * KIB)  # the client goes on with its body
            response = await client.read_response()
            assert await client.closed_within(1.0)
            assert not client.reset
        await poll(lambda: lingered(daemon)["eof"] == 1)
        limits = stats(daemon)["limits"]
    assert (response.status, response.closes) == (408, True)
    assert limits["body_timeout"] == 1


# --- the bounds ---------------------------------------------------------------------------------


async def _answered_413(client: RawClient) -> None:
    await client.send(TOO_LARGE + b"x" * 1000)
    assert (await client.read_response()).status == 413
    assert await client.closed_within(1.0)  # our FIN: the response is complete
    assert not client.reset


async def test_a_client_trickling_forever_is_cut_after_lingering_time() -> None:
    async with proxy(**SHORT) as daemon:
        async with await RawClient.connect(daemon) as client:
            await _answered_413(client)
            start = trio.current_time()
            with trio.move_on_after(3.0):
                while True:  # one byte per 50 ms: never quiet for lingering_timeout (300 ms)
                    await trio.sleep(0.05)
                    if trio.current_time() - start < 0.3:
                        assert stats(daemon)["connections"]["open"] == 1  # still counted
                    if not stats(daemon)["connections"]["open"]:
                        break
                    await client.send(b"x")
            held = trio.current_time() - start
        counts = lingered(daemon)
    assert counts["lingering_time"] == 1
    assert 0.5 < held < 1.5  # lingering_time is 600 ms


async def test_a_silent_client_is_closed_after_lingering_timeout() -> None:
    async with proxy(**SHORT) as daemon:
        async with await RawClient.connect(daemon) as client:
            await _answered_413(client)
            start = trio.current_time()
            await poll(lambda: not stats(daemon)["connections"]["open"])
            held = trio.current_time() - start
        counts = lingered(daemon)
    assert counts["lingering_timeout"] == 1
    assert 0.2 < held < 0.6  # lingering_timeout is 300 ms


async def test_lingering_discards_at_most_lingering_max_bytes() -> None:
    async with proxy(lingering_max_bytes="64KiB", lingering_timeout="5s") as daemon:
        start = trio.current_time()
        answer = await upload(daemon, "plain", None, TOO_LARGE, [b"x" * 1024 * KIB])
        await poll(lambda: lingered(daemon)["lingering_max_bytes"] == 1)
        cut_after = trio.current_time() - start
    assert answer.response() is not None  # (read before the reset came: loopback is quick)
    assert cut_after < 1.0  # not lingering_timeout: the cap ended it


async def test_a_lingering_connection_counts_against_max_connections_per_client() -> None:
    async with proxy(max_connections_per_client=1, **SHORT) as daemon:
        async with await RawClient.connect(daemon) as client:
            await _answered_413(client)
            async with await RawClient.connect(daemon) as second:
                assert await second.closed_within(1.0)  # refused: the first still lingers
            rejected = stats(daemon)["limits"]["max_connections_per_client"]
            await client.aclose()  # our EOF ends the lingering at once
            await poll(lambda: lingered(daemon)["eof"] == 1)
            async with await RawClient.connect(daemon) as third:
                await third.send(GET)
                after = await third.read_response()
    assert rejected == 1
    assert after.status == 200


async def test_a_drain_cuts_lingering_short() -> None:
    async with proxy(lingering_time="30s", lingering_timeout="5s") as daemon:
        async with await RawClient.connect(daemon) as client:
            await _answered_413(client)
            start = trio.current_time()
            daemon.request_stop()  # a graceful drain (SIGTERM)
            await poll(lambda: lingered(daemon)["draining"] == 1)
            cut_after = trio.current_time() - start
    assert cut_after < 1.0


# --- when not to linger -------------------------------------------------------------------------


async def test_no_lingering_after_a_request_read_whole() -> None:
    async with proxy(max_requests_per_connection=2) as daemon:
        async with await RawClient.connect(daemon) as client:
            await client.send(GET)
            keep_alive = await client.read_response()
            await client.send(GET)  # the second and last: the connection closes after it
            last = await client.read_response()
            assert await client.closed_within(1.0)
            await poll(lambda: not stats(daemon)["connections"]["open"])  # closed, not lingering
        async with await RawClient.connect(daemon) as client:
            await client.send(GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            asked_to_close = await client.read_response()
            await poll(lambda: not stats(daemon)["connections"]["open"])
        counts = lingered(daemon)
    assert (keep_alive.closes, last.closes, asked_to_close.closes) == (False, True, True)
    assert not any(counts.values()), counts


@pytest.mark.parametrize(
    ("mode", "expected"), [("off", 0), ("always", 1)], ids=["off_never", "always_even_when_read"]
)
async def test_lingering_close_off_and_always(mode: str, expected: int) -> None:
    async with proxy(lingering_close=mode, lingering_timeout="5s") as daemon:
        async with await RawClient.connect(daemon) as client:
            await client.send(GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            assert (await client.read_response()).status == 200
            assert await client.closed_within(1.0)
        async with await RawClient.connect(daemon) as client:
            await client.send(TOO_LARGE)
            assert (await client.read_response()).status == 413
            assert await client.closed_within(1.0)
        await poll(lambda: not stats(daemon)["connections"]["open"])
        counts = lingered(daemon)
    assert counts["eof"] == 2 * expected, counts  # "off": neither; "always": both
