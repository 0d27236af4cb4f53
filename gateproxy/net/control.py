"""The supervisor <-> worker control channel: one JSON object per line over a socketpair.

Messages are small dicts with an ``op`` key (see ``gateproxy.worker`` for the list). Each side
owns one :class:`ControlChannel`; sends are serialised by a lock so two tasks never interleave
their lines, and ``receive`` returns ``None`` at end of stream (the other process is gone).
A line longer than ``MAX_LINE`` is a protocol error (``ControlError``) rather than a buffer
without bound; the caller then closes the channel.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import trio

from gateproxy.errors import GateproxyError

MAX_LINE = 64 * 1024 * 1024
RECEIVE_SIZE = 256 * 1024

Message = dict[str, Any]


class ControlError(GateproxyError):
    """The control channel carried something that is not a JSON object line."""


class ControlChannel:
    """Line-delimited JSON over a connected stream socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._send_lock = trio.Lock()

    @classmethod
    def from_socket(cls, sock: socket.socket) -> ControlChannel:
        """Wrap a connected stdlib socket (one end of a socketpair, or an inherited fd)."""
        sock.setblocking(False)
        return cls(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))

    async def send(self, message: Message) -> None:
        """Send one message; raises ``trio.BrokenResourceError`` if the peer is gone."""
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        async with self._send_lock:
            await self._stream.send_all(line)

    async def receive(self) -> Message | None:
        """The next message, or None once the peer closed its end."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return _decode(line)
            if len(self._buffer) > MAX_LINE:
                raise ControlError(f"control line longer than {MAX_LINE} bytes")
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            self._buffer += data

    async def aclose(self) -> None:
        await self._stream.aclose()


def _decode(line: bytes) -> Message:
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise ControlError(f"control line is not JSON: {line[:80]!r}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ControlError(f"control message without an 'op': {line[:80]!r}")
    return message
