"""proxy.py (PyPI `proxy.py`) in reverse-proxy mode, installed into its own venv under bench/out/.

It is a peer, not a requirement: when it cannot be installed or started, the harness notes it as
missing and carries on.

Why `--threaded` (and not proxy.py's default threadless mode): in proxy.py 2.4.10 (and its main
branch's reverse.py still opens an upstream per request the same way), keep-alive to the client is
broken in threadless mode when reverse proxying. `ReverseProxy.handle_request` opens a *new*
upstream connection for every request, including the 2nd, 3rd... request on a keep-alive client
connection (handled through `HttpWebServerPlugin.on_client_data` -> `route.handle_request`):
`initialize_upstream` replaces `self.upstream`, the old socket is garbage-collected (closed, which
silently drops it from epoll) and the new socket gets the same fd number. The Threadless loop still
has that fd in its own registry (`registered_events_by_work_ids`) with the old mask, so it calls
`selector.modify(fd)`, epoll_ctl(MOD) fails with ENOENT, and the uncaught FileNotFoundError kills
`Threadless._run_forever` -- the whole worker stops, so every connection stalls after the first
response (what wrk saw). One-request-per-connection traffic (s_time) never reaches that path, which
is why it worked.

In `--threaded` mode each connection runs in its own thread of the (single) acceptor process with a
private selector that registers/unregisters the fds on every loop, so the fd reuse is harmless and
proxy.py serves any number of requests per keep-alive connection through its stock static-route
reverse-proxy path (still one new upstream connection per request -- that is how proxy.py works).
Same process count as before (`--num-acceptors` processes, each pinned like the other proxies);
`--num-workers` only sizes the threadless pool, which `--threaded` does not use, so it is omitted.
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
    """`setup.workers` acceptor process(es), threaded (see the module docstring for why not
    threadless), TLS with the scenario's certificate."""
    port, cert = free_port(), ctx.certs[setup.cert]
    argv = [ctx.proxypy_bin, "--hostname", "127.0.0.1", "--port", str(port),
            "--cert-file", cert["cert"], "--key-file", cert["key"],
            "--enable-reverse-proxy", "--disable-http-proxy",
            "--plugins", "proxypy_plugin.BenchReverseProxy",
            "--threaded", "--num-acceptors", str(setup.workers),
            "--log-level", "e"]
    env = dict(os.environ, PYTHONPATH=str(HERE), BENCH_UPSTREAM_PORT=str(ctx.upstream_port))
    proc = _launch(ctx, "proxy.py", argv, port, _cpus(ctx, setup), env=env)
    return Target("proxy.py", proc, port)


STARTERS["proxy.py"] = start_proxypy
