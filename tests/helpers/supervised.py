"""Run ``gateproxy run`` (supervisor + worker processes) as a subprocess, on ephemeral ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio


@dataclass
class Supervised:
    """A running ``gateproxy run`` and the event lines it printed so far."""

    process: trio.Process
    config_path: Path
    started: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    _buffer: bytearray = field(default_factory=bytearray)

    def address(self, listener: str = "public") -> str:
        host, port = self.started["listeners"][listener]
        return f"{host}:{port}"

    @property
    def admin(self) -> tuple[str, int]:
        host, port = self.started["admin"]
        return str(host), int(port)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait_event(
        self,
        name: str,
        *,
        where: Callable[[dict[str, Any]], bool] = lambda _e: True,
        within: float = 20.0,
    ) -> dict[str, Any]:
        """The next (not yet consumed) event line called ``name`` that ``where`` accepts."""
        with trio.fail_after(within):
            while True:
                for index, record in enumerate(self.events):
                    if record.get("event") == name and where(record):
                        del self.events[: index + 1]
                        return record
                await self._read_more()

    async def _read_more(self) -> None:
        assert self.process.stderr is not None
        chunk = await self.process.stderr.receive_some(65536)
        if not chunk:
            raise AssertionError(f"gateproxy exited; events: {self.events[-5:]}")
        self._buffer += chunk
        while b"\n" in self._buffer:
            line, _, rest = bytes(self._buffer).partition(b"\n")
            self._buffer[:] = rest
            if line.startswith(b"{"):
                self.events.append(json.loads(line))

    async def get(self, path: str) -> tuple[int, bytes]:
        """GET an admin path over plain HTTP/1.0 (status, body)."""
        host, port = self.admin
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n".encode())
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    async def stats(self) -> dict[str, Any]:
        status, body = await self.get("/stats")
        assert status == 200, body
        return dict(json.loads(body))


GATEPROXY = (sys.executable, "-m", "gateproxy")


@asynccontextmanager
async def supervised(
    config: dict[str, Any], tmp_path: Path, *, command: Sequence[str] = GATEPROXY
) -> AsyncIterator[Supervised]:
    """Write ``config`` (JSON is YAML) and run ``gateproxy run`` on it until the block ends."""
    path = tmp_path / "gateproxy.yaml"
    path.write_text(json.dumps(config))
    async with supervised_file(path, prefix=command) as proxy:
        yield proxy


@asynccontextmanager
async def supervised_file(
    path: Path,
    *,
    command: Sequence[str] | None = None,
    prefix: Sequence[str] = GATEPROXY,
    cwd: Path | None = None,
) -> AsyncIterator[Supervised]:
    """Run ``gateproxy run -c path`` until the block ends; then SIGTERM, and it must exit 0
    within 15 s. ``prefix`` is what runs ``gateproxy`` (say, a wrapper, then the console
    script); ``command`` replaces the whole command line (a run of it, as a user types it)."""
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                list(command or [*prefix, "run", "-c", str(path)]),
                cwd=cwd,
                stderr=subprocess.PIPE,
                check=False,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        )
        proxy = Supervised(process, path, started={})
        try:
            proxy.started = await proxy.wait_event("started", where=lambda e: "worker" not in e)
            yield proxy
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                await process.wait()
    assert process.returncode == 0, proxy.events[-5:]
