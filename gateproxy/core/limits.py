"""Per-listener admission and per-connection budgets, decided before anything goes upstream.

Two small pieces of state, both pure (the clock is a parameter):

* :class:`Admission` counts open connections per listener and per client address and answers
  :class:`Admitted` or :class:`Rejected` *at accept time*, before any TLS work is spent.
* :class:`ConnectionBudget` belongs to one client connection: it counts requests and knows the
  connection's age, and after each response says whether keep-alive may continue or which limit
  closes the connection.

Two more decide what is worth a log line when limits are enforced: :class:`RejectionLog` (one
line per client and reason per interval) and :class:`StormDetector` (one ``limit_storm`` line per
window when a listener enforces limits unusually often, whoever the clients are).

Limit names used in stats (``listeners.<name>.limits.<limit>``) are the config key names.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import ClassVar

from gateproxy.core.config import LimitsConfig


@dataclass(frozen=True, slots=True)
class Admitted:
    """The connection may proceed to its TLS handshake."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """The connection is closed at once; ``reason`` is the limit's config name."""

    reason: str


ADMITTED = Admitted()


class Admission:
    """Open-connection counts for one listener, overall and per client address."""

    def __init__(self, *, max_connections: int, max_per_client: int) -> None:
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.open = 0
        self._per_client: dict[str, int] = {}

    def admit(self, client: str, *, max_per_client: int | None = None) -> Admitted | Rejected:
        """Count the connection in if it fits; ``max_per_client`` overrides (probe limits)."""
        if self.open >= self.max_connections:
            return Rejected("max_connections")
        held = self._per_client.get(client, 0)
        cap = self.max_per_client if max_per_client is None else max_per_client
        if held >= cap:
            return Rejected("max_connections_per_client")
        self.open += 1
        self._per_client[client] = held + 1
        return ADMITTED

    def release(self, client: str) -> None:
        """Count a previously admitted connection out."""
        self.open -= 1
        held = self._per_client.get(client, 0) - 1
        if held > 0:
            self._per_client[client] = held
        else:
            self._per_client.pop(client, None)

    def held_by(self, client: str) -> int:
        return self._per_client.get(client, 0)

    @property
    def clients(self) -> int:
        return len(self._per_client)


class ConnectionBudget:
    """Requests served and age of one client connection against its limits."""

    __slots__ = ("limits", "opened_at", "requests")

    def __init__(self, *, limits: LimitsConfig, opened_at: float) -> None:
        self.limits = limits
        self.opened_at = opened_at
        self.requests = 0

    def start_request(self) -> None:
        self.requests += 1

    def close_reason(self, *, now: float) -> str | None:
        """After the current response: the limit that ends keep-alive, or None to keep going."""
        cap = self.limits.max_requests_per_connection
        if cap and self.requests >= cap:
            return "max_requests_per_connection"
        age = self.limits.max_connection_age
        if age and now - self.opened_at >= age:
            return "max_connection_age"
        return None


#: Limits that end a healthy connection's life (idle, request count, age): not rejections, so
#: neither logged one by one nor counted towards a storm.
LIFECYCLE_LIMITS = frozenset(
    {"keepalive_timeout", "max_requests_per_connection", "max_connection_age"}
)


class RejectionLog:
    """Which rejections to log: the first per (client, reason) in each ``interval``; the others
    are only counted and reported with the next line, so a flood gives one line per interval.

    The table is bounded (LRU over ``max_keys``): a flood from many addresses cannot grow it.
    Connection lifecycle limits (idle, request count, age) are not rejections and never logged.
    """

    QUIET: ClassVar[frozenset[str]] = LIFECYCLE_LIMITS

    def __init__(self, *, interval: float = 10.0, max_keys: int = 10000) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._seen: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    def note(self, client: str, reason: str, *, now: float) -> int | None:
        """None: stay quiet. A number: log a line now, with that many events suppressed since
        the last line for this client and reason."""
        if reason in self.QUIET:
            return None
        key = (client, reason)
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            self._seen.move_to_end(key)
            return None
        suppressed = int(entry[1]) if entry is not None else 0
        self._seen[key] = [now, 0]
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        return suppressed

    def __len__(self) -> int:
        return len(self._seen)


@dataclass(frozen=True, slots=True)
class StormReport:
    """``count`` enforcements within ``window`` seconds, the first at ``started_at``."""

    count: int
    window: float
    started_at: float
    by_reason: dict[str, int]  # most frequent first


class StormDetector:
    """Spots a *limit storm*: ``threshold`` or more enforcements within any ``window`` seconds.

    A sliding window over the last ``threshold`` enforcements (so a storm straddling a window
    boundary is still seen): when the oldest of them is less than ``window`` old, :meth:`note`
    returns one :class:`StormReport`, then stays quiet for ``window`` seconds. A storm that goes
    on is therefore reported once per window. Memory is ``threshold`` entries whatever the rate.
    Reasons in ``ignore`` (the connection lifecycle limits by default) are not counted.
    """

    def __init__(
        self,
        *,
        threshold: int = 100,
        window: float = 10.0,
        ignore: frozenset[str] = LIFECYCLE_LIMITS,
    ) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {threshold}")
        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, got {window}")
        self.threshold = threshold
        self.window = window
        self.ignore = ignore
        self._recent: deque[tuple[float, str]] = deque(maxlen=threshold)
        self._quiet_until = float("-inf")

    def note(self, reason: str, *, now: float) -> StormReport | None:
        """Count one enforcement of ``reason``; a report when this one makes a storm."""
        if reason in self.ignore:
            return None
        self._recent.append((now, reason))
        if now < self._quiet_until or len(self._recent) < self.threshold:
            return None
        started_at = self._recent[0][0]
        if now - started_at >= self.window:
            return None
        self._quiet_until = now + self.window
        by_reason = Counter(reason for _, reason in self._recent)
        return StormReport(
            count=len(self._recent),
            window=self.window,
            started_at=started_at,
            by_reason=dict(by_reason.most_common()),
        )

    def __len__(self) -> int:
        return len(self._recent)
