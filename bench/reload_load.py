#!/usr/bin/env python3
"""Failed requests during reloads under load: wrk keep-alive traffic while gateproxy reloads.

    python bench/reload_load.py                    # 20 s of wrk, a SIGHUP every second, 2 workers
    python bench/reload_load.py --seconds 30 --every 0.5 --workers 2 --conns 50

Starts the bench's nginx upstream and `gateproxy run` (TLS listener, default config otherwise),
runs wrk against it and sends SIGHUP to the supervisor every `--every` seconds. Every reload
starts a new generation of workers and retires the old one. Prints, and writes to
bench/RELOAD.json: requests, reloads completed, wrk socket errors (connect/read/write/timeout)
and non-2xx responses. "Failed" = socket errors + non-2xx; the target is 0.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import env  # noqa: E402
import targets  # noqa: E402
from procs import free_port  # noqa: E402

import certs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--every", type=float, default=1.0, help="seconds between SIGHUPs")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--gateproxy", default=str(HERE.parent / ".venv" / "bin" / "gateproxy"))
    p.add_argument("--out", default=str(HERE / "RELOAD.json"))
    args = p.parse_args(argv)
    env.refuse_ci()
    env.ensure_tools()
    with tempfile.TemporaryDirectory(prefix="gp-reload-") as tmp:
        ctx = targets.Ctx(scratch=Path(tmp), certs=certs.make_all(Path(tmp) / "certs"),
                          cores=env.core_plan(), gateproxy_bin=args.gateproxy)
        try:
            targets.start_upstream(ctx)
            result = _run(ctx, args)
        finally:
            for proc in reversed(ctx.procs):
                proc.stop()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["failed"] == 0 else 1


def _run(ctx: targets.Ctx, args: argparse.Namespace) -> dict:
    port = free_port()
    cert = ctx.certs["ecdsa"]
    config = Path(ctx.scratch) / "gateproxy.yaml"
    config.write_text(
        f"workers: {args.workers}\nlisteners:\n  - name: bench\n    bind: \"127.0.0.1:{port}\"\n"
        f"    tls: {{certificates: [{{cert: {cert['cert']}, key: {cert['key']}}}]}}\n"
        "    routes: [{path_prefix: /, upstream: app}]\n"
        f"upstreams:\n  app: {{servers: [\"127.0.0.1:{ctx.upstream_port}\"]}}\n"
        "admin: null\naccess_log: {path: \"off\"}\n")
    log = open(Path(ctx.scratch) / "gateproxy.err", "w+b")  # noqa: SIM115
    gp = subprocess.Popen([args.gateproxy, "run", "-c", str(config)], stderr=log)
    try:
        _wait_for(log, b'"event":"started"', 20)
        wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{args.conns}", f"-d{args.seconds}s", f"https://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE, text=True)
        sent = 0
        deadline = time.monotonic() + args.seconds - 1
        while time.monotonic() < deadline:
            time.sleep(args.every)
            gp.send_signal(signal.SIGHUP)
            sent += 1
        out, _ = wrk.communicate(timeout=args.seconds + 30)
    finally:
        gp.send_signal(signal.SIGTERM)
        gp.wait(timeout=60)
    log.seek(0)
    events = [json.loads(line) for line in log.read().splitlines() if line.startswith(b"{")]
    return _summary(out, sent, events, args)


def _wait_for(log, needle: bytes, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        log.seek(0)
        if needle in log.read():
            return
        time.sleep(0.1)
    raise RuntimeError("gateproxy did not start")


def _summary(out: str, sent: int, events: list[dict], args: argparse.Namespace) -> dict:
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if match:
        errors = dict(zip(errors, map(int, match.groups()), strict=True))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = int(non2xx.group(1)) if non2xx else 0
    reloaded = sum(1 for e in events if e.get("event") == "reloaded")
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python bench/reload_load.py " + " ".join(sys.argv[1:]),
        "workers": args.workers, "seconds": args.seconds, "conns": args.conns,
        "requests": requests, "sighups_sent": sent, "reloads_completed": reloaded,
        "reload_failed_events": sum(1 for e in events if e.get("event") == "reload_failed"),
        "socket_errors": errors, "non_2xx": bad,
        "failed": sum(errors.values()) + bad,
        "wrk_output": out.strip().splitlines(),
    }


if __name__ == "__main__":
    raise SystemExit(main())
