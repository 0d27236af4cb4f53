"""One HTTP/1.1 request and its whole (bounded) response, over any byte stream.

For gateproxy's own requests — active health checks (``net.probes``) and pass-through health
answers (``net.health_pass``) — which need the status, the headers and at most a few KiB of
body. The protocol is the parser pair's client half (``core.h1_client.ClientConnection``), the
same code the request path uses; the transport is anything with ``send_all`` /
``receive_some`` (a trio stream, or an ``UpstreamConnection`` from the pool). Transport errors
come out as ``UpstreamConnectError``, bad bytes as ``UpstreamProtocolError``; the caller's
cancel scope bounds the whole exchange.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio

from gateproxy.core.h1_client import ClientConnection
from gateproxy.core.http_events import NEED_DATA, Data, EndOfMessage, Headers, Response
from gateproxy.errors import HTTPProtocolError, UpstreamConnectError, UpstreamProtocolError

RECEIVE_SIZE = 16 * 1024


class Transport(Protocol):
    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...
    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...


@dataclass(frozen=True, slots=True)
class Reply:
    """A response: status, headers, the body (at most ``max_body`` bytes) and whether the
    connection may carry another request (False also when the body was cut short)."""

    status: int
    headers: Headers
    body: bytes
    reusable: bool


async def fetch(
    transport: Transport,
    http: ClientConnection,
    *,
    method: bytes,
    target: bytes,
    headers: Headers,
    max_body: int,
) -> Reply:
    """Send a body-less request and read its response (see the module docstring)."""
    server = http.server
    try:
        await transport.send_all(http.send_request(method, target, headers) + http.send_end())
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise UpstreamConnectError(server, f"send failed: {exc}") from exc
    response: Response | None = None
    body = bytearray()
    try:
        while True:
            event = http.next_event()
            if event is NEED_DATA:
                http.receive_data(await _receive(transport, server))
            elif type(event) is Response:
                assert isinstance(event, Response)
                response = event
            elif type(event) is Data and response is not None:
                assert isinstance(event, Data)
                body += event.data
                if len(body) > max_body:
                    return Reply(response.status_code, response.headers, bytes(body), False)
            elif isinstance(event, EndOfMessage) and response is not None:
                reusable = http.reusable()
                if reusable:
                    http.start_next_cycle()
                return Reply(response.status_code, response.headers, bytes(body), reusable)
            elif not isinstance(event, Response):  # (a 1xx: wait for the final response)
                raise UpstreamProtocolError(server, f"unexpected {event!r}")
    except HTTPProtocolError as exc:
        raise UpstreamProtocolError(server, f"invalid response: {exc}") from exc


async def _receive(transport: Transport, server: str) -> bytes:
    try:
        return bytes(await transport.receive_some(RECEIVE_SIZE))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise UpstreamConnectError(server, f"connection reset: {exc}") from exc
