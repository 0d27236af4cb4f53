"""Access log (one JSON line per request, or nginx "combined") and operational event lines.

Theory of operation
-------------------
:class:`AccessLog` is the request log sink of one process. ``access_log.path`` picks where lines
go: ``"-"`` is standard output, ``"off"`` turns every call into a no-op, anything else is a file.

* **One write per line.** A file is opened with ``O_APPEND`` and each line is written with a
  single ``os.write`` of the whole encoded line, unbuffered: several worker processes can append
  to the same file without interleaving their lines, and nothing sits in a buffer waiting for the
  next request. Standard output goes through ``sys.stdout`` (looked up at each write), flushed
  per line.
* **Kinds and sampling.** Every line has a kind: ``"request"`` (an ordinary proxied request),
  ``"health"`` (a health-check answer gateproxy gave itself) or ``"probe"`` (a request from a
  ``probe_clients`` address or a ``probe_user_agents`` match). Requests are always logged. Health
  answers and probe requests are *not* logged unless sampled: each is logged with probability
  ``access_log.health_sample_rate`` (default 0.0 = never; 1.0 = always). They are counted in
  ``/stats`` either way. The random source is injected (``random=``) so tests decide. The JSON
  format carries ``"kind"``; ``combined`` is nginx's fixed format and has no room for it.
* **Rotation (SIGUSR1).** :meth:`AccessLog.reopen` opens ``path`` again by name and only then
  closes the old descriptor, so after ``mv access.log access.log.1`` and SIGUSR1, new lines go to
  a fresh ``access.log`` (logrotate's ``create``-style rotation, not ``copytruncate``). If the
  reopen fails the old descriptor is kept (lines keep going to the renamed file) and an
  ``access_log_reopen_failed`` event says why. Standard output is never closed or reopened.
* **Write failures never reach the request path.** A failed write (disk full, ``EBADF``, a closed
  pipe on stdout) drops that line and counts it in :attr:`AccessLog.write_errors`; one
  ``access_log_write_failed`` event is printed per run of failures (the next successful write
  ends the run).

:func:`event` prints one structured operational line (start, reload, rotation, ...) on stderr.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random as _random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from gateproxy.core.config import AccessLogConfig

#: The kinds of access-log lines; only ``"request"`` is logged unconditionally.
KINDS = frozenset({"request", "health", "probe"})
SAMPLED_KINDS = frozenset({"health", "probe"})
#: Mode of a newly created access-log file (before the umask): client addresses are personal data.
FILE_MODE = 0o640


class ConnectionTLS(NamedTuple):
    """What the access log says of a connection's TLS (read once per connection)."""

    version: str  # "TLSv1.3"
    cipher: str  # "TLS_AES_256_GCM_SHA384"
    resumed: bool
    sni: str  # the server name the client asked for, "" when it sent none


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes:
    for key, value in headers:
        if key == name:
            return value
    return b""


def iso_time(now: float) -> str:
    """``now`` (Unix seconds) as ISO 8601 UTC with milliseconds: ``2023-11-14T22:13:20.250Z``."""
    millis = round(now * 1000)
    seconds, millis = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class AccessLog:
    """Request log sink; ``path: off`` turns every call into a no-op.

    ``random`` returns a float in [0, 1) and decides which health/probe lines are sampled;
    ``clock`` gives the wall-clock time stamped on each line.
    """

    def __init__(
        self,
        config: AccessLogConfig,
        *,
        random: Callable[[], float] = _random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.enabled = config.path != "off"
        self.to_stdout = config.path == "-"
        self.write_errors = 0
        self._random = random
        self._clock = clock
        self._fd: int | None = None
        self._failing = False
        if self.enabled and not self.to_stdout:
            self._fd = self._open_file()

    def _open_file(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return os.open(self.config.path, flags, FILE_MODE)

    def reopen(self) -> bool:
        """Open ``path`` again (log rotation, SIGUSR1); True when the new file is in use.

        Never raises: on failure the old file stays in use and an event is printed.
        """
        if not self.enabled or self.to_stdout:
            return True
        try:
            fd = self._open_file()
        except OSError as exc:
            _quiet_event("access_log_reopen_failed", path=self.config.path, error=str(exc))
            return False
        old, self._fd = self._fd, fd
        if old is not None:
            with contextlib.suppress(OSError):
                os.close(old)
        return True

    def wanted(self, kind: str) -> bool:
        """Whether a line of this kind is written (health and probe lines are sampled)."""
        if kind not in KINDS:
            raise ValueError(f"unknown access-log kind {kind!r} (known: {sorted(KINDS)})")
        if not self.enabled:
            return False
        if kind in SAMPLED_KINDS:
            rate = self.config.health_sample_rate
            return rate > 0.0 and self._random() < rate
        return True

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
        kind: str = "request",
        referer: bytes = b"",
        user_agent: bytes = b"",
        headers: Sequence[tuple[bytes, bytes]] = (),
        tls: ConnectionTLS | None = None,
    ) -> None:
        """Log one request (or not: see the module docstring for kinds and sampling).

        ``kind`` is ``"request"``, ``"health"`` or ``"probe"`` (anything else: ValueError).
        ``referer`` and ``user_agent`` fill the last two fields of the ``combined`` format;
        when left out they come from ``headers`` (the request's, lowercase names), which
        also give the JSON line its ``host``. ``tls`` is the connection's (None: plain HTTP).
        """
        if not self.wanted(kind):
            return
        now = self._clock()
        user_agent = user_agent or _header(headers, b"user-agent")
        if self.config.format == "combined":
            referer = referer or _header(headers, b"referer")
            stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now))
            line = (
                f'{client} - - [{stamp}] "{_escape(method)} {_escape(target)} HTTP/1.1" '
                f'{status} {bytes_sent} "{_escape(referer) or "-"}" "{_escape(user_agent) or "-"}"'
            )
        else:
            line = json.dumps(
                {
                    "time": round(now, 3),
                    "kind": kind,
                    "listener": listener,
                    "client": client,
                    "method": _text(method),
                    "path": _text(target),
                    "status": status,
                    "bytes": bytes_sent,
                    "upstream": upstream,
                    "duration_s": round(duration, 6),
                    "time_iso": iso_time(now),
                    "host": _text(_header(headers, b"host")),
                    "user_agent": _text(user_agent),
                    "sni": tls.sni if tls is not None else None,
                    "tls_version": tls.version if tls is not None else None,
                    "cipher": tls.cipher if tls is not None else None,
                    "tls_resumed": tls.resumed if tls is not None else None,
                },
                separators=(",", ":"),
            )
        self._write(line + "\n")

    def _write(self, line: str) -> None:
        try:
            if self.to_stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
            elif self._fd is None:
                raise OSError(errno.EBADF, "access log is closed")
            else:
                _write_all(self._fd, line.encode("utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: I/O on a closed text stream
            self.write_errors += 1
            if not self._failing:
                self._failing = True
                _quiet_event("access_log_write_failed", path=self.config.path, error=str(exc))
            return
        self._failing = False

    def close(self) -> None:
        """Close the file (never standard output); later calls log nothing."""
        fd, self._fd = self._fd, None
        self.enabled = False
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # pragma: no cover - os.write raises rather than returning 0 on files
            raise OSError(errno.EIO, "short write")
        view = view[written:]


_EVENT_CONTEXT: dict[str, Any] = {}


def set_event_context(**fields: Any) -> None:
    """Fields added to every later event line of this process (a worker's index and pid)."""
    _EVENT_CONTEXT.update(fields)


def event(name: str, **fields: Any) -> None:
    """One structured operational log line on stderr (start, reload, rotation, ...)."""
    record = {"time": round(time.time(), 3), "event": name, **_EVENT_CONTEXT, **fields}
    line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
    # One write per line: the supervisor and its workers share stderr, and a pipe keeps a single
    # write of up to PIPE_BUF bytes whole, where print() may split the text and its newline.
    sys.stderr.flush()
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stderr without a file (pytest capture)
        sys.stderr.write(line)
        sys.stderr.flush()
        return
    os.write(fd, line.encode())


def _quiet_event(name: str, **fields: Any) -> None:
    """:func:`event` for the logging path itself: a broken stderr must not raise either."""
    with contextlib.suppress(OSError, ValueError):
        event(name, **fields)


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def _escape(value: bytes) -> str:
    """nginx's escaping for text log formats: ``"``, ``\\`` and non-printable bytes as ``\\xHH``."""
    return "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02X}" for b in value
    )
