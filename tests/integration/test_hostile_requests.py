"""Hostile requests are answered locally with the status an nginx user expects; nothing of them
reaches the upstream. Requests that are forwarded arrive in h11's one canonical form.

Raw bytes go over a plain-HTTP listener (the parser is the same behind TLS); two cases also run
over TLS. Each rejected case asserts the status, that the connection closes when the framing
cannot be trusted, and that the upstream never saw a connection.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trustme

from gateproxy.daemon import Daemon
from tests.conftest import CertPaths
from tests.helpers.clients import client_context
from tests.helpers.proxy import proxy_config, running_proxy, tls_listener
from tests.helpers.rawhttp import RawClient, exchange, plain_listener, tls_raw_exchange
from tests.helpers.upstreams import RecordingUpstream


def head(*lines: bytes, method: bytes = b"GET", target: bytes = b"/") -> bytes:
    start = b"%s %s HTTP/1.1\r\nHost: app.test\r\n" % (method, target)
    return start + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def post_chunked(body: bytes) -> bytes:
    return head(b"Transfer-Encoding: chunked", method=b"POST", target=b"/upload") + body


C = pytest.param
# (request bytes, status the client sees); each closes the connection unless noted in the test.
HOSTILE = [
    # --- framing and smuggling
    C(
        head(b"Content-Length: 5", b"Transfer-Encoding: chunked", method=b"POST") + b"0\r\n\r\n",
        400,
        id="content_length_and_transfer_encoding",
    ),
    C(
        head(b"Transfer-Encoding: chunked", b"Content-Length: 5", method=b"POST") + b"0\r\n\r\n",
        400,
        id="transfer_encoding_and_content_length",
    ),
    C(
        head(b"Content-Length: 5", b"Content-Length: 6", method=b"POST") + b"hello!",
        400,
        id="differing_content_length",
    ),
    C(
        head(b"Content-Length: 5", b"Content-Length: 5", method=b"POST") + b"hello",
        400,
        id="duplicated_content_length",
    ),
    C(head(b"Content-Length: 5, 5", method=b"POST") + b"hello", 400, id="content_length_list"),
    C(head(b"Content-Length: +5", method=b"POST") + b"hello", 400, id="signed_content_length"),
    C(head(b"Content-Length: 1e3", method=b"POST"), 400, id="non_decimal_content_length"),
    C(head(b"Transfer-Encoding: gzip", method=b"POST"), 501, id="transfer_encoding_gzip"),
    C(
        head(b"Transfer-Encoding: gzip, chunked", method=b"POST") + b"0\r\n\r\n",
        501,
        id="gzip_then_chunked",
    ),
    C(
        head(b"Transfer-Encoding: chunked, gzip", method=b"POST") + b"0\r\n\r\n",
        400,
        id="chunked_not_final",
    ),
    C(
        head(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", method=b"POST")
        + b"0\r\n\r\n",
        400,
        id="chunked_twice",
    ),
    C(head(b"Transfer-Encoding: xchunked", method=b"POST"), 501, id="transfer_encoding_xchunked"),
    # --- invalid chunked bodies (the head itself is fine)
    C(post_chunked(b"zz\r\nhello\r\n0\r\n\r\n"), 400, id="chunk_size_not_hex"),
    C(post_chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400, id="chunk_size_negative"),
    C(post_chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400, id="chunk_size_0x_prefix"),
    C(post_chunked(b"f" * 24 + b"\r\nhello\r\n0\r\n\r\n"), 400, id="chunk_size_overflow"),
    C(post_chunked(b"5;ext=1\nhello\r\n0\r\n\r\n"), 400, id="chunk_extension_bare_lf"),
    C(post_chunked(b"5\r\nhelloXX0\r\n\r\n"), 400, id="chunk_longer_than_its_size"),
    # --- header syntax
    C(head(b"X-A: a\x00b"), 400, id="nul_in_value"),
    C(head(b"X-\x00A: b"), 400, id="nul_in_name"),
    C(head(b"X-A: a\x01b"), 400, id="control_character_in_value"),
    C(head(b"X-A: \x1b[2J"), 400, id="escape_in_value"),
    C(head(b"X-A: a\x7f"), 400, id="del_in_value"),
    C(head(b"X-A: a\rb"), 400, id="bare_cr_in_value"),
    C(head(b"Content-Length : 0", method=b"POST"), 400, id="space_before_colon"),
    C(head(b"X A: b"), 400, id="space_in_name"),
    C(head(b"X-A: a", b" folded"), 400, id="obs_fold"),
    C(head(b"X-A: a", b"\tfolded"), 400, id="obs_fold_tab"),
    C(b"GET / HTTP/1.1\nHost: app.test\n\n", 400, id="bare_lf"),
    C(b"GET / HTTP/1.1\r\nHost: app.test\nX-A: b\r\n\r\n", 400, id="bare_lf_in_one_line"),
    C(b"GET / HTTP/1.1\r\n\r\n", 400, id="http11_without_host"),
    C(head(b"Host: other.test"), 400, id="two_hosts"),
    C(b"GET / HTTP/1.1\r\nHost: app.test/../x\r\n\r\n", 400, id="invalid_host"),
    # --- request line and target forms
    C(head(target=b"http://internal.test/admin"), 400, id="absolute_form"),
    C(head(method=b"OPTIONS", target=b"*"), 400, id="asterisk_form"),
    C(head(target=b"admin"), 400, id="target_without_slash"),
    C(head(target=b"/public#/../admin"), 400, id="fragment_in_target"),
    C(head(target=b"/a b"), 400, id="space_in_target"),
    C(b"CONNECT internal.test:22 HTTP/1.1\r\nHost: internal.test:22\r\n\r\n", 405, id="connect"),
    C(head(method=b"TRACE"), 405, id="trace"),
    C(head(b"Content-Length: 4", method=b"TRACE") + b"body", 400, id="trace_with_body"),
    C(head(b"Content-Length: 4") + b"body", 400, id="get_with_body"),
    C(head(b"Content-Length: 4", method=b"HEAD") + b"body", 400, id="head_with_body"),
    C(head(b"Transfer-Encoding: chunked") + b"4\r\nbody\r\n0\r\n\r\n", 400, id="get_chunked"),
    C(head(method=b"get"), 400, id="lowercase_method"),
    C(b"GET / HTTP/2.0\r\nHost: app.test\r\n\r\n", 505, id="http_2_0_version"),
    C(b"GET /\r\n\r\n", 400, id="http_0_9"),
    C(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400, id="tls_on_plain_port"),
]


@asynccontextmanager
async def plain_proxy(up: RecordingUpstream, **limits: object) -> AsyncIterator[Daemon]:
    listener = plain_listener(limits=limits) if limits else plain_listener()
    async with running_proxy(proxy_config([listener], {"app": {"servers": [up.address]}})) as d:
        yield d


@pytest.mark.parametrize(("request_bytes", "status"), HOSTILE)
async def test_hostile_request_is_refused_and_never_forwarded(
    request_bytes: bytes, status: int
) -> None:
    async with RecordingUpstream() as up:
        async with plain_proxy(up) as daemon:
            async with await RawClient.connect(daemon) as client:
                await client.send(request_bytes)
                response = await client.read_response(head=request_bytes.startswith(b"HEAD "))
                assert response.status == status
                assert response.closes
                assert await client.closed_within(2.0), "a refused request's connection closes"
            # the proxy still serves a well-behaved request afterwards
            fine, _ = await exchange(daemon, head(b"Connection: close"))
    assert fine == 200
    assert up.connections == 1  # the well-behaved request only
    assert [r.target for r in up.requests] == ["/"]


async def test_refusals_are_counted_by_rule() -> None:
    async with RecordingUpstream() as up:
        async with plain_proxy(up) as daemon:
            await exchange(daemon, head(target=b"http://x.test/"))
            await exchange(daemon, head(target=b"http://x.test/"))
            await exchange(daemon, head(b"Content-Length: 2") + b"hi")
            limits = daemon.stats()["listeners"]["plain"]["limits"]  # type: ignore[index]
    assert limits["absolute_form_target"] == 2
    assert limits["body_not_allowed"] == 1
    assert up.connections == 0


async def test_pipelined_request_after_a_refused_one_is_never_forwarded() -> None:
    smuggled = head(b"Content-Length: 5", b"Transfer-Encoding: chunked", method=b"POST")
    smuggled += b"0\r\n\r\n" + head(target=b"/admin")
    async with RecordingUpstream() as up:
        async with plain_proxy(up) as daemon:
            async with await RawClient.connect(daemon) as client:
                await client.send(smuggled)
                response = await client.read_response()
                assert await client.closed_within(2.0)
                assert client.buffer == b""  # one answer only: /admin was never read as a request
    assert response.status == 400
    assert up.connections == 0


async def test_get_with_empty_body_is_forwarded() -> None:
    async with RecordingUpstream() as up:
        async with plain_proxy(up) as daemon:
            status, _ = await exchange(daemon, head(b"Content-Length: 0", b"Connection: close"))
    assert status == 200
    assert [r.method for r in up.requests] == ["GET"]


# --- canonical re-serialisation -----------------------------------------------------------------


class RawUpstream:
    """Records the exact bytes of each connection and answers every request with a fixed 200."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.address = ""

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        handler = functools.partial(RawUpstream._handle, self)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        task_status.started()
        await trio.serve_listeners(handler, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        data = b""
        async with stream:
            while not data.endswith(b"0\r\n\r\n"):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
            self.received.append(data)
            await stream.send_all(self.ANSWER)


async def test_forwarded_request_is_reserialised_canonically() -> None:
    sloppy = (
        b"POST /upload?x=1 HTTP/1.1\r\n"
        b"hOsT:app.test\r\n"
        b"X-Padded:   \t spaced value \t  \r\n"
        b"X-Empty:\r\n"
        b"Connection:   close\r\n"
        b"TRANSFER-ENCODING:  Chunked \r\n"
        b"\r\n"
        b"5;name=value;other\r\nhello\r\n"
        b'00006;ext="quo;ted"\r\n world\r\n'
        b"0;last=1\r\nX-Trailer: t\r\n\r\n"
    )
    upstream = RawUpstream()
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve)
        config = proxy_config([plain_listener()], {"app": {"servers": [upstream.address]}})
        async with running_proxy(config) as daemon:
            status, _ = await exchange(daemon, sloppy)
        nursery.cancel_scope.cancel()
    assert status == 200
    [wire] = upstream.received
    wire_head, _, body = wire.partition(b"\r\n\r\n")
    lines = wire_head.split(b"\r\n")
    assert lines[0] == b"POST /upload?x=1 HTTP/1.1"
    assert b"\n" not in wire_head.replace(b"\r\n", b"")
    fields = dict(line.split(b": ", 1) for line in lines[1:] if b": " in line)
    assert all(line.count(b": ") >= 1 or line.endswith(b":") for line in lines[1:])
    assert fields[b"x-padded"] == b"spaced value"  # optional whitespace trimmed, one space after
    assert fields[b"transfer-encoding"] == b"chunked"
    assert b"x-trailer" not in wire.lower()
    # chunk extensions dropped; sizes re-written in plain lowercase hex
    assert body == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"


async def test_forwarded_content_length_is_canonical() -> None:
    async with RecordingUpstream() as up:
        async with plain_proxy(up) as daemon:
            request = head(b"Content-Length: 005", b"Connection: close", method=b"POST")
            status, _ = await exchange(daemon, request + b"hello")
    assert status == 200
    assert up.requests[0].body == b"hello"
    assert up.requests[0].header("content-length") == "5"


# --- the same parser behind TLS -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        C(
            head(b"Content-Length: 3", b"Transfer-Encoding: chunked", method=b"POST")
            + b"0\r\n\r\n",
            b"400",
            id="content_length_and_transfer_encoding",
        ),
        C(head(target=b"https://internal.test/"), b"400", id="absolute_form"),
        C(b"GET / HTTP/1.1\nHost: localhost\n\n", b"400", id="bare_lf"),
    ],
)
async def test_hostile_request_over_tls(
    ca: trustme.CA, server_cert: CertPaths, request_bytes: bytes, status: bytes
) -> None:
    async with RecordingUpstream() as up:
        config = proxy_config(
            [tls_listener(cert=server_cert.cert, key=server_cert.key)],
            {"app": {"servers": [up.address]}},
        )
        async with running_proxy(config) as daemon:
            run = functools.partial(
                tls_raw_exchange, daemon.addresses["public"], client_context(ca), request_bytes
            )
            answer = await trio.to_thread.run_sync(run, abandon_on_cancel=True)
    assert answer.startswith(b"HTTP/1.1 " + status + b" ")
    assert up.connections == 0
