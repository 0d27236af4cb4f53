"""A real ``redis-server`` for the fleet tests, on a loopback port of its own, in memory only.

Redis cannot take an inherited listening socket, so the port is one that was free a moment ago
(``free_port``); a start that loses the race for it is retried on another port. The server runs
with no persistence (``--save ''``, ``--appendonly no``) from a temporary directory, and the
fixture can kill it (SIGKILL, as a crash) and start it again on the same port, which is what the
"Redis goes away under load" tests need. Tests skip where there is no ``redis-server``
(``.ci/run`` installs Debian's package).
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from tests.helpers.sockets import free_port

START_TIMEOUT = 10.0
PORT_ATTEMPTS = 5


def redis_binary() -> str | None:
    """The redis-server executable, or None."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


def need_redis() -> str:
    """The redis-server executable; skips the test where there is none."""
    found = redis_binary()
    if found is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return found


def _ping(port: int) -> bool:
    """True if something on ``port`` answers a RESP PING with +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """One redis-server process (or none, while killed) on a fixed loopback port."""

    binary: str
    directory: Path
    port: int = 0
    process: trio.Process | None = None
    starts: int = 0
    _argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: str) -> bytes:
        """Run one command synchronously and return the raw reply (for test assertions)."""
        parts = [a.encode() for a in args]
        wire = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as sock:
            sock.sendall(wire)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
            return reply

    def keys(self, pattern: str = "*") -> list[str]:
        """The key names matching ``pattern`` (KEYS is fine on a test server)."""
        reply = self.command("KEYS", pattern).decode()
        return [
            line for line in reply.split("\r\n")[1:] if line and not line.startswith(("$", "*"))
        ]

    async def start(self) -> None:
        """Start redis-server (on the same port as before, if it ran before) and wait for PONG."""
        assert self.process is None, "already running"
        for _ in range(PORT_ATTEMPTS if not self.port else 1):
            port = self.port or free_port()
            argv = [
                self.binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--loglevel",
                "warning",
            ]
            self.process = await trio.lowlevel.open_process(argv)
            if await self._ready(port):
                self.port, self.starts = port, self.starts + 1
                return
            await self.kill()
        raise RuntimeError(f"redis-server did not answer PING on 127.0.0.1:{port}")

    async def _ready(self, port: int) -> bool:
        with trio.move_on_after(START_TIMEOUT):
            while self.process is not None and self.process.poll() is None:
                if await trio.to_thread.run_sync(_ping, port):
                    return True
                await trio.sleep(0.02)
        return False

    async def kill(self) -> None:
        """SIGKILL the server (a crash, not a shutdown) and reap it."""
        if self.process is None:
            return
        self.process.kill()
        await self.process.wait()
        self.process = None


@asynccontextmanager
async def running_redis(directory: Path) -> AsyncIterator[RedisServer]:
    """A started redis-server, killed on the way out."""
    server = RedisServer(binary=need_redis(), directory=directory)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()
