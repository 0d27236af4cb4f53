"""core.lingering: when to read and discard after the last response, and within which bounds."""

from __future__ import annotations

import pytest

from gateproxy.core.config import LimitsConfig
from gateproxy.core.lingering import Linger, lingering_close

SHORT = LimitsConfig(lingering_time=2.0, lingering_timeout=0.5, lingering_max_bytes=1000)


@pytest.mark.parametrize(
    ("mode", "status", "unread", "draining", "lingers"),
    [
        # on (default): only when the client may still be sending
        ("on", 413, True, False, True),  # Content-Length too large, body still coming
        ("on", 408, True, False, True),  # body_timeout
        ("on", 400, True, False, True),  # a bad chunk
        ("on", 431, True, False, True),  # a head too large
        ("on", 200, True, False, True),  # an upstream that answered before the upload ended
        ("on", 200, False, False, False),  # Connection: close, the request read whole
        ("on", 404, False, False, False),  # a small body read and dropped before the 404
        ("on", 0, True, False, False),  # no response (a silent client, a cut response)
        ("on", 413, True, True, False),  # draining: connections close at once
        # off: never
        ("off", 413, True, False, False),
        # always: after every last response, even a request read whole
        ("always", 200, False, False, True),
        ("always", 0, False, False, False),  # ... but not an idle keep-alive close
        ("always", 413, True, True, False),
    ],
)
def test_when_to_linger(
    mode: str, status: int, unread: bool, draining: bool, lingers: bool
) -> None:
    limits = SHORT.model_copy(update={"lingering_close": mode})
    plan = lingering_close(status=status, request_unread=unread, draining=draining, limits=limits)
    assert (plan is not None) == lingers
    if plan is not None:
        assert plan == Linger(time=2.0, timeout=0.5, max_bytes=1000)


def test_the_wait_between_reads_never_exceeds_the_whole() -> None:
    limits = LimitsConfig(lingering_time=1.0, lingering_timeout=5.0)
    plan = lingering_close(status=413, request_unread=True, draining=False, limits=limits)
    assert plan == Linger(time=1.0, timeout=1.0, max_bytes=limits.lingering_max_bytes)


def test_nginx_defaults_and_a_byte_cap() -> None:
    limits = LimitsConfig()
    assert (limits.lingering_close, limits.lingering_time, limits.lingering_timeout) == (
        "on",
        30.0,
        5.0,
    )
    assert limits.lingering_max_bytes == 16 * 1024 * 1024
