"""A circuit breaker for the shared session store. Sans-IO: every call takes ``now``.

States (one explicit enum):

``closed``     requests go out; ``failures`` consecutive failures (errors or timeouts) open it.
``open``       nothing goes out until ``cooldown`` seconds after it opened; then the next
               :meth:`Breaker.allow` moves it to ``half_open`` and lets that one request through.
``half_open``  the one trial request is out; no other goes. Its success closes the breaker, its
               failure opens it again for another ``cooldown``.

A success while closed resets the count of consecutive failures.
"""

from __future__ import annotations

import enum

__all__ = ["Breaker", "BreakerState"]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    """Opens after ``failures`` consecutive failures; a half-open trial after ``cooldown``."""

    __slots__ = ("_failed", "_opened_at", "cooldown", "failures", "opens", "state")

    def __init__(self, *, failures: int, cooldown: float) -> None:
        if failures < 1:
            raise ValueError(f"failures: expected an integer >= 1, got {failures!r}")
        if not cooldown > 0:
            raise ValueError(f"cooldown: expected seconds > 0, got {cooldown!r}")
        self.failures = failures
        self.cooldown = float(cooldown)
        self.state = BreakerState.CLOSED
        self.opens = 0  # times it opened (from closed or from a failed trial)
        self._failed = 0
        self._opened_at = 0.0

    def allow(self, *, now: float) -> bool:
        """May a request go to the store now? (In ``open`` past the cool-down: the trial.)"""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now >= self._opened_at + self.cooldown:
            self.state = BreakerState.HALF_OPEN
            return True
        return False

    def success(self) -> None:
        """A request answered in time."""
        self.state = BreakerState.CLOSED
        self._failed = 0

    def failure(self, *, now: float) -> None:
        """A request failed or timed out."""
        if self.state is BreakerState.HALF_OPEN:
            self._open(now)
            return
        if self.state is BreakerState.CLOSED:
            self._failed += 1
            if self._failed >= self.failures:
                self._open(now)

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = now
        self._failed = 0
        self.opens += 1
