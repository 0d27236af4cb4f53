"""Prometheus rendering of the stats tree: values, names, escaping; parsed with a real parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateproxy.core.metrics import Metrics, build_stats, merge_stats
from gateproxy.core.prometheus import FAMILIES, render_prometheus
from tests.core.test_metrics import (
    GUARD_WORKERS,
    _second_worker,
    _stats,
    _supervised,
    guard_worker,
)


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, f"duplicate sample {key}"
            out[key] = sample.value
    return out


def _s(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return "gateproxy_" + name, frozenset(labels.items())


PUB = {"listener": "public"}
EXPECTED = [
    (_s("tls_session_cache_entries", **PUB), 7),
    (_s("tls_session_cache_max_entries", **PUB), 100),
    (_s("tls_session_cache_hits_total", **PUB), 5),
    (_s("tls_session_cache_misses_total", **PUB), 2),
    (_s("tls_session_cache_evictions_total", **PUB), 1),
    (_s("tls_session_cache_expired_total", **PUB), 3),
    (_s("tls_handshakes_total", **PUB, kind="full"), 6),
    (_s("tls_handshakes_total", **PUB, kind="resumed"), 33),
    (_s("tls_handshakes_total", **PUB, kind="failed"), 1),
    (_s("tls_tickets_issued_total", **PUB), 11),
    (_s("tls_tickets_renewed_total", **PUB), 2),
    (_s("tls_tickets_rejected_total", **PUB), 1),
    (_s("tls_ticket_key_age_seconds", **PUB, role="encrypt", key="aabbccdd"), 10.5),
    (_s("tls_ticket_key_age_seconds", **PUB, role="decrypt", key="11223344"), 3610.0),
    (_s("connections_open", **PUB), 3),
    (_s("connections_total", **PUB), 40),
    (_s("connections_rejected_total", **PUB), 2),
    (_s("requests_total", **PUB), 90),
    (_s("requests_total", listener="plain"), 4),
    (_s("responses_total", **PUB, **{"class": "2xx"}), 3),
    (_s("responses_total", **PUB, **{"class": "5xx"}), 1),
    (_s("health_checks_total", **PUB), 30),
    (_s("limit_enforced_total", **PUB, reason="max_requests_per_connection"), 2),
    (_s("limit_enforced_total", **PUB, reason="body_timeout"), 0),
    (_s("lingering_closes_total", **PUB, reason="eof"), 2),
    (_s("lingering_closes_total", **PUB, reason="lingering_time"), 1),
    (_s("lingering_closes_total", **PUB, reason="reset"), 0),
    (_s("upstream_healthy", upstream="app", server="127.0.0.1:8080"), 1),
    (_s("upstream_healthy", upstream="app", server="127.0.0.1:8081"), 0),
    (_s("upstream_active_connections", upstream="app", server="127.0.0.1:8080"), 2),
    (_s("upstream_idle_connections", upstream="app", server="127.0.0.1:8080"), 3),
    (_s("upstream_requests_total", upstream="app"), 50),
    (_s("upstream_failures_total", upstream="app", reason="timeout"), 2),
    (_s("upstream_failures_total", upstream="app", reason="protocol"), 0),
    (_s("session_guard_minted_total"), 8),
    (_s("session_guard_minted_for_probes_total"), 6),
    (_s("session_guard_stripped_total"), 5),
    (_s("process_resident_memory_bytes"), 1000),
    (_s("process_open_fds"), 12),
    (_s("process_uptime_seconds"), 5.5),
]


def test_prometheus_values() -> None:
    samples = _samples(render_prometheus(_stats()))
    for key, value in EXPECTED:
        assert samples.get(key) == value, key
    assert not any(
        labels and dict(labels).get("listener") == "plain" and "tls" in name
        for name, labels in samples
    )


def test_prometheus_help_and_type_once_per_family() -> None:
    text = render_prometheus(merge_stats([_stats(), _second_worker()]))
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    types = {
        line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE")
    }
    assert len(helps) == len(set(helps)) == len(types)
    for name, kind in types.items():
        assert name.startswith("gateproxy_")
        assert kind == FAMILIES[name.removeprefix("gateproxy_")][0]
        assert (kind == "counter") == name.endswith("_total"), name
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["gateproxy_tls_handshakes"].type == "counter"
    assert families["gateproxy_tls_session_cache_entries"].type == "gauge"
    assert _samples(text)[_s("process_workers")] == 2
    assert text.endswith("\n")


def test_prometheus_escapes_label_values() -> None:
    name = 'we"ird\\na\nme'
    m = Metrics()
    m.listener(name).requests_total = 1
    tree = build_stats(metrics=m, tls={}, upstream_servers={}, guard_tables=None, process={})
    text = render_prometheus(tree)
    assert 'listener="we\\"ird\\\\na\\nme"' in text
    assert _samples(text)[_s("requests_total", listener=name)] == 1


def test_prometheus_tolerates_missing_and_odd_values() -> None:
    tree: dict[str, object] = {
        "listeners": {"x": {"connections": {"open": None}, "tls": {"session_cache": "off"}}},
        "upstreams": {"u": {"servers": "nope"}},
        "process": {"rss_bytes": float("nan"), "uptime_s": float("inf")},
    }
    text = render_prometheus(tree)
    samples = _samples(text)
    assert samples[_s("process_uptime_seconds")] == float("inf")
    assert "gateproxy_process_resident_memory_bytes NaN" in text
    assert _s("connections_open", listener="x") not in samples
    assert render_prometheus({}) == ""


def test_session_guard_top_tables_reach_prometheus() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    tree = {
        "session_guard": {
            "minted": 7,
            "top_paths": [{"path": "/users/{n}", "minted": 5}, {"path": "/x", "minted": 2}],
            "top_clients": [{"client": "10.0.0.9", "minted": 7}],
        }
    }
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(render_prometheus(tree))
        for s in family.samples
    }
    assert samples[("gateproxy_session_guard_top_path_minted", (("path", "/users/{n}"),))] == 5
    assert samples[("gateproxy_session_guard_top_path_minted", (("path", "/x"),))] == 2
    assert samples[("gateproxy_session_guard_top_client_minted", (("client", "10.0.0.9"),))] == 7
    assert samples[("gateproxy_session_guard_minted_total", ())] == 7


def test_merged_guard_tables_reach_prometheus_summed() -> None:
    samples = _samples(render_prometheus(merge_stats([guard_worker(m) for m in GUARD_WORKERS])))
    top = {k: v for k, v in samples.items() if k[0].startswith("gateproxy_session_guard_top_")}
    assert top == {
        _s("session_guard_top_path_minted", path="/b"): 7,
        _s("session_guard_top_path_minted", path="/a"): 5,
        _s("session_guard_top_client_minted", client="10.0.0.1"): 6,
        _s("session_guard_top_client_minted", client="10.0.0.2"): 6,
    }


SUPERVISOR_FAMILIES = {
    "gateproxy_workers_configured": ("gauge", 3),
    "gateproxy_worker_restarts": ("counter", 2),
    "gateproxy_reloads": ("counter", 4),
    "gateproxy_reload_failures": ("counter", 1),
    "gateproxy_config_generation": ("gauge", 5),
}


def test_supervisor_tree_renders_its_section_and_ignores_the_worker_list() -> None:
    trees = [_stats(), _second_worker()]
    text = render_prometheus(_supervised(trees))
    families = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in families, f"duplicate family {family.name}"
        families[family.name] = family
    for name, (kind, value) in SUPERVISOR_FAMILIES.items():
        assert families[name].type == kind
        assert [(s.name, s.labels, s.value) for s in families[name].samples] == [
            (name + ("_total" if kind == "counter" else ""), {}, value)
        ]
    for line in text.splitlines():
        if line.startswith("# TYPE") and line.split()[3] == "counter":
            assert line.split()[2].endswith("_total"), line
    # the per-worker breakdown adds nothing: the same samples as the merged tree alone
    without = _supervised(trees)
    del without["workers"]
    assert _samples(text) == _samples(render_prometheus(without))
    assert _samples(text)[_s("requests_total", listener="public")] == 100  # merged, once
    assert _samples(text)[_s("process_workers")] == 2


def test_no_supervisor_section_means_no_supervisor_families() -> None:
    text = render_prometheus(merge_stats([_stats(), _second_worker()]))
    names = {family.name for family in text_string_to_metric_families(text)}
    assert not names & set(SUPERVISOR_FAMILIES)
    partial = render_prometheus({"supervisor": {"reloads": 7, "generation": "x"}})
    assert _samples(partial) == {_s("reloads_total"): 7}
