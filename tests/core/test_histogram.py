"""Latency histograms: buckets, the stats tree, merging workers, and the Prometheus exposition
read back with prometheus_client's parser."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateproxy.core.histogram import BOUNDS, BUCKET_LABELS, Histogram
from gateproxy.core.metrics import Metrics, build_stats, merge_stats
from gateproxy.core.prometheus import render_prometheus


@pytest.mark.parametrize(
    ("value", "first_le"),
    [
        (0.0, "0.001"),
        (0.001, "0.001"),
        (0.0011, "0.0025"),
        (1.0, "1.0"),
        (60.0, "60.0"),
        (60.5, "+Inf"),
        (math.inf, "+Inf"),
    ],
)
def test_le_is_inclusive_and_counts_are_cumulative(value: float, first_le: str) -> None:
    histogram = Histogram()
    histogram.observe(value)
    tree = histogram.tree()
    buckets = tree["buckets"]
    assert isinstance(buckets, dict) and list(buckets) == list(BUCKET_LABELS)
    first = BUCKET_LABELS.index(first_le)
    assert [buckets[le] for le in BUCKET_LABELS] == [0] * first + [1] * (len(BUCKET_LABELS) - first)
    assert tree["count"] == 1


def test_bounds_are_sorted_and_labels_parse_back() -> None:
    assert list(BOUNDS) == sorted(BOUNDS) and len(set(BOUNDS)) == len(BOUNDS)
    assert [float(le) for le in BUCKET_LABELS] == [*BOUNDS, math.inf]


def _worker(durations: list[float], first_bytes: list[float]) -> dict[str, object]:
    metrics = Metrics()
    listener, upstream = metrics.listener("public"), metrics.upstream("app")
    for value in durations:
        listener.request_seconds.observe(value)
        upstream.request_seconds.observe(value)
    for value in first_bytes:
        listener.first_byte_seconds.observe(value)
        upstream.first_byte_seconds.observe(value)
    return build_stats(metrics=metrics, tls={}, upstream_servers={}, guard_tables=None, process={})


A = ([0.003, 0.2, 7.0], [0.002, 0.1])
B = ([0.0004, 0.2, 0.2, 100.0], [0.05])


def test_merging_workers_is_the_histogram_of_all_their_observations() -> None:
    merged = merge_stats([_worker(*A), _worker(*B)])
    alone = _worker(A[0] + B[0], A[1] + B[1])
    for section, name in (("listeners", "public"), ("upstreams", "app")):
        got = merged[section][name]["latency"]  # type: ignore[index]
        want = alone[section][name]["latency"]  # type: ignore[index]
        for histogram in ("request_seconds", "first_byte_seconds"):
            assert got[histogram]["buckets"] == want[histogram]["buckets"]
            assert got[histogram]["count"] == want[histogram]["count"]
            assert got[histogram]["sum"] == pytest.approx(want[histogram]["sum"])


def test_two_workers_histograms_pass_the_prometheus_parser_with_the_right_counts() -> None:
    text = render_prometheus(merge_stats([_worker(*A), _worker(*B)]))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, label in (
        ("gateproxy_request_duration_seconds", ("listener", "public")),
        ("gateproxy_upstream_request_duration_seconds", ("upstream", "app")),
    ):
        family = families[name]
        assert family.type == "histogram"
        samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
        assert all(s.labels[label[0]] == label[1] for s in family.samples)
        assert samples[(name + "_count", None)] == 7
        assert samples[(name + "_bucket", "+Inf")] == 7
        assert samples[(name + "_bucket", "0.001")] == 1
        assert samples[(name + "_bucket", "0.25")] == 5
        assert samples[(name + "_bucket", "10.0")] == 6
        assert samples[(name + "_sum", None)] == pytest.approx(sum(A[0] + B[0]))
        les = [s.labels["le"] for s in family.samples if s.name.endswith("_bucket")]
        assert les == list(BUCKET_LABELS)  # in increasing order, +Inf last
    first_byte = {
        s.name: s.value for s in families["gateproxy_upstream_first_byte_seconds"].samples
    }
    assert first_byte["gateproxy_upstream_first_byte_seconds_count"] == 3


def test_a_malformed_histogram_is_left_out_not_rendered_half() -> None:
    tree = {"listeners": {"x": {"latency": {"request_seconds": {"buckets": {"0.1": 1}}}}}}
    assert "request_duration_seconds" not in render_prometheus(tree)
