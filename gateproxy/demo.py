"""The built-in demo upstream used by ``gateproxy demo`` and by the benchmarks.

A small, real HTTP/1.1 server (plain HTTP, trio + the parser pair's server half). Endpoints:

    GET  /            an HTML page that shows the request headers it received (escaped)
    ANY  /echo        streams the request body straight back
    GET  /bytes/<n>   n bytes, streamed in 64 KiB chunks, with Content-Length
    GET  /health      200 "ok"
    GET  /headers     the request headers as a JSON object

Theory of operation: one task per connection runs a ``core.h1_server`` loop. Request bodies are
never held whole: ``/echo`` forwards every chunk as it arrives, and every other endpoint discards
the body before answering. To keep it fast enough to sit behind benchmarks, everything produced
for one step (headers, body, end of message) is joined and written with one ``send_all``.
"""

from __future__ import annotations

import contextlib
import html
import json
from collections.abc import Callable

import trio

from gateproxy.core.h1_server import ServerConnection
from gateproxy.core.http_events import NEED_DATA, Data, EndOfMessage, Event, Request
from gateproxy.core.request_checks import REASONS
from gateproxy.errors import HTTPProtocolError

CHUNK_SIZE = 64 * 1024
IDLE_TIMEOUT = 300.0
"""Seconds a connection may go without sending anything before it is closed."""

_FILLER = b"0123456789abcdef" * (CHUNK_SIZE // 16)
_SERVER = (b"server", b"gateproxy-demo")


async def open_demo_listeners(host: str = "127.0.0.1", port: int = 0) -> list[trio.SocketListener]:
    """Open the TCP listeners for the demo upstream (port 0 picks a free port)."""
    return await trio.open_tcp_listeners(port, host=host)


async def serve_demo_upstream(
    listeners: list[trio.SocketListener],
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the demo endpoints on ``listeners`` until cancelled; never returns normally."""
    await trio.serve_listeners(_serve_connection, listeners, task_status=task_status)


def listener_address(listener: trio.SocketListener) -> str:
    """``"host:port"`` of a listener, e.g. ``"127.0.0.1:43127"``."""
    host, port = listener.socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Exchange:
    """The connection's stream and HTTP state, with the two I/O primitives handlers use."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = ServerConnection(max_header_bytes=64 * 1024)

    async def next_event(self, pending: list[bytes] | None = None) -> Event:
        """The next event; flushes ``pending`` output before blocking on the network."""
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                return event
            if pending:
                await self.stream.send_all(b"".join(pending))
                pending.clear()
            with trio.fail_after(IDLE_TIMEOUT):
                self.conn.receive_data(await self.stream.receive_some(CHUNK_SIZE))

    async def discard_body(self) -> None:
        """Read and drop the rest of the request body."""
        pending = self.continue_if_expected()
        while not isinstance(await self.next_event(pending), EndOfMessage):
            pass
        if pending:
            await self.stream.send_all(b"".join(pending))

    def continue_if_expected(self) -> list[bytes]:
        if self.conn.waiting_for_100_continue:
            return [self.conn.send_informational(100)]
        return []


async def _serve_connection(stream: trio.SocketStream) -> None:
    """One connection: requests until the peer closes, errs, idles out or asks to close."""
    ex = _Exchange(stream)
    async with stream:
        try:
            await _request_loop(ex)
        except HTTPProtocolError as exc:
            if not ex.conn.response_started:
                body = f"bad request: {exc}\n".encode()
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await _send_simple(ex, exc.status_hint, body, close=True)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            return


async def _request_loop(ex: _Exchange) -> None:
    while True:
        event = await ex.next_event()
        if not isinstance(event, Request):
            return  # ConnectionClosed between requests
        await _dispatch(ex, event)
        if not ex.conn.reusable():
            return
        ex.conn.start_next_cycle()


async def _dispatch(ex: _Exchange, request: Request) -> None:
    target = request.target.decode("ascii", "replace").split("?", 1)[0]
    method = request.method
    if target == "/echo":
        await _echo(ex, request)
        return
    await ex.discard_body()
    if method not in (b"GET", b"HEAD"):
        await _send_simple(ex, 405, b"method not allowed\n", extra=[(b"allow", b"GET, HEAD")])
        return
    page = _PAGES.get(target)
    if page is not None:
        status, content_type, body = page(ex, request)
        await _send_simple(ex, status, body, content_type=content_type, head=method == b"HEAD")
    elif target.startswith("/bytes/") and target[7:].isdigit():
        await _send_bytes(ex, int(target[7:]), head=method == b"HEAD")
    else:
        await _send_simple(ex, 404, b"not found\n", head=method == b"HEAD")


def _decoded_headers(request: Request) -> list[tuple[str, str]]:
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers]


def _index_page(ex: _Exchange, request: Request) -> tuple[int, bytes, bytes]:
    try:
        peer = ex.stream.socket.getpeername()
    except OSError:  # the client has already gone
        peer = ("?", 0)
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>\n"
        for name, value in _decoded_headers(request)
    )
    target = html.escape(request.target.decode("latin-1"))
    page = (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        "<title>gateproxy demo upstream</title></head>\n<body>\n"
        "<h1>Hello from the gateproxy demo upstream</h1>\n"
        f"<p>{html.escape(request.method.decode('latin-1'))} {target} from "
        f"{html.escape(str(peer[0]))}:{peer[1]}</p>\n"
        f"<h2>Request headers</h2>\n<table>\n{rows}</table>\n</body></html>\n"
    )
    return 200, b"text/html; charset=utf-8", page.encode()


def _headers_json(ex: _Exchange, request: Request) -> tuple[int, bytes, bytes]:
    merged: dict[str, str] = {}
    for name, value in request.headers:  # names lowercased by the parser
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        merged[key] = f"{merged[key]}, {text}" if key in merged else text
    return 200, b"application/json", json.dumps(merged, indent=1).encode() + b"\n"


def _health(ex: _Exchange, request: Request) -> tuple[int, bytes, bytes]:
    return 200, b"text/plain", b"ok"


_PAGES: dict[str, Callable[[_Exchange, Request], tuple[int, bytes, bytes]]] = {
    "/": _index_page,
    "/headers": _headers_json,
    "/health": _health,
}


async def _send_simple(
    ex: _Exchange,
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"text/plain",
    head: bool = False,
    close: bool = False,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [_SERVER, (b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    headers += extra or []
    if close:
        headers.append((b"connection", b"close"))
    conn = ex.conn
    out = [conn.send_response(status, _reason(status), headers)]
    if body and not head:
        out.append(conn.send_data(body))
    out.append(conn.send_end())
    await ex.stream.send_all(b"".join(out))


async def _send_bytes(ex: _Exchange, size: int, *, head: bool) -> None:
    headers = [
        _SERVER,
        (b"content-type", b"application/octet-stream"),
        (b"content-length", b"%d" % size),
    ]
    conn = ex.conn
    out = conn.send_response(200, b"OK", headers)
    remaining = 0 if head else size
    while remaining > CHUNK_SIZE:
        await ex.stream.send_all(out + conn.send_data(_FILLER))
        out = b""
        remaining -= CHUNK_SIZE
    if remaining:
        out += conn.send_data(_FILLER[:remaining])
    await ex.stream.send_all(out + conn.send_end())


async def _echo(ex: _Exchange, request: Request) -> None:
    """Stream the request body back as it arrives, keeping the request's framing if known."""
    headers = [_SERVER, (b"content-type", b"application/octet-stream")]
    length: bytes | None = None
    for name, value in request.headers:
        if name == b"content-type":
            headers[1] = (b"content-type", value)
        elif name == b"content-length":
            length = value
    if request.method == b"HEAD":
        length = b"0"
    if length is not None:
        headers.append((b"content-length", length))
    pending = ex.continue_if_expected()
    pending.append(ex.conn.send_response(200, b"OK", headers))
    while True:
        event = await ex.next_event(pending)
        if isinstance(event, Data):
            pending.append(ex.conn.send_data(event.data))
        elif isinstance(event, EndOfMessage):
            pending.append(ex.conn.send_end())
            await ex.stream.send_all(b"".join(pending))
            return


def _reason(status: int) -> bytes:
    return REASONS.get(status, b"")
