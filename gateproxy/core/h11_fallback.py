"""The slow path of the parser pair: h11 parses what the fast parsers refuse to decide.

h11 is the reference parser: whatever ``core.h1_heads`` calls unusual is handed to an h11
connection together with the exact bytes, and h11's events are converted into gateproxy's own
(``core.http_events``). Only parsing goes through h11; gateproxy writes every message itself
(``core.h1_heads`` writers, identical bytes), so an h11 connection here only ever *receives*.
On the client side it is first told about the request that was sent (h11 needs the method to
frame the response), with the written bytes thrown away.
"""

from __future__ import annotations

from typing import Any

import h11

from gateproxy.core.http_events import (
    CONNECTION_CLOSED,
    END_OF_MESSAGE,
    NEED_DATA,
    PAUSED,
    Data,
    EndOfMessage,
    Event,
    Headers,
    InformationalResponse,
    Request,
    Response,
)
from gateproxy.errors import HTTPProtocolError


def server_parser(*, max_header_bytes: int) -> h11.Connection:
    """An h11 connection that parses requests."""
    return h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)


def client_parser(request: Request, *, max_header_bytes: int) -> h11.Connection:
    """An h11 connection that parses the response to ``request`` (already sent by us)."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_bytes)
    try:
        conn.send(
            h11.Request(
                method=request.method,
                target=request.target,
                headers=_framing_only(request.headers),
            )
        )
    except h11.LocalProtocolError as exc:
        raise HTTPProtocolError(f"cannot parse a response to this request: {exc}") from exc
    return conn


def _framing_only(headers: Headers) -> list[tuple[bytes, bytes]]:
    # h11 needs Host and the request's own framing to track the exchange (and Upgrade, so a
    # 101 answers a proposal: core.upgrade); nothing else of it.
    keep = (b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade")
    out = [(n, v) for n, v in headers if n in keep]
    if not any(n == b"host" for n, _ in out):
        out.append((b"host", b"upstream"))
    return out


def next_event(conn: h11.Connection) -> Event:
    """h11's next event as one of ours; h11's RemoteProtocolError as HTTPProtocolError."""
    try:
        event: Any = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise HTTPProtocolError(str(exc), status_hint=exc.error_status_hint) from exc
    return convert(event)


def convert(event: Any) -> Event:
    """One h11 event (or sentinel) as gateproxy's."""
    kind = type(event)
    if kind is h11.Data:
        return Data(bytes(event.data))
    if event is h11.NEED_DATA:
        return NEED_DATA
    if kind is h11.EndOfMessage:
        trailers = list(event.headers)
        return EndOfMessage(trailers) if trailers else END_OF_MESSAGE
    if kind is h11.Request:
        return Request(
            method=bytes(event.method),
            target=bytes(event.target),
            headers=list(event.headers),
            http_version=bytes(event.http_version),
        )
    if kind is h11.Response or kind is h11.InformationalResponse:
        cls = Response if kind is h11.Response else InformationalResponse
        return cls(
            status_code=int(event.status_code),
            headers=list(event.headers),
            reason=bytes(event.reason),
            http_version=bytes(event.http_version),
        )
    if event is h11.PAUSED:
        return PAUSED
    if kind is h11.ConnectionClosed:
        return CONNECTION_CLOSED
    raise HTTPProtocolError(f"unexpected h11 event {event!r}")


def receive(conn: h11.Connection, data: bytes) -> None:
    """Feed bytes (``b""`` = EOF) to h11; a late error surfaces from ``next_event``."""
    try:
        conn.receive_data(data)
    except h11.RemoteProtocolError as exc:
        raise HTTPProtocolError(str(exc), status_hint=exc.error_status_hint) from exc
