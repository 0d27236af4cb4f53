"""The SLO families besides the histograms: bytes, handshakes by version, build info and the
process start time, merged over two workers and read back with prometheus_client's parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateproxy.core.metrics import Metrics, build_stats, merge_stats
from gateproxy.core.prometheus import render_prometheus

BUILD = {"version": "0.1.0", "python": "3.11.2", "openssl": "OpenSSL 3.0.11 19 Sep 2023"}


def _worker(*, start: float, handshakes: list[tuple[str, bool]], sent: int) -> dict[str, object]:
    metrics = Metrics()
    listener = metrics.listener("public")
    for version, resumed in handshakes:
        listener.handshake(version, resumed=resumed)
    listener.bytes_received, listener.bytes_sent = 100, sent
    upstream = metrics.upstream("app")
    upstream.bytes_sent, upstream.bytes_received = 90, sent
    return build_stats(
        metrics=metrics,
        tls={"public": {}},
        upstream_servers={},
        guard_tables=None,
        process={"start_time_s": start, "build": BUILD},
    )


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_two_workers_sum_bytes_and_handshakes_keep_the_oldest_start_and_one_build() -> None:
    one = _worker(start=1000.5, handshakes=[("TLSv1.3", False), ("TLSv1.3", True)], sent=7)
    two = _worker(start=999.25, handshakes=[("TLSv1.2", False), ("TLSv1.3", True)], sent=5)
    merged = merge_stats([one, two])
    handshakes = merged["listeners"]["public"]["tls"]["handshakes"]  # type: ignore[index]
    assert handshakes["full"] == 2 and handshakes["resumed"] == 2
    assert handshakes["by_version"] == {
        "TLSv1.3": {"full": 1, "resumed": 2},
        "TLSv1.2": {"full": 1, "resumed": 0},
    }
    samples = _samples(render_prometheus(merged))
    pub = ("listener", "public")

    def get(name: str, *labels: tuple[str, str]) -> float:
        return samples[(name, frozenset(labels))]

    assert get("gateproxy_bytes_received_total", pub) == 200
    assert get("gateproxy_bytes_sent_total", pub) == 12
    assert get("gateproxy_upstream_bytes_sent_total", ("upstream", "app")) == 180
    assert get("gateproxy_upstream_bytes_received_total", ("upstream", "app")) == 12
    by_version = "gateproxy_tls_handshakes_by_version_total"
    assert get(by_version, pub, ("version", "TLSv1.3"), ("kind", "resumed")) == 2
    assert get(by_version, pub, ("version", "TLSv1.2"), ("kind", "full")) == 1
    assert get("process_start_time_seconds") == 999.25
    assert get("gateproxy_build_info", *BUILD.items()) == 1
    assert [name for name, _ in samples].count("gateproxy_build_info") == 1
