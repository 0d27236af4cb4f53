"""When to restart a worker that died: exponential back-off, reset after a stable run. Sans-IO.

A worker that crashes right after it starts (a bad certificate read at the wrong moment, a
resource limit) must not be restarted in a tight loop: the delay doubles from ``first`` up to
``cap`` for each quick death in a row, and goes back to ``first`` once a worker has run for
``stable_after`` seconds. One :class:`RestartPolicy` per worker slot; time is a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["RestartPolicy"]


@dataclass
class RestartPolicy:
    """Back-off for one worker slot: ``delay_after_exit(uptime=...)`` says how long to wait."""

    first: float = 0.5
    cap: float = 30.0
    stable_after: float = 30.0
    _quick_deaths: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap:
            raise ValueError(
                f"restart back-off: expected 0 < first <= cap, got first={self.first!r} "
                f"cap={self.cap!r}"
            )

    def delay_after_exit(self, *, uptime: float) -> float:
        """Seconds to wait before restarting a worker that ran ``uptime`` seconds and died."""
        if uptime >= self.stable_after:
            self._quick_deaths = 0
        delay = min(self.cap, self.first * 2.0 ** min(self._quick_deaths, 64))
        self._quick_deaths += 1
        return delay

    @property
    def quick_deaths(self) -> int:
        """Deaths in a row without a stable run in between."""
        return self._quick_deaths
