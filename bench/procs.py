"""Process helpers: start pinned processes, measure their CPU and RSS, stop them by PID.

Every process the harness starts goes through `Proc`, which records its PID and process group so
that `stop()` ends exactly what was started (never a name-based kill).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces: split after the closing parenthesis
    return raw[raw.rindex(")") + 2:].split()


def children(pid: int) -> list[int]:
    """Direct children of `pid` (all threads), from /proc/<pid>/task/*/children."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def tree(pid: int, limit: int = 256) -> list[int]:
    """`pid` and all its live descendants (bounded breadth-first walk)."""
    out, todo = [], [pid]
    while todo and len(out) < limit:
        p = todo.pop(0)
        out.append(p)
        todo += children(p)
    return out


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of the live process tree, plus the reaped children accounted to the root."""
    ticks = 0
    for i, p in enumerate(tree(pid)):
        f = _stat_fields(p)
        if f is None:
            continue
        ticks += int(f[11]) + int(f[12])  # utime, stime (fields 14, 15 of stat)
        if i == 0:
            ticks += int(f[13]) + int(f[14])  # cutime, cstime of waited-for children
    return ticks / CLK_TCK


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


class Proc:
    """One started process (and its process group), pinned with taskset when `cpus` is given."""

    def __init__(self, name: str, argv: list[str], logdir: Path, cpus: str | None = None,
                 env: dict | None = None):
        self.name = name
        cmd = (["taskset", "-c", cpus] if cpus else []) + argv
        self.out_path = logdir / f"{name}.out"
        self.err_path = logdir / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                          start_new_session=True, env=env)
        self.pid = self.popen.pid  # taskset execs the command: same PID

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_port(self, port: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            if port_open(port):
                return True
            time.sleep(0.05)
        return False

    def stderr_tail(self, lines: int = 8) -> str:
        text = ""
        for path in (self.err_path, self.out_path):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return tree_rss_bytes(self.pid)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group we created, then SIGKILL it if it lingers."""
        if self.popen.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue
