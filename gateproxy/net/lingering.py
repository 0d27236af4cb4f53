"""Executing a lingering close (``core.lingering`` decides whether and within which bounds).

After the last response: shut the write direction (TLS close_notify, then a TCP FIN), then read
and drop raw socket bytes (TLS records are never decrypted) until the client closes or a bound
of the :class:`~gateproxy.core.lingering.Linger` is reached; a drain cancels it as it cancels
idle keep-alive waits. The caller closes the stream after.
"""

from __future__ import annotations

import trio

from gateproxy.core.config import LimitsConfig
from gateproxy.core.lingering import Linger, lingering_close
from gateproxy.net.clientio import ClientSide
from gateproxy.net.runtime import ListenerRuntime
from gateproxy.net.tls_stream import ServerTLSStream

READ_SIZE = 64 * 1024


async def linger_after_last_response(
    client: ClientSide, *, limits: LimitsConfig, listener: ListenerRuntime
) -> None:
    """Linger if ``core.lingering`` says so (a client that gets an RST instead of a FIN may
    never see the response before it), counting how it ended."""
    shared = listener.shared
    plan = lingering_close(
        status=0 if client.aborted else client.response_status,
        request_unread=client.request_unread,
        draining=shared.draining,
        limits=limits,
    )
    if plan is None:
        return
    ending = "draining"
    try:
        with trio.CancelScope() as cut:
            shared.idle_scopes.add(cut)  # a drain cancels it, as it does idle waits
            try:
                ending = await linger(client.stream, plan)
            finally:
                shared.idle_scopes.discard(cut)
    finally:
        listener.counters.lingered(ending)


async def linger(stream: trio.abc.Stream, plan: Linger) -> str:
    """Half-close ``stream`` and discard what still arrives within ``plan``'s bounds; returns how
    that ended (a ``core.lingering.LINGER_ENDINGS`` name)."""
    with trio.CancelScope(deadline=trio.current_time() + plan.time):
        try:
            return await _half_close_and_discard(stream, plan)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return "reset"
    return "lingering_time"


async def _half_close_and_discard(stream: trio.abc.Stream, plan: Linger) -> str:
    if isinstance(stream, ServerTLSStream):
        await stream.send_close_notify()
        transport: trio.abc.HalfCloseableStream = stream.transport_stream
    else:
        assert isinstance(stream, trio.abc.HalfCloseableStream)
        transport = stream
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
