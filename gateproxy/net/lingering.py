"""Executing a lingering close (``core.lingering`` decides whether and within which bounds).

After the last response: shut the write direction (TLS close_notify, then a TCP FIN), then read
and drop raw socket bytes (TLS records are never decrypted) until the client closes or a bound
of the :class:`~gateproxy.core.lingering.Linger` is reached; a drain cancels it as it cancels
idle keep-alive waits. The caller closes the stream after.
"""

from __future__ import annotations

import trio

from gateproxy.core.lingering import Linger
from gateproxy.net.plain_stream import PlainStream
from gateproxy.net.runtime import ListenerRuntime
from gateproxy.net.tls_stream import ServerTLSStream

READ_SIZE = 64 * 1024


async def linger_counted(
    stream: PlainStream | ServerTLSStream, plan: Linger, *, listener: ListenerRuntime
) -> None:
    """Linger within ``plan`` (the machine's decision), cut short by a drain, and count how it
    ended; the caller closes the stream after."""
    shared = listener.shared
    ending = "draining"
    try:
        with trio.CancelScope() as cut:
            shared.idle_scopes.add(cut)  # a drain cancels it, as it does idle waits
            try:
                ending = await linger(stream, plan)
            finally:
                shared.idle_scopes.discard(cut)
    finally:
        listener.counters.lingered(ending)


Lingerable = PlainStream | ServerTLSStream | trio.abc.HalfCloseableStream


async def linger(stream: Lingerable, plan: Linger) -> str:
    """Half-close ``stream`` and discard what still arrives within ``plan``'s bounds; returns how
    that ended (a ``core.lingering.LINGER_ENDINGS`` name)."""
    with trio.CancelScope(deadline=trio.current_time() + plan.time):
        try:
            return await _half_close_and_discard(stream, plan)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return "reset"
    return "lingering_time"


async def _half_close_and_discard(stream: Lingerable, plan: Linger) -> str:
    if isinstance(stream, ServerTLSStream):
        await stream.send_close_notify()
    transport = (
        stream.transport_stream if isinstance(stream, PlainStream | ServerTLSStream) else stream
    )
    await transport.send_eof()
    discarded = 0
    while discarded < plan.max_bytes:
        with trio.move_on_after(plan.timeout) as wait:
            data = await transport.receive_some(min(READ_SIZE, plan.max_bytes - discarded))
        if wait.cancelled_caught:
            return "lingering_timeout"
        if not data:
            return "eof"
        discarded += len(data)
    return "lingering_max_bytes"
