"""The ``Date`` header value of every response (``core.headers.http_date`` of the wall clock),
formatted once a second instead of once per response."""

from __future__ import annotations

import time

from gateproxy.core.headers import http_date


class _DateCache:
    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def now(self) -> bytes:
        second = int(time.time())  # the wall clock: Date is calendar time
        if second != self.second:
            self.second, self.value = second, http_date(second)
        return self.value


#: ``date_now()``: the IMF-fixdate of the current second, as bytes.
date_now = _DateCache().now
