"""Bodies stream through the proxy in both directions without being held: memory stays flat."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
from collections.abc import Iterator

import trio
import trustme

from tests.conftest import CertPaths
from tests.helpers.clients import client_context, https_request, split_address
from tests.helpers.proxy import address, proxy_config, running_proxy, tls_listener
from tests.helpers.upstreams import CHUNK_SIZE, StreamingUpstream, pattern_chunk, pattern_sha256

SIZE = 256 * 1024 * 1024  # far more than the allowed growth: a buffered body could not hide
MAX_GROWTH = 64 * 1024 * 1024
CHUNK = CHUNK_SIZE  # the upstream's pattern comes in chunks of this size
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def _connect(addr: str, ca: trustme.CA) -> http.client.HTTPConnection:
    host, port = split_address(addr)
    raw = socket.create_connection((host, port), timeout=30)
    conn = http.client.HTTPConnection("localhost", port, timeout=30)
    conn.sock = client_context(ca).wrap_socket(raw, server_hostname="localhost")
    return conn


def _download(addr: str, ca: trustme.CA, size: int) -> tuple[int, str, int]:
    """Stream a download; return (bytes, sha256, peak RSS growth of this whole process)."""
    conn = _connect(addr, ca)
    try:
        conn.request("GET", f"/download/{size}?chunked=1")
        resp = conn.getresponse()
        base = peak = _rss()
        digest, total = hashlib.sha256(), 0
        while chunk := resp.read(CHUNK):
            digest.update(chunk)
            total += len(chunk)
            if total % (16 * CHUNK) == 0:
                peak = max(peak, _rss())
        return total, digest.hexdigest(), max(peak, _rss()) - base
    finally:
        conn.close()


def _pattern(size: int, growth: list[int]) -> Iterator[bytes]:
    base = _rss()
    for offset in range(0, size, CHUNK):
        if offset % (16 * CHUNK) == 0:
            growth.append(_rss() - base)
        yield pattern_chunk(offset, min(CHUNK, size - offset))


def _upload(addr: str, ca: trustme.CA, size: int) -> tuple[dict[str, object], int]:
    conn = _connect(addr, ca)
    growth: list[int] = []
    try:
        conn.request("POST", "/upload", body=_pattern(size, growth), encode_chunked=True)
        answer = json.loads(conn.getresponse().read())
        return answer, max(growth)
    finally:
        conn.close()


async def test_large_download_and_upload_stream_with_flat_memory(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    async with StreamingUpstream() as up:
        config = proxy_config(
            [
                tls_listener(
                    cert=server_cert.cert, key=server_cert.key, limits={"max_body_bytes": "1GiB"}
                )
            ],
            {"app": {"servers": [up.address]}},
        )
        async with running_proxy(config) as daemon:
            with trio.fail_after(120):
                size, sha, down_growth = await trio.to_thread.run_sync(
                    _download, address(daemon), ca, SIZE
                )
                answer, up_growth = await trio.to_thread.run_sync(
                    _upload, address(daemon), ca, SIZE
                )
    expected = pattern_sha256(SIZE)
    assert (size, sha) == (SIZE, expected)
    assert answer == {"size": SIZE, "sha256": expected, "chunked": True}
    assert down_growth < MAX_GROWTH, f"RSS grew {down_growth >> 20} MiB during the download"
    assert up_growth < MAX_GROWTH, f"RSS grew {up_growth >> 20} MiB during the upload"


async def test_garbage_clients_do_not_disturb_a_request_in_flight(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    size = 32 * 1024 * 1024
    async with StreamingUpstream() as up:
        config = proxy_config(
            [tls_listener(cert=server_cert.cert, key=server_cert.key)],
            {"app": {"servers": [up.address]}},
        )
        async with running_proxy(config) as daemon:
            host, port = daemon.addresses["public"]
            result: list[tuple[int, str, int]] = []

            async def download() -> None:
                result.append(await trio.to_thread.run_sync(_download, address(daemon), ca, size))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(download)
                await up.wait_for(lambda: up.downloads_started == 1)
                for payload in (os.urandom(4096), b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\xff"):
                    async with await trio.open_tcp_stream(host, port) as hostile:
                        await hostile.send_all(payload)
                other = await https_request(address(daemon), ca=ca, path="/download/10")
    assert result[0][:2] == (size, pattern_sha256(size))
    assert other.status == 200 and other.body == pattern_chunk(0, 10)
