"""The events and states of gateproxy's HTTP/1.1 parser pair (``core.h1_server``/``h1_client``).

They are shaped like h11's (same names, same meaning, lowercase header names) so the two
connection classes read like h11 to their users, but they are plain compiled-friendly classes:
the fast path builds them without h11's per-event validation, and the slow path converts h11's
own events into them (``core.h11_fallback``). A parse error of the peer's bytes is a
:class:`~gateproxy.errors.HTTPProtocolError` carrying the status to answer with.

States are small integers (h11's state names), checked by the connection classes at every entry.
"""

from __future__ import annotations

from typing import Final

Headers = list[tuple[bytes, bytes]]

# Connection states (h11's names).
IDLE: Final = 0
SEND_RESPONSE: Final = 1
SEND_BODY: Final = 2
DONE: Final = 3
MUST_CLOSE: Final = 4
CLOSED: Final = 5
ERROR: Final = 6
SWITCHED_PROTOCOL: Final = 7

STATE_NAMES: Final = (
    "IDLE",
    "SEND_RESPONSE",
    "SEND_BODY",
    "DONE",
    "MUST_CLOSE",
    "CLOSED",
    "ERROR",
    "SWITCHED_PROTOCOL",
)


class Event:
    """Base of every event."""

    __slots__ = ()


class Request(Event):
    """A request head: method, target, lowercase ``(name, value)`` headers, HTTP version."""

    __slots__ = ("headers", "http_version", "method", "target")

    def __init__(
        self, *, method: bytes, target: bytes, headers: Headers, http_version: bytes = b"1.1"
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version

    def __repr__(self) -> str:
        return f"Request({self.method!r} {self.target!r} HTTP/{self.http_version.decode()})"


class Response(Event):
    """A final response head (status 200-599)."""

    __slots__ = ("headers", "http_version", "reason", "status_code")

    def __init__(
        self,
        *,
        status_code: int,
        headers: Headers,
        reason: bytes = b"",
        http_version: bytes = b"1.1",
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self.reason = reason
        self.http_version = http_version

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status_code} {self.reason!r})"


class InformationalResponse(Response):
    """A 1xx response head (``100 Continue``, ``101 Switching Protocols``...)."""

    __slots__ = ()


class Data(Event):
    """A piece of a message body."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Data({len(self.data)} bytes)"


class EndOfMessage(Event):
    """The end of a message body (with the trailers of a chunked one, if any)."""

    __slots__ = ("headers",)

    def __init__(self, headers: Headers | None = None) -> None:
        self.headers: Headers = headers if headers is not None else []

    def __repr__(self) -> str:
        return "EndOfMessage()"


class ConnectionClosed(Event):
    """The peer closed its side cleanly between messages."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ConnectionClosed()"


class _Sentinel(Event):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: ``next_event()``: more bytes are needed before the next event.
NEED_DATA: Final = _Sentinel("NEED_DATA")
#: ``next_event()``: the peer's message is complete; nothing more until ``start_next_cycle``.
PAUSED: Final = _Sentinel("PAUSED")
#: Shared instance (events are never mutated): the hot path builds no EndOfMessage of its own.
END_OF_MESSAGE: Final = EndOfMessage()
CONNECTION_CLOSED: Final = ConnectionClosed()


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lowercase), or None."""
    for n, v in headers:
        if n == name:
            return v
    return None
