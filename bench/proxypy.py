"""proxy.py (PyPI `proxy.py`) in reverse-proxy mode, installed into its own venv under bench/out/.

It is a peer, not a requirement: when it cannot be installed or started, the harness notes it as
missing and carries on.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from procs import free_port
from targets import STARTERS, Ctx, Setup, Target, _cpus, _launch

HERE = Path(__file__).resolve().parent


def install(scratch: Path) -> tuple[str | None, str | None]:
    """(path of the `proxy` executable, None) or (None, why it is missing)."""
    venv = scratch / "proxypy-venv"
    exe = venv / "bin" / "proxy"
    if exe.exists():
        return str(exe), None
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                       capture_output=True, timeout=120)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "proxy.py"], check=True,
                       capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"pip install proxy.py failed: {exc}"
    return (str(exe), None) if exe.exists() else (None, "no `proxy` executable after install")


def start_proxypy(ctx: Ctx, setup: Setup) -> Target:
    """One acceptor, one worker, threadless (its default), TLS with the scenario's certificate."""
    port, cert = free_port(), ctx.certs[setup.cert]
    argv = [ctx.proxypy_bin, "--hostname", "127.0.0.1", "--port", str(port),
            "--cert-file", cert["cert"], "--key-file", cert["key"],
            "--enable-reverse-proxy", "--disable-http-proxy",
            "--plugins", "proxypy_plugin.BenchReverseProxy",
            "--num-acceptors", str(setup.workers), "--num-workers", str(setup.workers),
            "--log-level", "e"]
    env = dict(os.environ, PYTHONPATH=str(HERE), BENCH_UPSTREAM_PORT=str(ctx.upstream_port))
    proc = _launch(ctx, "proxy.py", argv, port, _cpus(ctx, setup), env=env)
    return Target("proxy.py", proc, port)


STARTERS["proxy.py"] = start_proxypy
