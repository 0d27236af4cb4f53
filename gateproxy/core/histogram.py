"""Latency histograms with fixed Prometheus buckets. Sans-IO.

Theory of operation. One :class:`Histogram` per (listener or upstream, measure) per worker
process. :meth:`Histogram.observe` is the hot path: a ``bisect`` into the one fixed bucket
list :data:`BOUNDS` and two additions, no allocation of its own. Counts are kept per bucket
(not cumulative) and turned into Prometheus's cumulative ``le`` counts only when someone asks
(:meth:`Histogram.tree`).

The tree form is ``{"buckets": {"0.001": n, ..., "+Inf": n}, "sum": s, "count": c}`` with
cumulative counts keyed by the bucket's upper bound as Prometheus spells it. Every worker uses
the same bounds, so ``core.metrics.merge_stats`` merges several workers' histograms correctly
with its ordinary rule (numbers summed per key): the sum of cumulative counts is the cumulative
count of the sum.
"""

from __future__ import annotations

from bisect import bisect_left

#: Upper bounds (seconds) of the latency buckets: Prometheus's defaults widened at both ends for
#: a proxy (a millisecond answer from a local upstream; a minute-long upload).
BOUNDS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: The ``le`` label of each bucket, in order, the last one ``+Inf``.
BUCKET_LABELS: tuple[str, ...] = (*(repr(b) for b in BOUNDS), "+Inf")


class Histogram:
    """Observations counted into :data:`BOUNDS` (``le`` is inclusive, as in Prometheus)."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (seconds)."""
        self.counts[bisect_left(BOUNDS, value)] += 1
        self.sum += value

    def tree(self) -> dict[str, object]:
        """The JSON-able form: cumulative counts per ``le``, ``sum`` and ``count``."""
        buckets: dict[str, int] = {}
        running = 0
        for label, count in zip(BUCKET_LABELS, self.counts, strict=True):
            running += count
            buckets[label] = running
        return {"buckets": buckets, "sum": self.sum, "count": running}
