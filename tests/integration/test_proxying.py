"""HTTP/1.1 proxying rules as seen by a recording upstream and by clients."""

from __future__ import annotations

import email.utils
import re
import time

import trio
import trustme

from tests.conftest import CertPaths
from tests.helpers.clients import Request, curl, https_exchange, https_request
from tests.helpers.proxy import address, proxy_config, running_proxy, tls_listener
from tests.helpers.rawhttp import RawClient, plain_listener
from tests.helpers.upstreams import RecordedRequest, RecordingUpstream, Response


async def test_forwarding_headers_and_hop_by_hop_both_ways(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    upstream_headers = [
        ("Connection", "x-upstream-secret"),
        ("X-Upstream-Secret", "hidden"),
        ("Keep-Alive", "timeout=5"),
        ("X-Visible", "yes"),
    ]
    async with RecordingUpstream(headers=upstream_headers) as up:
        config = proxy_config(
            [tls_listener(cert=server_cert.cert, key=server_cert.key)],
            {"app": {"servers": [up.address]}},
        )
        async with running_proxy(config) as daemon:
            resp = await https_request(
                address(daemon),
                ca=ca,
                path="/p?q=1",
                headers=[
                    ("Connection", "keep-alive, X-Drop-Me"),
                    ("X-Drop-Me", "secret"),
                    ("Upgrade", "websocket"),  # Connection does not name it: no upgrade, dropped
                    ("Keep-Alive", "timeout=1"),
                    ("Proxy-Connection", "keep-alive"),
                    ("TE", "trailers"),
                    ("X-Forwarded-For", "203.0.113.7"),
                    ("X-Forwarded-Proto", "http"),
                    ("Via", "1.0 edge"),
                    ("X-Keep", "kept"),
                ],
            )
    req = up.requests[0]
    assert req.target == "/p?q=1"
    for dropped in ("x-drop-me", "keep-alive", "proxy-connection", "te", "connection", "upgrade"):
        assert req.header(dropped) is None, dropped
    assert req.header("x-keep") == "kept"
    assert req.header("x-forwarded-for") == "203.0.113.7, 127.0.0.1"
    assert req.header("x-forwarded-proto") == "https"
    assert req.header("x-forwarded-host") == "localhost:" + address(daemon).split(":")[1]
    assert req.header("host") == req.header("x-forwarded-host")  # the client's Host is kept
    assert req.header("via") == "1.0 edge, 1.1 gateproxy"
    assert resp.status == 200
    assert resp.header("x-upstream-secret") is None
    assert resp.header("keep-alive") is None
    assert resp.header("x-visible") == "yes"
    assert resp.header("via") == "1.1 gateproxy"
    assert resp.header("date") is not None  # the upstream sent none: ours


async def test_keep_alive_routing_404_and_head(ca: trustme.CA, server_cert: CertPaths) -> None:
    async with RecordingUpstream(body=b"api\n") as api, RecordingUpstream(body=b"web\n") as web:
        listener = tls_listener(cert=server_cert.cert, key=server_cert.key)
        listener["routes"] = [
            {"path_prefix": "/api/", "upstream": "api"},
            {"path_prefix": "/", "host": "www.example.test", "upstream": "web"},
        ]
        config = proxy_config(
            [listener], {"api": {"servers": [api.address]}, "web": {"servers": [web.address]}}
        )
        async with running_proxy(config) as daemon:
            responses = await https_exchange(
                address(daemon),
                [
                    Request(path="/api/users"),
                    Request(path="/nowhere"),
                    Request(path="/", headers=[("Host", "WWW.example.test:443")]),
                    Request(method="HEAD", path="/api/x"),
                    Request(path="/api/again"),
                ],
                ca=ca,
            )
            stats = daemon.stats()
    assert [r.status for r in responses] == [200, 404, 200, 200, 200]
    assert [r.body for r in responses] == [b"api\n", b"Not Found\n", b"web\n", b"", b"api\n"]
    assert responses[3].header("content-length") == "4"
    assert [r.method for r in api.requests] == ["GET", "HEAD", "GET"]
    assert api.connections == 1  # one upstream keep-alive connection served all three
    listener_stats = stats["listeners"]["public"]  # type: ignore[index]
    assert listener_stats["connections"]["total"] == 1
    assert listener_stats["requests"]["total"] == 5


async def test_http10_client_and_expect_100_continue(
    ca_pem_path: object, server_cert: CertPaths
) -> None:
    def echo(request: object) -> Response:
        body = getattr(request, "body", b"")
        return Response(body=b"got %d bytes\n" % len(body))

    async with RecordingUpstream(respond=echo) as up:
        config = proxy_config(
            [tls_listener(cert=server_cert.cert, key=server_cert.key)],
            {"app": {"servers": [up.address]}},
        )
        async with running_proxy(config) as daemon:
            port = daemon.addresses["public"][1]
            base = ["-sS", "--cacert", str(ca_pem_path), "--resolve", f"localhost:{port}:127.0.0.1"]
            http10 = await curl([*base, "--http1.0", f"https://localhost:{port}/old"])
            expect = await curl(
                [
                    *base,
                    "-H",
                    "Expect: 100-continue",
                    "--data-binary",
                    "@-",
                    "-w",
                    "%{http_code}",
                    f"https://localhost:{port}/upload",
                ],
                input=b"x" * 5000,
            )
    assert http10.returncode == 0 and http10.stdout == b"got 0 bytes\n", http10.stderr
    assert expect.returncode == 0, expect.stderr
    assert expect.stdout == b"got 5000 bytes\n200"
    assert up.requests[1].header("expect") is None  # answered by the proxy, not forwarded


async def test_plain_http_listener(ca: trustme.CA) -> None:
    async with RecordingUpstream(body=b"plain\n") as up:
        config = proxy_config(
            [
                {
                    "name": "plain",
                    "bind": "127.0.0.1:0",
                    "routes": [{"path_prefix": "/", "upstream": "app"}],
                }
            ],
            {"app": {"servers": [up.address]}},
        )
        async with running_proxy(config) as daemon:
            host, port = daemon.addresses["plain"]
            data = await _raw_exchange(host, port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            old = await _raw_exchange(host, port, b"GET /old HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 ")  # the upstream's reason phrase, passed on
    assert data.endswith(b"plain\n")
    assert up.requests[0].header("x-forwarded-proto") == "http"
    # HTTP/1.0 without Host: the upstream gets the upstream's name, as nginx's $proxy_host
    assert old.startswith(b"HTTP/1.1 200 ") and old.endswith(b"plain\n")
    assert up.requests[1].header("host") == "app"


async def _raw_exchange(host: str, port: int, request: bytes) -> bytes:
    """Send one request, read until the server closes (HTTP/1.0 or Connection: close)."""
    data = b""
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        with trio.fail_after(5):
            while chunk := await stream.receive_some(4096):
                data += chunk
    return data


async def test_oversized_heads_get_431_even_when_sent_in_one_write() -> None:
    async with RecordingUpstream() as up:
        config = proxy_config(
            [
                {
                    "name": "plain",
                    "bind": "127.0.0.1:0",
                    "limits": {"max_header_bytes": "4KiB", "max_headers": 10},
                    "routes": [{"path_prefix": "/", "upstream": "app"}],
                }
            ],
            {"app": {"servers": [up.address]}},
        )
        async with running_proxy(config) as daemon:
            host, port = daemon.addresses["plain"]
            big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 6000 + b"\r\n\r\n"
            many = (
                b"GET / HTTP/1.1\r\nHost: x\r\n"
                + b"".join(b"X-%d: v\r\n" % i for i in range(12))
                + b"\r\n"
            )
            too_big = await _raw_exchange(host, port, big)
            too_many = await _raw_exchange(host, port, many)
            fine = await _raw_exchange(host, port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            stats = daemon.stats()
    assert too_big.startswith(b"HTTP/1.1 431 ")
    assert too_many.startswith(b"HTTP/1.1 431 ")
    assert fine.startswith(b"HTTP/1.1 200 ")
    assert len(up.requests) == 1  # nothing of the rejected requests reached the upstream
    limits = stats["listeners"]["plain"]["limits"]  # type: ignore[index]
    assert limits["max_header_bytes"] == 1
    assert limits["max_headers"] == 1


IMF_FIXDATE = re.compile(
    rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    rb" [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)
THEIR_DATE = b"Sat, 05 Nov 1994 08:49:37 GMT"


def _dated(request: RecordedRequest) -> Response:
    return Response(headers=[("Date", THEIR_DATE)] if request.target == "/app/dated" else [])


async def test_date_is_added_to_responses_without_one_and_to_our_own() -> None:
    listener = plain_listener(
        health_checks=[{"path": "/healthz"}],
        routes=[{"path_prefix": "/app/", "upstream": "app"}],
        limits={"max_body_bytes": 10},
    )
    async with RecordingUpstream(respond=_dated) as up:
        async with running_proxy(proxy_config([listener], {"app": {"servers": [up.address]}})) as d:
            async with await RawClient.connect(d) as client:
                dates = {}
                for target in (b"/app/undated", b"/app/dated", b"/healthz", b"/nowhere"):
                    await client.send(b"GET %s HTTP/1.1\r\nHost: app.test\r\n\r\n" % target)
                    response = await client.read_response()
                    dates[target] = [v for n, v in response.headers if n.lower() == b"date"]
                await client.send(b"POST /app/ HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n")
                refused = await client.read_response()
                dates[b"413"] = [v for n, v in refused.headers if n.lower() == b"date"]
    assert dates[b"/app/dated"] == [THEIR_DATE]  # the upstream's own, kept
    for target in (b"/app/undated", b"/healthz", b"/nowhere", b"413"):
        assert len(dates[target]) == 1 and IMF_FIXDATE.fullmatch(dates[target][0]), target
        sent = email.utils.parsedate_to_datetime(dates[target][0].decode()).timestamp()
        assert abs(sent - time.time()) < 5, target  # the wall clock, in GMT
