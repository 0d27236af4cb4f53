"""Small TLS client for the prober storm (run as a separate process by loadgen.py).

probe: N connections that never resume (a fresh handshake each, like a health checker);
good:  a well-behaved client that always offers its latest session, paced, until SIGTERM or
       --seconds; it reports how many of its handshakes were resumptions.
Each connection sends `GET / HTTP/1.1` with `Connection: close` and reads to EOF. Prints one
JSON line: connections, resumed, errors, seconds.
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import ssl
import sys
import time

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
STOP = False


def make_ctx(version: str, no_ticket: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = VERSIONS[version]
    ctx.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    if no_ticket:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def one_connection(ctx: ssl.SSLContext, port: int, source: str, session):
    """One connection; returns (resumed, session to offer next time)."""
    raw = socket.socket()
    raw.settimeout(10)
    try:
        raw.bind((source, 0))
        raw.connect(("127.0.0.1", port))
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(REQUEST)
            while tls.recv(65536):
                pass
            return tls.session_reused, tls.session
    finally:
        raw.close()


def run(args) -> dict:
    ctx = make_ctx(args.tls, args.no_ticket)
    done = resumed = errors = 0
    session = None
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    while not STOP and done < args.count and time.monotonic() < deadline:
        try:
            reused, new = one_connection(ctx, args.port, args.source, session)
            done += 1
            resumed += bool(reused)
            if args.mode == "good":
                session = new
        except (OSError, ssl.SSLError):
            errors += 1
            if errors > max(50, done // 10):
                break
        if args.interval:
            time.sleep(args.interval)
    return {"connections": done, "resumed": resumed, "errors": errors,
            "seconds": round(time.monotonic() - t0, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mode", choices=["probe", "good"], required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls", choices=sorted(VERSIONS), default="1.2")
    p.add_argument("--no-ticket", action="store_true", help="resume through session IDs only")
    p.add_argument("--count", type=int, default=10**9)
    p.add_argument("--seconds", type=float, default=60.0, help="hard time bound")
    p.add_argument("--interval", type=float, default=0.0, help="pause between connections")
    p.add_argument("--source", default="127.0.0.1")
    args = p.parse_args()

    def stop(*_):
        global STOP
        STOP = True
    signal.signal(signal.SIGTERM, stop)
    json.dump(run(args), sys.stdout)
    print(flush=True)


if __name__ == "__main__":
    main()
