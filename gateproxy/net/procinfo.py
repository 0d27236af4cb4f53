"""Process figures for ``/stats`` (``process.rss_bytes``, ``.open_fds``, ``.uptime_s``,
``.start_time_s``, ``.build``).

Read from ``/proc/self`` (Linux). Where ``/proc`` is missing, the figure falls back to
``resource.getrusage`` (peak RSS), to the time this module was imported (start time), or is
reported as -1 rather than failing the stats request.
"""

from __future__ import annotations

import os
import platform
import resource
import ssl
import sys
import time

from gateproxy import __version__

_IMPORTED_AT = time.time()


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak if sys.platform == "darwin" else peak * 1024


def _open_fds() -> int:
    for fd_dir in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(fd_dir))
        except OSError:
            continue
    return -1


def start_time() -> float:
    """This process's start time in Unix seconds, as Prometheus's own clients compute
    ``process_start_time_seconds``: boot time plus the process's start in clock ticks."""
    try:
        with open("/proc/stat", "rb") as stat:
            boot = next(int(line.split()[1]) for line in stat if line.startswith(b"btime "))
        with open("/proc/self/stat", "rb") as own:
            after_name = own.read().rsplit(b")", 1)[1].split()
        return boot + int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


def build_info() -> dict[str, str]:
    """The versions ``gateproxy_build_info`` names: gateproxy's, Python's, OpenSSL's."""
    return {
        "version": __version__,
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
    }


def process_info(*, started_at_monotonic: float, now: float | None = None) -> dict[str, object]:
    """This process's resident memory (bytes), open descriptors, uptime (seconds), start time
    (Unix seconds) and build versions.

    ``started_at_monotonic`` is a ``time.monotonic()`` reading taken at start-up; ``now``
    defaults to ``time.monotonic()`` (tests pass their own).
    """
    current = time.monotonic() if now is None else now
    return {
        "rss_bytes": _rss_bytes(),
        "open_fds": _open_fds(),
        "uptime_s": max(0.0, current - started_at_monotonic),
        "start_time_s": start_time(),
        "build": build_info(),
    }
