"""Lingering close (nginx ``lingering_close``): whether to read and discard what a client still
sends after the last response of its connection, and for how long. Sans-IO.

Why. Closing a socket whose receive queue holds unread bytes makes the kernel send a TCP RST
instead of a FIN, and a client that receives the RST may never see the response that preceded
it (its kernel drops what it has not read yet, or its next write fails and it gives up). That is
the usual fate of an early answer: a ``413`` to a ``Content-Length: 2097152`` upload whose body
is still arriving, a ``408``, ``400`` or ``431`` cut in mid-request, an upstream's early answer.

What the shell does with a :class:`Linger`: after the response, shut the write direction (TLS
close_notify, then a TCP FIN), read and discard raw bytes until the client closes, at most
``timeout`` seconds between two reads, ``time`` seconds in all and ``max_bytes`` bytes, then
close. The connection stays counted (``connections.open``, per-client admission) until then, and
a drain cuts it short. :data:`LINGER_ENDINGS` names how a lingering close ended.

Modes (``limits.lingering_close``, as nginx):

* ``off``: never linger;
* ``on`` (default): linger when the client may still be sending: the request was not read to its
  end, or bytes after it were received and not read;
* ``always``: linger after every last response, even when the request was read whole.

Never when no response was sent (a silent client, an idle keep-alive close, a cut response:
nothing to protect), nor while draining (the drain closes connections at once).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateproxy.core.config import LimitsConfig

#: How a lingering close ended: the client closed (``eof``: the good case), it went quiet for
#: ``lingering_timeout``, it was still sending after ``lingering_time`` or ``lingering_max_bytes``,
#: a drain cut it short, or the connection broke (``reset``: usually a client that read the
#: response and closed its socket without reading our TLS close_notify, which makes its kernel
#: send an RST; harmless).
LINGER_ENDINGS = (
    "eof",
    "lingering_timeout",
    "lingering_time",
    "lingering_max_bytes",
    "draining",
    "reset",
)


@dataclass(frozen=True, slots=True)
class Linger:
    """Half-close, then read and discard for at most ``time`` seconds in all, ``timeout``
    seconds between two reads and ``max_bytes`` bytes; then close."""

    time: float
    timeout: float
    max_bytes: int


def lingering_close(
    *, status: int, request_unread: bool, draining: bool, limits: LimitsConfig
) -> Linger | None:
    """Linger (how long) or close at once, when a connection closes.

    ``status``: the last response sent on the connection (0: none, or it was cut short).
    ``request_unread``: the client may still be sending (see the module docstring, ``on``).
    """
    mode = limits.lingering_close
    if mode == "off" or status == 0 or draining:
        return None
    if mode == "on" and not request_unread:
        return None
    return Linger(
        time=limits.lingering_time,
        timeout=min(limits.lingering_timeout, limits.lingering_time),
        max_bytes=limits.lingering_max_bytes,
    )
