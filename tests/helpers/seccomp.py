"""Run a command under the system-call allow-list a systemd unit's ``SystemCallFilter`` gives.

``python -m tests.helpers.seccomp ERRNO GROUP... -- COMMAND...`` loads a seccomp filter that
allows the system calls of the systemd groups (``@system-service``, expanded with
``systemd-analyze syscall-filter``, as systemd itself does) and fails every other one with
``ERRNO`` (``SystemCallErrorNumber=``), then execs COMMAND; the filter is inherited by every
child, so a supervisor's workers run under it too. Uses libseccomp through ctypes (systemd
links the same library).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000


def available() -> bool:
    """Whether libseccomp can be loaded here."""
    return ctypes.util.find_library("seccomp") is not None


def expand(names: Iterable[str]) -> set[str]:
    """System call names of ``names`` (``@group`` or a call), groups expanded recursively."""
    calls: set[str] = set()
    for name in names:
        if not name.startswith("@"):
            calls.add(name)
            continue
        out = subprocess.run(
            ["systemd-analyze", "syscall-filter", name],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        members = [line.strip() for line in out.splitlines()[1:]]
        calls |= expand(m for m in members if m and not m.startswith("#"))
    return calls


def load_filter(calls: Iterable[str], *, error: int) -> int:
    """Allow ``calls``, fail everything else with ``error``; returns how many calls were known
    on this architecture (names of other architectures' calls are skipped)."""
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_ERRNO | (error & 0xFFFF))
    if not ctx:
        raise OSError("seccomp_init failed")
    known = 0
    for name in sorted(calls):
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            continue
        result = lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, number, 0)
        if result != 0:
            raise OSError(-result, f"seccomp_rule_add({name})")
        known += 1
    result = lib.seccomp_load(ctx)
    if result != 0:
        raise OSError(-result, "seccomp_load")
    return known


def main(argv: Sequence[str]) -> None:
    split = list(argv).index("--")
    error_name, *groups = argv[:split]
    command = list(argv[split + 1 :])
    load_filter(expand(groups), error=getattr(errno, error_name))
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
