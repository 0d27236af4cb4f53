"""Request rates per client address: nginx's ``limit_req ... burst=N nodelay``. Sans-IO.

Each client address has a token bucket that holds ``burst + 1`` requests and refills at
``rate`` per second; a request takes one token, and a request that finds none is refused at
once (no queueing: nginx's ``nodelay``). So a client that was quiet may send ``burst + 1``
requests at once, then ``rate`` per second — the numbers nginx gives for the same settings. A
refused request takes nothing, so a client over the limit gets requests through again as soon
as it slows to the rate.

A bucket is stored as one number, the time at which it will be full again (the "theoretical
arrival time" of the generic cell rate algorithm, which is this bucket): a bucket that is full
carries no state and is the same as no bucket at all.

The table of buckets is bounded: at most ``max_clients`` addresses, least recently used first
out. A spray of new addresses therefore cannot grow memory; it can only push other buckets out,
which gives those clients a full bucket again. ``evictions`` counts the buckets pushed out
while they still held state (a limit forgotten: the table is too small for the traffic); full
buckets leave uncounted, as they lose nothing.

:class:`RateLimits` is one listener's pair: the clients' table, and for ``probe_clients`` either
a table of their own (their own ``rate`` and ``burst``) or none (not limited). Health-check
requests are never asked about (the connection machine answers them before it asks). The
clock is a parameter (``now``, seconds, any epoch that only moves forward).
"""

from __future__ import annotations

from collections import OrderedDict

from gateproxy.core.config_rate_limit import RateLimitConfig
from gateproxy.core.metrics import ListenerCounters


class RateLimiter:
    """Token buckets for many addresses at one ``rate`` and ``burst``, at most ``max_clients``."""

    __slots__ = ("_full_at", "evictions", "interval", "max_clients", "span")

    def __init__(self, *, rate: float, burst: int, max_clients: int) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be above 0 requests per second, got {rate!r}")
        if burst < 0 or max_clients < 1:
            raise ValueError(f"need burst >= 0 and max_clients >= 1, got {burst}, {max_clients}")
        self.interval = 1.0 / rate  # the time one token takes to come back
        self.span = (burst + 1) * self.interval  # an empty bucket's time to full
        self.max_clients = max_clients
        self.evictions = 0
        self._full_at: OrderedDict[str, float] = OrderedDict()

    def allow(self, client: str, *, now: float) -> bool:
        """Take a token from ``client``'s bucket; False (nothing taken) when it is empty."""
        table = self._full_at
        full_at = table.get(client)
        if full_at is None:
            self._make_room(now)
            table[client] = now + self.interval
            return True
        table.move_to_end(client)
        after = max(full_at, now) + self.interval
        if after - now > self.span:
            return False
        table[client] = after
        return True

    def _make_room(self, now: float) -> None:
        table = self._full_at
        while len(table) >= self.max_clients:
            _, full_at = table.popitem(last=False)
            if full_at > now:
                self.evictions += 1

    def __len__(self) -> int:
        return len(self._full_at)


class RateLimits:
    """One listener's rate limits: clients, and probe clients apart (or not limited)."""

    __slots__ = ("clients", "counters", "probes", "status")

    def __init__(self, config: RateLimitConfig, *, counters: ListenerCounters) -> None:
        self.status = config.status
        self.counters = counters
        self.clients = RateLimiter(
            rate=config.rate, burst=config.burst, max_clients=config.max_clients
        )
        probes = config.probes
        self.probes = (
            None
            if probes is None
            else RateLimiter(rate=probes.rate, burst=probes.burst, max_clients=config.max_clients)
        )
        self._count_buckets()  # a new generation starts with empty tables

    def allow(self, client: str, *, probe: bool, now: float) -> bool:
        """Whether this request of ``client`` (a probe client or not) may go on."""
        limiter = self.probes if probe else self.clients
        if limiter is None:
            return True
        size, evictions = len(limiter), limiter.evictions
        allowed = limiter.allow(client, now=now)
        if len(limiter) != size or limiter.evictions != evictions:  # a new bucket (rare)
            self.counters.rate_limit_evictions += limiter.evictions - evictions
            self._count_buckets()
        return allowed

    def _count_buckets(self) -> None:
        probes = self.probes
        self.counters.rate_limit_buckets = len(self.clients) + (len(probes) if probes else 0)
