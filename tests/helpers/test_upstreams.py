"""Brief checks that the test helpers themselves behave as documented."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import h11
import pytest
import trio
import trustme

from tests.conftest import CertPaths
from tests.helpers.clients import (
    Request,
    curl,
    https_exchange,
    https_request,
    openssl_s_client,
    pyopenssl_get,
)
from tests.helpers.upstreams import (
    MisbehavingUpstream,
    MisbehaviourMode,
    RecordedRequest,
    RecordingUpstream,
    Response,
    SessionApp,
    StreamingUpstream,
    pattern_chunk,
    pattern_sha256,
    refused_address,
)

PlainReply = tuple[int, dict[str, str], bytes]


def _plain_sync(
    address: str, requests: list[tuple[str, str, dict[str, str], object]]
) -> list[PlainReply]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.auto_open = False
    conn.connect()
    replies = []
    for method, path, headers, body in requests:
        chunked = body is not None and not isinstance(body, bytes)
        conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)  # type: ignore[arg-type]
        resp = conn.getresponse()
        replies.append((resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()))
    conn.close()
    return replies


async def plain(
    address: str, *requests: tuple[str, str, dict[str, str], object]
) -> list[PlainReply]:
    """Several requests on one plain HTTP keep-alive connection (stdlib http.client)."""
    return await trio.to_thread.run_sync(_plain_sync, address, list(requests))


async def test_recording_upstream_records_requests_and_connections() -> None:
    with trio.fail_after(5):
        async with RecordingUpstream(body=b"hi") as up:
            replies = await plain(
                up.address,
                ("GET", "/a?x=1", {"X-Test": "1"}, None),
                ("POST", "/b", {}, b"payload"),
            )
            await up.wait_for(lambda: up.closed_connections == 1)
    assert [r[0] for r in replies] == [200, 200]
    assert replies[0][2] == b"hi"
    first, second = up.requests
    assert (first.method, first.target, first.header("x-test")) == ("GET", "/a?x=1", "1")
    assert (b"X-Test", b"1") in first.raw_headers
    assert (second.method, second.body) == ("POST", b"payload")
    assert first.connection_id == second.connection_id == 1
    assert up.connections == 1


async def test_recording_upstream_respond_hook_and_hold() -> None:
    def respond(request: RecordedRequest) -> Response:
        return Response(status=201, headers=[("x-path", request.target)], body=b"made")

    hold = trio.Event()
    with trio.fail_after(5):
        async with RecordingUpstream(respond=respond, hold=hold, keep_alive=False) as up:
            replies: list[PlainReply] = []

            async def fetch() -> None:
                replies.extend(await plain(up.address, ("PUT", "/thing", {}, b"")))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch)
                await up.wait_for(lambda: len(up.requests) == 1)
                assert not replies  # held back
                hold.set()
    status, headers, body = replies[0]
    assert (status, headers["x-path"], headers["connection"], body) == (
        201,
        "/thing",
        "close",
        b"made",
    )


async def test_exception_in_block_is_not_wrapped() -> None:
    with pytest.raises(KeyError):
        async with RecordingUpstream():
            raise KeyError("x")


async def test_session_app_mints_sessions_for_cookieless_requests() -> None:
    with trio.fail_after(5):
        async with SessionApp() as app:
            first, health = await plain(
                app.address, ("GET", "/", {}, None), ("GET", "/health", {}, None)
            )
            cookie = first[1]["set-cookie"]
            session = cookie.split(";")[0]
            [again] = await plain(app.address, ("GET", "/", {"Cookie": f"a=b; {session}"}, None))
    assert cookie.startswith("JSESSIONID=") and cookie.endswith("; Path=/; HttpOnly")
    assert "set-cookie" in health[1]
    assert "set-cookie" not in again[1]
    assert (app.sessions_created, app.live_sessions, app.requests) == (2, 2, 3)


async def test_streaming_upstream_download_and_upload() -> None:
    size = 300_001
    chunks = [pattern_chunk(offset, 50_000) for offset in range(0, 200_000, 50_000)]
    with trio.fail_after(10):
        async with StreamingUpstream() as up:
            download, chunked_download, _, sized_upload = await plain(
                up.address,
                ("GET", f"/download/{size}", {}, None),
                ("GET", "/download/1000?chunked=1", {}, None),
                ("POST", "/upload", {}, iter(chunks)),
                ("PUT", "/upload", {}, b"abc"),
            )
    assert download[1]["content-length"] == str(size)
    assert len(download[2]) == size
    assert download[2][:300] == bytes(i % 251 for i in range(300))
    assert chunked_download[1]["transfer-encoding"] == "chunked"
    assert len(chunked_download[2]) == 1000
    assert up.uploads[0].size == 200_000 and up.uploads[0].chunked
    assert up.uploads[0].sha256 == pattern_sha256(200_000)
    assert b'"size": 3' in sized_upload[2] and not up.uploads[1].chunked
    assert up.bytes_sent == size + 1000
    assert (up.downloads_started, up.downloads_completed, up.requests) == (2, 2, 4)


async def _raw_exchange(address: str, request: bytes) -> bytes:
    host, port = address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        data = b""
        try:
            while chunk := await stream.receive_some(65536):
                data += chunk
        except trio.BrokenResourceError:
            data += b"<RST>"
        return data


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
CLOSING_MODES: list[tuple[MisbehaviourMode, bytes, bytes]] = [
    ("garbage", GET, b"SSH-2.0"),
    ("dup_content_length", GET, b"Content-Length: 5\r\nContent-Length: 7"),
    ("close_before_response", GET, b""),
    ("reset", GET, b"<RST>"),
    ("close_mid_body", GET, b"Content-Length: 1000\r\n\r\n0123456789"),
]


@pytest.mark.parametrize(("mode", "request_bytes", "expected"), CLOSING_MODES)
async def test_misbehaving_modes_that_close(
    mode: MisbehaviourMode, request_bytes: bytes, expected: bytes
) -> None:
    with trio.fail_after(5):
        async with MisbehavingUpstream(mode) as up:
            data = await _raw_exchange(up.address, request_bytes)
    assert expected in data if expected else data == b""
    assert (up.connections, up.requests) == (1, 1)


@pytest.mark.parametrize("mode", ["stall_headers", "stall_body"])
async def test_misbehaving_stall_modes_wait_for_the_peer(mode: MisbehaviourMode) -> None:
    with trio.fail_after(5):
        async with MisbehavingUpstream(mode) as up:
            host, port = up.address.rsplit(":", 1)
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(GET)
            if mode == "stall_body":
                assert (await stream.receive_some(65536)).endswith(b"0123456789")
            await up.wait_for(lambda: up.requests == 1)
            await stream.aclose()
            await up.wait_for(lambda: up.closed_by_peer == 1)


async def test_misbehaving_head_with_body_and_huge_headers() -> None:
    head = b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
    with trio.fail_after(5):
        async with MisbehavingUpstream("head_with_body") as up:
            host, port = up.address.rsplit(":", 1)
            async with await trio.open_tcp_stream(host, int(port)) as stream:
                await stream.send_all(head + GET)
                data = b""
                while not data.endswith(b"\r\n\r\nok"):
                    data += await stream.receive_some(65536)
        assert data.count(b"HTTP/1.1 200") == 2 and b"hello world" in data
        async with MisbehavingUpstream("huge_headers") as up:
            data = await _raw_exchange(
                up.address, GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
            )
    assert len(data) > 100_000 and data.endswith(b"\r\n\r\nok")
    assert data.count(b"X-Filler-") == 100


async def test_refused_address_refuses() -> None:
    host, port = refused_address().rsplit(":", 1)
    with pytest.raises(OSError):
        await trio.open_tcp_stream(host, int(port))


# -- the TLS clients, against a minimal trio TLS server --------------------------------------


@asynccontextmanager
async def tls_server(
    cert: CertPaths, *, tls_max: ssl.TLSVersion | None = None
) -> AsyncIterator[str]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert.cert, cert.key)
    if tls_max is not None:
        ctx.maximum_version = tls_max

    async def handle(stream: trio.SSLStream[trio.SocketStream]) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                elif isinstance(event, h11.Request):
                    target = event.target
                elif isinstance(event, h11.EndOfMessage):
                    body = b"you asked for " + target
                    headers = [("content-length", str(len(body)))]
                    out = conn.send(h11.Response(status_code=200, headers=headers))
                    out = (out or b"") + (conn.send(h11.Data(data=body)) or b"")
                    await stream.send_all(out + (conn.send(h11.EndOfMessage()) or b""))
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            return

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_ssl_over_tcp, handle, 0, ctx)
        port = listeners[0].transport_listener.socket.getsockname()[1]
        yield f"127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


async def test_https_clients(server_cert: CertPaths, ca: trustme.CA) -> None:
    with trio.fail_after(10):
        async with tls_server(server_cert) as address:
            one = await https_request(address, path="/one", ca=ca, tls_version="TLSv1.2")
            many = await https_exchange(
                address,
                [Request(path="/a"), Request(method="POST", path="/b", body=iter([b"x"]))],
                ca=ca,
            )
            nosni = await https_request(address, ca=ca, server_hostname=None)
            py = await pyopenssl_get(
                address, "/py", ca_pem=ca.cert_pem.bytes(), tls_version="TLSv1.3"
            )
            with pytest.raises(ssl.SSLCertVerificationError):
                await https_request(address, ca=ca, server_hostname="example.test")
            with pytest.raises(ssl.SSLCertVerificationError):
                await https_request(address, ca=trustme.CA())
    assert (one.status, one.body, one.tls_version) == (200, b"you asked for /one", "TLSv1.2")
    assert [r.body for r in many] == [b"you asked for /a", b"you asked for /b"]
    assert nosni.status == 200
    assert (py.status, py.body, py.tls_version) == (200, b"you asked for /py", "TLSv1.3")


async def test_stdlib_session_resumption_is_reported(
    server_cert: CertPaths, ca: trustme.CA
) -> None:
    with trio.fail_after(10):
        async with tls_server(server_cert, tls_max=ssl.TLSVersion.TLSv1_2) as address:
            first = await https_request(address, ca=ca)
            second = await https_request(address, ca=ca, session=first.session)  # type: ignore[arg-type]
    assert (first.session_reused, second.session_reused) == (False, True)


async def test_binaries(server_cert: CertPaths, ca_pem_path: Path) -> None:
    with trio.fail_after(20):
        async with tls_server(server_cert) as address:
            port = address.rsplit(":", 1)[1]
            got = await curl(["-sS", "--cacert", str(ca_pem_path), f"https://localhost:{port}/c"])
            s_client = await openssl_s_client(
                ["-connect", address, "-servername", "localhost", "-CAfile", str(ca_pem_path)]
            )
    assert got.returncode == 0, got.stderr
    assert got.stdout == b"you asked for /c"
    assert b"Verify return code: 0 (ok)" in s_client.stdout


def test_cert_fixtures(server_cert: CertPaths, second_cert: CertPaths, ca_pem_path: Path) -> None:
    assert server_cert.cert.read_bytes().count(b"BEGIN CERTIFICATE") >= 1
    assert b"PRIVATE KEY" in server_cert.key.read_bytes()
    assert second_cert.cert != server_cert.cert
    assert ca_pem_path.read_bytes().startswith(b"-----BEGIN CERTIFICATE")
