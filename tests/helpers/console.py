"""The installed ``gateproxy`` console script (``.venv/bin/gateproxy``), run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(sys.executable).with_name("gateproxy")


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
