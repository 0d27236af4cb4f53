"""sd_notify against real AF_UNIX datagram sockets (a path and an abstract name), and a real
``gateproxy run`` telling its NOTIFY_SOCKET: READY once the listeners accept, RELOADING (with
MONOTONIC_USEC) then READY on SIGHUP, STOPPING on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trustme

from gateproxy.net.sd_notify import notify, reloading_fields
from tests.conftest import CertPaths
from tests.helpers.clients import https_request
from tests.helpers.proxy import proxy_config, tls_listener
from tests.helpers.supervised import supervised
from tests.helpers.upstreams import RecordingUpstream


@pytest.fixture
def abstract() -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket bound to an abstract name, as systemd's ``@`` spelling."""
    name = f"gateproxy-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    with sock:
        yield "@" + name, sock


def test_fields_go_as_one_datagram_to_an_abstract_socket(
    abstract: tuple[str, socket.socket],
) -> None:
    name, sock = abstract
    assert notify("READY=1", "STATUS=serving", environ={"NOTIFY_SOCKET": name})
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_a_path_socket_works_and_no_socket_or_a_dead_one_is_a_quiet_no(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        assert notify("STOPPING=1", environ={"NOTIFY_SOCKET": str(path)})
        assert sock.recv(4096) == b"STOPPING=1"
    assert not notify("READY=1", environ={})
    assert not notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")})


def test_reloading_carries_the_monotonic_clock_in_microseconds() -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = reloading_fields(status="reloading")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert fields[0] == "RELOADING=1" and fields[2] == "STATUS=reloading"
    key, _, usec = fields[1].partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(usec) <= after


async def _next(sock: socket.socket) -> dict[str, str]:
    data = await trio.to_thread.run_sync(sock.recv, 4096)
    return dict(line.split("=", 1) for line in data.decode().splitlines())


async def test_gateproxy_run_tells_systemd_ready_reloading_and_stopping(
    tmp_path: Path,
    ca: trustme.CA,
    server_cert: CertPaths,
    abstract: tuple[str, socket.socket],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, sock = abstract
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    async with RecordingUpstream() as up:
        listener = tls_listener(cert=server_cert.cert, key=server_cert.key)
        config = proxy_config([listener], {"app": {"servers": [up.address]}}, workers=2)
        async with supervised(config, tmp_path) as gp:
            ready = await _next(sock)
            assert ready["READY"] == "1" and ready["MAINPID"] == str(gp.process.pid)
            assert "generation 1, 2 worker(s)" in ready["STATUS"]
            # READY came after the listeners were bound and the workers accept
            assert (await https_request(gp.address(), ca=ca)).status == 200
            gp.signal(signal.SIGHUP)
            reloading = await _next(sock)
            assert reloading["RELOADING"] == "1"
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert 0 <= now - int(reloading["MONOTONIC_USEC"]) < 30_000_000
            again = await _next(sock)
            assert again["READY"] == "1" and "generation 2" in again["STATUS"]
            await gp.wait_event("reloaded")
            gp.config_path.write_text("listeners: [")  # a refused reload: READY, still gen 2
            gp.signal(signal.SIGHUP)
            assert (await _next(sock))["RELOADING"] == "1"
            kept = await _next(sock)
            assert kept["READY"] == "1" and "generation 2" in kept["STATUS"]
            await gp.wait_event("reload_failed")
            gp.signal(signal.SIGTERM)
            stopping = await _next(sock)
            assert stopping["STOPPING"] == "1"
