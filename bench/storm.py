"""The prober storm of the TLS session-hygiene issue, against gateproxy alone.

    python bench/storm.py [--n 100000] [--max-entries 10000] [--sources 200] [--out bench/out]

Phase 1: N never-resuming TLS 1.2 clients without tickets (session-ID cache), from `--sources`
loopback addresses (127.1.x.y, so the per-client budget is exercised the way many real probers
would), while a well-behaved client on 127.0.0.1 resumes one session-ID session every 20 ms.
Phase 2: the same with TLS 1.3 (tickets on; the probers never present them).
Every second /stats is sampled: session-cache entries and RSS. Then handshakes/s, full and
resumed, for each cache mode (off, openssl, lru) with `openssl s_time`.
The proxy is pinned to CPU 0, the clients to CPU 1; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GATEPROXY = ROOT / ".venv" / "bin" / "gateproxy"
CERT, KEY = ROOT / "certs" / "localhost.pem", ROOT / "certs" / "localhost-key.pem"
PORT, ADMIN = 18600, 18601


def _config(
    out: Path, *, mode: str, max_entries: int, tickets: bool, stateless: bool = True
) -> Path:
    path = out / f"storm-{mode}{'' if stateless else '-stateful'}.yaml"
    path.write_text(
        f"""
listeners:
  - name: storm
    bind: "127.0.0.1:{PORT}"
    tls:
      certificates: [{{cert: {CERT}, key: {KEY}}}]
      session_cache: {{mode: {mode}, max_entries: {max_entries}}}
      tickets:
        {{enabled: {str(tickets).lower()}, stateless: {str(stateless).lower()}, per_handshake: 2}}
    limits: {{max_connections_per_client: 100000}}
    routes: [{{path_prefix: /, upstream: app}}]
upstreams:
  app: {{servers: ["127.0.0.1:9"]}}
admin: {{bind: "127.0.0.1:{ADMIN}"}}
access_log: {{path: "off"}}
"""
    )
    return path


def _start(config: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["taskset", "-c", "0", str(GATEPROXY), "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=(config.parent / "storm-gateproxy.err").open("wb"),
    )
    deadline, last = time.monotonic() + 15, Exception("no attempt")
    while time.monotonic() < deadline:
        try:
            _stats()
            return proc
        except Exception as exc:
            last = exc
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"gateproxy did not start: {last!r}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _stats() -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/stats", timeout=2) as resp:
        return dict(json.load(resp))


def _client_ctx(version: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(CERT))
    ctx.minimum_version = ctx.maximum_version = (
        ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
    )
    if version == "1.2":
        ctx.options |= ssl.OP_NO_TICKET  # session-ID resumption only
    return ctx


def _handshake(
    ctx: ssl.SSLContext,
    source: str,
    session: ssl.SSLSession | None = None,
    *,
    request: bool = False,
) -> tuple[bool, ssl.SSLSession | None]:
    raw = socket.socket()
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no delayed-ACK stalls
    raw.settimeout(5)
    raw.bind((source, 0))
    raw.connect(("127.0.0.1", PORT))
    with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        reused = tls.session_reused
        if request:  # a real request: reading the answer also reads TLS 1.3 tickets
            tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
            while tls.recv(4096):
                pass
        new = tls.session
        if not request:
            tls.unwrap()
    return reused, new


def _prober(args: tuple[int, int, int, str, float]) -> int:
    worker, count, sources, version, stop_at = args
    ctx, done = _client_ctx(version), 0
    for i in range(count):
        if time.monotonic() > stop_at:
            break
        n = worker * count + i
        source = f"127.1.{(n % sources) // 250}.{(n % sources) % 250 + 1}"
        try:
            _handshake(ctx, source)
            done += 1
        except OSError:
            pass
    return done


def _good_client(
    version: str, stop: multiprocessing.synchronize.Event, result: multiprocessing.Queue
) -> None:  # type: ignore[name-defined]
    ctx, session, tries, reused = _client_ctx(version), None, 0, 0
    while not stop.is_set():
        try:
            was_reused, new = _handshake(ctx, "127.0.0.1", session, request=True)
        except OSError:
            continue
        if session is not None:
            tries += 1
            reused += was_reused
        session = new if not was_reused or version == "1.3" else session
        time.sleep(0.02)
    result.put((tries, reused))


def _phase(version: str, n: int, sources: int, seconds: float) -> dict[str, object]:
    os.sched_setaffinity(0, {1})
    before = _stats()
    stop, result = multiprocessing.Event(), multiprocessing.Queue()
    good = multiprocessing.Process(target=_good_client, args=(version, stop, result))
    good.start()
    stop_at = time.monotonic() + seconds
    workers = 2
    samples: list[tuple[float, int, int]] = []
    started = time.monotonic()
    with multiprocessing.Pool(workers) as pool:
        pending = pool.map_async(
            _prober, [(w, n // workers, sources, version, stop_at) for w in range(workers)]
        )
        while not pending.ready():
            pending.wait(1.0)
            tree = _stats()
            cache = tree["listeners"]["storm"]["tls"]["session_cache"]  # type: ignore[index]
            samples.append(
                (
                    round(time.monotonic() - started, 1),
                    cache["entries"],
                    tree["process"]["rss_bytes"],
                )
            )  # type: ignore[index]
        done = sum(pending.get())
    stop.set()
    tries, reused = result.get(timeout=10)
    good.join(10)
    after = _stats()
    return {
        "tls": version,
        "prober_handshakes": done,
        "seconds": round(time.monotonic() - started, 1),
        "rss_before_mib": round(before["process"]["rss_bytes"] / 2**20, 1),  # type: ignore[index]
        "rss_after_mib": round(after["process"]["rss_bytes"] / 2**20, 1),  # type: ignore[index]
        "max_entries_seen": max((s[1] for s in samples), default=0),
        "entries_samples": [s[1] for s in samples],
        "good_client_resumed": f"{reused}/{tries}",
        "good_client_rate": round(reused / tries, 4) if tries else None,
        "cache": after["listeners"]["storm"]["tls"]["session_cache"],  # type: ignore[index]
    }


def _s_time(extra: list[str], seconds: int) -> float:
    cmd = [
        "taskset",
        "-c",
        "1",
        "openssl",
        "s_time",
        "-connect",
        f"127.0.0.1:{PORT}",
        "-time",
        str(seconds),
        *extra,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 20).stdout
    rate = 0.0
    for line in out.splitlines():  # the last timing section is the one asked for
        if "connections in" in line and "real seconds" in line:
            count, _, rest = line.partition(" connections in ")
            rate = round(int(count) / float(rest.split()[0]), 1)
    return rate


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--max-entries", type=int, default=10_000)
    p.add_argument("--sources", type=int, default=200)
    p.add_argument("--phase-seconds", type=float, default=400)
    p.add_argument("--rate-seconds", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    p.add_argument("--phases", default="1.2,1.3,1.3-stateful,rates")
    args = p.parse_args()
    phases = args.phases.split(",")
    if os.environ.get("CI") == "true":
        raise SystemExit("benchmarks never run in CI")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {
        "n": args.n,
        "max_entries": args.max_entries,
        "sources": args.sources,
    }
    report["storm"] = []
    for phase in [p for p in phases if p != "rates"]:
        # TLS 1.3 stateful tickets (two per handshake, OpenSSL's default): each one a cache entry.
        config = _config(
            args.out,
            mode="lru",
            max_entries=args.max_entries,
            tickets=True,
            stateless=not phase.endswith("-stateful"),
        )
        proc = _start(config)
        try:
            result = _phase(phase.split("-")[0], args.n, args.sources, args.phase_seconds)
            report["storm"].append({"phase": phase, **result})  # type: ignore[attr-defined]
        finally:
            _stop(proc)
    rates = {}
    for mode in ("off", "openssl", "lru") if "rates" in phases else ():
        proc = _start(_config(args.out, mode=mode, max_entries=args.max_entries, tickets=False))
        try:
            rates[mode] = {
                "tls12_full": _s_time(["-new", "-tls1_2"], args.rate_seconds),
                "tls12_sessionid_resumed": _s_time(["-reuse", "-tls1_2"], args.rate_seconds),
            }
        finally:
            _stop(proc)
    report["handshakes_per_s"] = rates
    print(json.dumps(report, indent=1))
    (args.out / "storm.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
