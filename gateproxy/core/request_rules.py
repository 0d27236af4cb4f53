"""Requests gateproxy refuses to forward even though h11 parsed them (smuggling, odd forms).

``reject_reason(request)`` runs on every request before anything is sent upstream and returns
``(status, rule)`` for a request that must be answered locally, or None to forward it.
"""

from __future__ import annotations

from h11 import Request


def reject_reason(request: Request) -> tuple[int, str] | None:
    """The status and rule name for a request that must not be forwarded, or None."""
    del request
    return None
