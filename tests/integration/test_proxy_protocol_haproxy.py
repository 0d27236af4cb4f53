"""A real HAProxy in TCP mode in front of gateproxy with ``send-proxy-v2`` / ``send-proxy`` and
``check-send-proxy`` health checks: the client's address (127.0.0.2, not HAProxy's 127.0.0.1)
reaches the upstream's X-Forwarded-For through gateproxy's TLS listener; HAProxy's checks arrive
as v2 LOCAL headers. Skipped when haproxy is not installed (``apt-get install haproxy``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trustme

from gateproxy.daemon import Daemon
from tests.conftest import CertPaths
from tests.helpers.clients import client_context
from tests.helpers.proxy import proxy_config, running_proxy, tls_listener
from tests.helpers.upstreams import RecordingUpstream

HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None
)
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")
CLIENT = "127.0.0.2"  # loopback, but not the address HAProxy connects from


@asynccontextmanager
async def running_haproxy(tmp: Path, *, backend: tuple[str, int], send: str) -> AsyncIterator[int]:
    """HAProxy on a socket bound here (``bind fd@N``), forwarding TCP to ``backend``."""
    assert HAPROXY is not None
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.set_inheritable(True)
    host, port = backend
    conf = tmp / "haproxy.cfg"
    conf.write_text(
        "global\n  log stderr format raw local0 err\n"
        "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\n"
        f"frontend fe\n  bind fd@{listener.fileno()}\n  default_backend be\n"
        f"backend be\n  server gp {host}:{port} {send} check inter 200ms check-send-proxy\n"
    )
    with listener:
        process = await trio.lowlevel.open_process(
            [HAPROXY, "-db", "-f", str(conf)], pass_fds=(listener.fileno(),)
        )
        bound = listener.getsockname()[1]
    try:
        yield bound
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def get_via(port: int, ca: trustme.CA) -> bytes:
    tcp = await trio.open_tcp_stream("127.0.0.1", port, local_address=CLIENT)
    tls = trio.SSLStream(tcp, client_context(ca), server_hostname="localhost")
    with trio.fail_after(5):
        await tls.send_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := await tls.receive_some(65536):
            data += chunk
    await tls.aclose()
    return data


def proxy_protocol(daemon: Daemon) -> dict[str, object]:
    return daemon.stats()["listeners"]["public"]["proxy_protocol"]  # type: ignore[index, no-any-return]


@pytest.mark.parametrize("send", ["send-proxy-v2", "send-proxy"])
async def test_haproxy_send_proxy_sets_the_client_address(
    tmp_path: Path, ca: trustme.CA, server_cert: CertPaths, send: str
) -> None:
    async with RecordingUpstream() as up:
        listener = tls_listener(
            cert=server_cert.cert, key=server_cert.key, proxy_protocol={"trusted": ["127.0.0.1"]}
        )
        config = proxy_config([listener], {"app": {"servers": [up.address]}})
        async with running_proxy(config) as daemon:
            async with running_haproxy(
                tmp_path, backend=daemon.addresses["public"], send=send
            ) as port:
                answer = await get_via(port, ca)
            stats = proxy_protocol(daemon)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert [r.header("x-forwarded-for") for r in up.requests] == [CLIENT]
    # the request's header, plus any health check that ran meanwhile (every 200 ms: v2 checks
    # send LOCAL, v1 checks HAProxy's own TCP4 addresses, so how many is a matter of timing)
    assert stats["accepted"] >= 1 + stats["local"]  # type: ignore[operator]
    assert stats["rejected"] == {"missing": 0, "untrusted": 0, "invalid": 0, "timeout": 0}
