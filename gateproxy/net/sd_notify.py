"""systemd's notify protocol (``Type=notify``), written straight to ``$NOTIFY_SOCKET``.

``READY=1`` once the listeners are bound and the workers accept; ``RELOADING=1`` with
``MONOTONIC_USEC`` (systemd >= 253 requires the time stamp, to tell this reload from an
earlier one) when a SIGHUP reload begins, then ``READY=1`` again whether it applied or was
refused; ``STOPPING=1`` when the drain begins; ``STATUS=`` says what happened, for
``systemctl status``. Without ``$NOTIFY_SOCKET`` (not under systemd) every call does nothing.
A socket name starting with ``@`` is in the abstract namespace (a leading NUL byte). A failed
send is ignored: telling systemd is never worth stopping the proxy.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


def notify(*fields: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one datagram; True if sent."""
    address = environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError:
        return False
    return True


def reloading_fields(*, status: str) -> tuple[str, ...]:
    """``RELOADING=1`` with the ``MONOTONIC_USEC`` time stamp systemd >= 253 expects."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return ("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")
