"""The floor of gateproxy's stack: a minimal trio TLS-to-plain keep-alive relay on the same
``ServerTLSStream``, with no HTTP handling beyond finding the head end and Content-Length.

    python bench/floor.py --cert C --key K --listen 18445 --upstream 18080

Pin it to a core and load it with wrk like a proxy (see bench/PERF-LOG.md): what it does per
CPU-second is what trio + ssl + the syscalls allow; everything gateproxy does on top is its own.
Not a proxy: no limits, no errors handled, one upstream connection per client connection.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import ssl
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateproxy.net.tls_stream import ServerTLSStream


async def _read(fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)


async def _relay(stream: trio.SocketStream, ctx: ssl.SSLContext, upstream: int) -> None:
    tls = ServerTLSStream(stream, ctx)
    await tls.do_handshake()
    up = await trio.open_tcp_stream("127.0.0.1", upstream)
    fd, buf = up.socket.fileno(), b""
    while data := await tls.receive_some(65536):
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            continue
        head, buf = buf[: end + 4], buf[end + 4 :]
        os.write(fd, head)
        await trio.lowlevel.wait_readable(fd)
        resp = b""
        while True:
            resp += await _read(fd)
            e = resp.find(b"\r\n\r\n")
            if e < 0:
                continue
            i = resp[:e].lower().find(b"content-length: ")
            if len(resp) >= e + 4 + int(resp[i + 16 : resp.find(b"\r\n", i)]):
                break
        await tls.send_all(resp)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--listen", type=int, default=18445)
    p.add_argument("--upstream", type=int, default=18080)
    args = p.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)

    async def handler(stream: trio.SocketStream) -> None:
        with contextlib.suppress(Exception):  # a floor measurement: drop it, keep serving
            await _relay(stream, ctx, args.upstream)

    trio.run(trio.serve_tcp, handler, args.listen)


if __name__ == "__main__":
    main()
