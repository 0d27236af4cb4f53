"""Environment: refuse CI, apt-install missing tools, describe the machine and versions."""
from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

APT_PACKAGES = {"nginx": "nginx", "haproxy": "haproxy", "wrk": "wrk", "openssl": "openssl",
                "taskset": "util-linux"}


def refuse_ci() -> None:
    if os.environ.get("CI", "").lower() == "true":
        sys.exit("bench/run.py refuses to run in CI (CI=true): it installs packages and loads the "
                 "machine for minutes. Run it by hand on a quiet machine.")


def ensure_tools() -> None:
    missing = sorted({pkg for tool, pkg in APT_PACKAGES.items() if not shutil.which(tool)})
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing tools; install them: sudo apt-get install -y {' '.join(missing)}")
    print(f"installing with apt: {' '.join(missing)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, timeout=600)


def _first_line(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc.__class__.__name__})"
    text = (p.stdout + p.stderr).strip()
    return text.splitlines()[0] if text else f"exit {p.returncode}"


def versions(gateproxy_bin: str, proxypy_bin: str | None) -> dict:
    out = {
        "nginx": _first_line(["nginx", "-v"]),
        "haproxy": _first_line(["haproxy", "-v"]),
        "wrk": _first_line(["wrk", "-v"]),
        "openssl": _first_line(["openssl", "version"]),
        "python": sys.version.split()[0],
        "gateproxy": _first_line([gateproxy_bin, "--version"]),
        "gateproxy_commit": _first_line(["git", "-C", str(Path(__file__).parent), "rev-parse",
                                         "--short", "HEAD"]),
    }
    if proxypy_bin:
        out["proxy.py"] = _first_line([proxypy_bin, "--version"])
    return out


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {"cpu": model, "cpus": os.cpu_count(), "kernel": platform.release(),
            "memory_gib": round(mem_kb / 2**20, 1), "hostname": platform.node(),
            "loadavg_at_start": os.getloadavg()}


def core_plan() -> dict:
    """Which CPUs the proxy gets and which the load generator (and upstream) get.

    2 CPUs: proxy on 0, load on 1; a 2-worker proxy gets 0-1 (sharing 1 with the load).
    More CPUs: proxy on 0 (0-1 with two workers), load on 2 (the rest stays idle for noise).
    """
    n = os.cpu_count() or 1
    if n < 2:
        sys.exit("need at least 2 CPUs (one for the proxy, one for the load generator)")
    load = "1" if n < 4 else "2"
    return {"proxy": "0", "proxy2": "0-1", "load": load}
