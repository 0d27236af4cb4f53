"""Instructions per request or connection, counted by valgrind's callgrind: the noise-free figure.

    python bench/instructions.py                       # gateproxy and nginx, every scenario
    python bench/instructions.py --proxies gateproxy --gateproxy-python /other/.venv/bin/python

On a shared VM the wall-clock figures of ``bench/run.py`` move by 50 % between identical runs
(nginx itself from 17,000 to 35,000 requests per CPU-second within minutes). Instruction counts
do not: callgrind counts what the proxy process executes, whatever else the machine does. Each
proxy runs alone under ``valgrind --tool=callgrind`` (one process: gateproxy as a single
``Daemon``, nginx with ``master_process off``) in front of the bench's nginx upstream; a client
warms it up, the counters are zeroed (``callgrind_control -z``), the client makes N requests or
connections, the counters are dumped (``-d``), and the total is divided by N. Instructions are
not seconds (cache misses and syscalls weigh differently), but their ratio between two proxies
tracks the per-CPU-second ratio of ``bench/run.py`` within its noise, and it is repeatable to a
fraction of a percent, which makes it the figure to compare one change with the next.

Scenarios: ``keepalive_small`` (one TLS connection, GET / with a 64 B answer),
``keepalive_64k`` (GET /64k), ``full_tls13`` (a new TLS 1.3 connection with a full ECDSA
handshake and one HTTP/1.0 request each), ``resume_tls13`` and ``resume_tls12`` (the same,
resuming a ticket each time).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import certs  # noqa: E402
import targets  # noqa: E402

RUNNER = """
import sys, trio
from pathlib import Path
from gateproxy.core.config import load_config_text
from gateproxy.daemon import Daemon
path = Path(sys.argv[1])
daemon = Daemon(load_config_text(path.read_text(), source=str(path)), base_dir=path.parent)
trio.run(daemon.serve)
"""

SCENARIOS = {
    "keepalive_small": ("keepalive", "/", 2000),
    "keepalive_64k": ("keepalive", "/64k", 500),
    "full_tls13": ("connections", "1.3", 300),
    "resume_tls13": ("resume", "1.3", 300),
    "resume_tls12": ("resume", "1.2", 300),
}


def _gateproxy_conf(port: int, upstream: int, cert: dict) -> str:
    return json.dumps(
        {
            "listeners": [
                {
                    "name": "bench",
                    "bind": f"127.0.0.1:{port}",
                    "tls": {
                        "certificates": [{"cert": cert["cert"], "key": cert["key"]}],
                        "session_cache": {"mode": "lru", "max_entries": 10000},
                    },
                    "routes": [{"path_prefix": "/", "upstream": "app"}],
                    "limits": {"max_requests_per_connection": 0},
                }
            ],
            "upstreams": {"app": {"servers": [f"127.0.0.1:{upstream}"]}},
            "admin": None,
            "access_log": {"path": "off"},
        }
    )


def _nginx_conf(scratch: Path, port: int, upstream: int, cert: dict) -> str:
    return (
        f"daemon off;\nmaster_process off;\nworker_processes 1;\npid {scratch}/ir-nginx.pid;\n"
        f"error_log {scratch}/ir-nginx.err;\nevents {{ worker_connections 1024; }}\n"
        f"http {{\n  access_log off;\n  keepalive_requests 100000000;\n"
        + "".join(
            f"  {k}_temp_path {scratch}/ir-{k};\n"
            for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"  upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}\n"
        "  ssl_protocols TLSv1.2 TLSv1.3;\n  ssl_session_cache shared:SSL:10m;\n"
        f"  server {{\n    listen 127.0.0.1:{port} ssl;\n"
        f"    ssl_certificate {cert['cert']};\n    ssl_certificate_key {cert['key']};\n"
        "    location / { proxy_pass http://app; proxy_http_version 1.1;\n"
        '      proxy_set_header Connection ""; }\n  }\n}\n'
    )


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port} after {timeout:g}s")


def _context(version: str = "1.3") -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = (
        ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    return ctx


def _recv(sock: ssl.SSLSocket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise RuntimeError("the proxy closed the connection")
    return data


def _read_response(sock: ssl.SSLSocket, buffer: bytearray) -> None:
    while b"\r\n\r\n" not in buffer:
        buffer += _recv(sock)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    body = bytearray(rest)
    while len(body) < length:
        body += _recv(sock)
    buffer[:] = body[length:]


def _keepalive(port: int, path: str, count: int, sock: ssl.SSLSocket | None) -> ssl.SSLSocket:
    if sock is None:
        raw = socket.create_connection(("127.0.0.1", port))
        sock = _context().wrap_socket(raw, server_hostname="localhost")
    buffer = bytearray()
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    for _ in range(count):
        sock.sendall(request)
        _read_response(sock, buffer)
    return sock


def _connections(port: int, version: str, count: int, *, resume: bool) -> None:
    ctx, session = _context(version), None
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            tls = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
            with tls:
                tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
                while tls.recv(65536):
                    pass
                if resume:
                    session = tls.session


def _counted(pid: int, out: Path, run: object) -> int:
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    before = set(out.parent.glob(out.name + "*"))
    run()  # type: ignore[operator]
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for dump in set(out.parent.glob(out.name + ".*")) - before:
            for line in dump.read_text().splitlines():
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise RuntimeError(f"callgrind wrote no dump of {out}")


def measure(proxy: str, scenario: str, args: argparse.Namespace, ctx: targets.Ctx) -> float:
    kind, what, count = SCENARIOS[scenario]
    count = max(1, int(count * args.scale))
    port = targets.free_port()
    cert = ctx.certs["ecdsa"]
    scratch = ctx.scratch
    out = scratch / f"cg-{proxy}-{scenario}.out"
    for old in scratch.glob(out.name + "*"):
        old.unlink()
    if proxy == "gateproxy":
        conf = scratch / "ir-gateproxy.yaml"
        conf.write_text(_gateproxy_conf(port, ctx.upstream_port, cert))
        argv = [args.gateproxy_python, "-c", RUNNER, str(conf)]
    else:
        conf = scratch / "ir-nginx.conf"
        conf.write_text(_nginx_conf(scratch, port, ctx.upstream_port, cert))
        argv = ["nginx", "-c", str(conf)]
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    proc = subprocess.Popen([*valgrind, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, 180)
        if kind == "keepalive":
            sock = _keepalive(port, what, 50, None)  # warm-up
            total = _counted(proc.pid, out, lambda: _keepalive(port, what, count, sock))
            sock.close()
        else:
            resume = kind == "resume"
            _connections(port, what, 20, resume=resume)
            total = _counted(
                proc.pid, out, lambda: _connections(port, what, count, resume=resume)
            )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()  # (nginx under valgrind may not stop on SIGTERM)
            proc.wait(10)
    return total / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--proxies", default="nginx,gateproxy")
    p.add_argument("--only", default=",".join(SCENARIOS))
    p.add_argument("--gateproxy-python", default=str(HERE.parent / ".venv" / "bin" / "python"))
    p.add_argument("--scale", type=float, default=1.0, help="multiply every request count")
    p.add_argument("--out", default=str(HERE / "INSTRUCTIONS.json"))
    args = p.parse_args()
    scratch = HERE / "out"
    scratch.mkdir(exist_ok=True)
    ctx = targets.Ctx(scratch=scratch, certs=certs.make_all(scratch / "certs"),
                      cores={"load": "1", "proxy": "0", "proxy2": "0-1"},
                      gateproxy_bin="")
    upstream = targets.start_upstream(ctx)
    results: dict[str, dict[str, float]] = {}
    try:
        for scenario in args.only.split(","):
            row = results.setdefault(scenario, {})
            for proxy in args.proxies.split(","):
                row[proxy] = round(measure(proxy, scenario, args, ctx))
                print(f"{scenario:16s} {proxy:10s} {row[proxy]:>12,} instructions", flush=True)
            if "nginx" in row and "gateproxy" in row:
                print(f"{scenario:16s} nginx/gateproxy {row['nginx'] / row['gateproxy']:.3f}")
    finally:
        upstream.proc.stop()
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"),
                                          "python": args.gateproxy_python,
                                          "instructions": results}, indent=1) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
