"""Access log (one JSON line per request, or nginx "combined") and operational event lines.

Writes go to a file object opened once (stdout for ``path: "-"``); ``reopen()`` supports log
rotation (SIGUSR1). Health checks are never passed here by the proxy (they are counted instead).
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

from gateproxy.core.config import AccessLogConfig


class AccessLog:
    """Request log sink; ``path: off`` turns every call into a no-op."""

    def __init__(self, config: AccessLogConfig) -> None:
        self.config = config
        self.enabled = config.path != "off"
        self._file: IO[str] | None = None
        self._open()

    def _open(self) -> None:
        if not self.enabled:
            return
        if self.config.path == "-":
            self._file = sys.stdout
        else:
            self._file = open(self.config.path, "a", encoding="utf-8")  # noqa: SIM115

    def reopen(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            self._file.close()
        self._open()

    def request(
        self,
        *,
        client: str,
        method: bytes,
        target: bytes,
        status: int,
        bytes_sent: int,
        upstream: str,
        duration: float,
        listener: str,
    ) -> None:
        if self._file is None:
            return
        now = time.time()
        if self.config.format == "combined":
            stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now))
            line = (
                f'{client} - - [{stamp}] "{_text(method)} {_text(target)} HTTP/1.1" '
                f"{status} {bytes_sent}"
            )
        else:
            line = json.dumps(
                {
                    "time": round(now, 3),
                    "listener": listener,
                    "client": client,
                    "method": _text(method),
                    "path": _text(target),
                    "status": status,
                    "bytes": bytes_sent,
                    "upstream": upstream,
                    "duration_s": round(duration, 6),
                },
                separators=(",", ":"),
            )
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            self._file.close()
        self._file = None


def event(name: str, **fields: Any) -> None:
    """One structured operational log line on stderr (start, reload, rotation, ...)."""
    record = {"time": round(time.time(), 3), "event": name, **fields}
    print(json.dumps(record, separators=(",", ":"), default=str), file=sys.stderr, flush=True)


def _text(value: bytes) -> str:
    return value.decode("latin-1")
