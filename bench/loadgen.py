"""Load generators: wrk (keep-alive), openssl s_time (handshakes), tlsclient.py (prober storm).

All of them run pinned to the load CPU, bounded in time, and are parsed into plain dicts.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from procs import Proc

UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
UNITS_B = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}
TLSCLIENT = str(Path(__file__).with_name("tlsclient.py"))


def _seconds(num: str, unit: str) -> float:
    return float(num) * UNITS_S[unit]


def parse_wrk(text: str) -> dict:
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", text)
    if not m:
        raise RuntimeError(f"cannot parse wrk output: {text[-300:]!r}")
    requests, secs = int(m[1]), _seconds(m[2], m[3])
    nbytes = float(m[4]) * UNITS_B[m[5]]
    lat = {pct: _seconds(num, unit) * 1e3 for pct, num, unit in
           re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(\w+)", text, re.M)}
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"requests": requests, "seconds": secs, "bytes": nbytes,
            "p50_ms": lat.get("50"), "p99_ms": lat.get("99"),
            "socket_errors": sum(map(int, errs.groups())) if errs else 0,
            "non_2xx": int(non2xx[1]) if non2xx else 0}


def wrk(url: str, seconds: float, conns: int, cpus: str) -> dict:
    argv = ["taskset", "-c", cpus, "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s",
            "--latency", "--timeout", "5s", url]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    return parse_wrk(p.stdout + p.stderr)


def s_time(port: int, seconds: int, resume: bool, tls: str, clients: int, cpus: str,
           logdir: Path) -> dict:
    """`clients` parallel `openssl s_time` loops; counts '*' (full) and 'r' (resumed) marks."""
    argv = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-reuse" if resume else "-new",
            "-tls1_3" if tls == "1.3" else "-tls1_2", "-time", str(seconds), "-www", "/"]
    procs = [Proc(f"s_time-{i}", argv, logdir, cpus=cpus) for i in range(clients)]
    t0 = time.monotonic()
    for p in procs:
        try:
            p.popen.wait(seconds + 20)
        except subprocess.TimeoutExpired:
            p.stop()
    wall = time.monotonic() - t0
    full = resumed = 0
    for p in procs:
        lines = p.out_path.read_text(errors="replace").splitlines()
        marks = "".join(line for line in lines if re.fullmatch(r"[*rt3]+", line))
        full += len(marks) - marks.count("r")
        resumed += marks.count("r")
    return {"connections": full + resumed, "full": full, "resumed": resumed, "seconds": wall}


def tlsclient(name: str, logdir: Path, cpus: str, **opts) -> Proc:
    argv = [sys.executable, TLSCLIENT]
    for key, val in opts.items():
        flag = "--" + key.replace("_", "-")
        if val is True:
            argv.append(flag)
        elif val not in (None, False):
            argv += [flag, str(val)]
    return Proc(name, argv, logdir, cpus=cpus)


def tlsclient_result(proc: Proc, timeout: float) -> dict:
    try:
        proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.stop()
    try:
        return json.loads(proc.out_path.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return {"connections": 0, "resumed": 0, "errors": -1, "seconds": 0,
                "failure": proc.stderr_tail()}
