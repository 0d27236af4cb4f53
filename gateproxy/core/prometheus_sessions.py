"""The Prometheus families of the shared session cache (``tls.session_cache.shared``). Sans-IO.

``core.prometheus`` renders them for a listener whose stats tree has
``tls.session_cache.shared`` (``net.shared_sessions``); a listener without it has none.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["SHARED_SESSION_FAMILIES", "shared_session_samples"]

SHARED_SESSION_FAMILIES: dict[str, tuple[str, str]] = {
    "tls_shared_sessions_lookups_total": ("counter", "Session lookups sent to the fleet store."),
    "tls_shared_sessions_hits_total": ("counter", "Store lookups that brought a session back."),
    "tls_shared_sessions_misses_total": ("counter", "Store lookups for a session it did not hold."),
    "tls_shared_sessions_timeouts_total": (
        "counter",
        "Store lookups unanswered within shared_timeout (a miss).",
    ),
    "tls_shared_sessions_errors_total": ("counter", "Store lookups that failed (a miss)."),
    "tls_shared_sessions_forged_total": (
        "counter",
        "Offered session ids without gateproxy's MAC: never looked up.",
    ),
    "tls_shared_sessions_skipped_total": ("counter", "Hellos that needed no lookup, by reason."),
    "tls_shared_sessions_writes_total": ("counter", "Sessions written to the fleet store."),
    "tls_shared_sessions_write_errors_total": ("counter", "Session writes that failed."),
    "tls_shared_sessions_writes_skipped_probe_total": (
        "counter",
        "New sessions of probers (health-only connections), never written.",
    ),
    "tls_shared_sessions_writes_dropped_total": (
        "counter",
        "Session writes dropped: breaker open or write queue full.",
    ),
    "tls_shared_sessions_breaker_open": (
        "gauge",
        "Workers whose store circuit breaker is open (no lookups).",
    ),
    "tls_shared_sessions_breaker_opens_total": ("counter", "Times the store breaker opened."),
}

_COUNTERS = (
    "lookups",
    "hits",
    "misses",
    "timeouts",
    "errors",
    "forged",
    "writes",
    "write_errors",
    "writes_skipped_probe",
    "writes_dropped",
    "breaker_opens",
)

Sample = tuple[str, tuple[tuple[str, str], ...], object]


def shared_session_samples(shared: object) -> list[Sample]:
    """(family, extra labels, value) of one listener's ``tls.session_cache.shared`` tree."""
    if not isinstance(shared, Mapping):
        return []
    samples: list[Sample] = [
        (f"tls_shared_sessions_{name}_total", (), shared.get(name)) for name in _COUNTERS
    ]
    by_reason = shared.get("skipped_by_reason")
    if isinstance(by_reason, Mapping):
        samples += [
            ("tls_shared_sessions_skipped_total", (("reason", str(reason)),), value)
            for reason, value in sorted(by_reason.items())
        ]
    samples.append(("tls_shared_sessions_breaker_open", (), shared.get("breaker_open")))
    return samples
