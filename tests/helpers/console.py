"""The installed ``gateproxy`` console script (``.venv/bin/gateproxy``), run as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

from tests.helpers.clients import curl

SCRIPT = Path(sys.executable).with_name("gateproxy")
CurlResult = subprocess.CompletedProcess[bytes]


def gateproxy(
    *args: str, timeout: float = 60.0, **options: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``gateproxy ARGS...`` to completion (text output captured, never raises on status)."""
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **options,
    )


def message_lines(output: str) -> list[str]:
    """The lines meant for a person: everything but the JSON event lines."""
    return [line for line in output.splitlines() if line.strip() and not line.startswith("{")]


async def demo_and_its_curl_line(command: Sequence[str]) -> tuple[int, CurlResult]:
    """Start ``command`` (a ``gateproxy demo``), run the first curl line it prints, stop it with
    SIGINT; returns ``(demo exit status, curl's result)``."""
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                list(command),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                check=False,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        )
        assert proc.stdout is not None
        out = b""
        with trio.fail_after(20):
            while b"/healthz" not in out:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, out
                out += chunk
        match = re.search(rb"curl --cacert (\S+) (https://localhost:\d+/)\n", out)
        assert match, out
        result = await curl(["-sS", "--cacert", match.group(1).decode(), match.group(2).decode()])
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            await proc.wait()
    return proc.returncode, result
