"""Process figures for ``/stats`` (``process.rss_bytes``, ``.open_fds``, ``.uptime_s``).

Read from ``/proc/self`` (Linux). Where ``/proc`` is missing, the figure falls back to
``resource.getrusage`` (peak RSS) or is reported as -1 rather than failing the stats request.
"""

from __future__ import annotations

import os
import resource
import sys
import time


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


def process_info(
    *, started_at_monotonic: float, now: float | None = None
) -> dict[str, float | int]:
    """This process's resident memory (bytes), open descriptors and uptime (seconds).

    ``started_at_monotonic`` is a ``time.monotonic()`` reading taken at start-up; ``now``
    defaults to ``time.monotonic()`` (tests pass their own).
    """
    current = time.monotonic() if now is None else now
    return {
        "rss_bytes": _rss_bytes(),
        "open_fds": _open_fds(),
        "uptime_s": max(0.0, current - started_at_monotonic),
    }
