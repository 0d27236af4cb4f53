"""Counters -> stats tree -> merged tree -> Prometheus text, checked against interfaces.md."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from gateproxy.core.config import LimitsConfig, ListenerConfig, SessionGuardConfig
from gateproxy.core.metrics import (
    LIMIT_NAMES,
    Metrics,
    add_counters,
    build_stats,
    merge_stats,
    merge_top,
)
from gateproxy.core.session_guard import SessionGuard

ENGINE = {
    "session_cache": {
        "mode": "lru",
        "entries": 7,
        "max_entries": 100,
        "hits": 5,
        "misses": 2,
        "evictions": 1,
        "expired": 3,
        "per_client_evictions": 4,
    },
    "tickets": {
        "issued": 11,
        "renewed": 2,
        "rejected": 1,
        "keys": [
            {"name_prefix": "aabbccdd", "role": "encrypt", "age_s": 10.5},
            {"name_prefix": "11223344", "role": "decrypt", "age_s": 3610.0},
        ],
    },
    "engine": "ctypes",
}
SERVERS = {
    "app": [
        {"address": "127.0.0.1:8080", "healthy": True, "active": 2, "idle": 3},
        {"address": "127.0.0.1:8081", "healthy": False, "active": 0, "idle": 0},
    ]
}
PROCESS = {"rss_bytes": 1000, "open_fds": 12, "uptime_s": 5.5}


def _metrics() -> Metrics:
    m = Metrics()
    pub = m.listener("public")
    pub.connections_open = 3
    pub.connections_total = 40
    pub.connections_rejected = 2
    pub.requests_total = 90
    pub.health_checks = 30
    pub.handshakes_full = 6
    pub.handshakes_resumed = 33
    pub.handshakes_failed = 1
    for status in (200, 200, 204, 404, 502):
        pub.response(status)
    pub.limit_enforced("max_requests_per_connection")
    pub.limit_enforced("max_requests_per_connection")
    pub.limit_enforced("max_connections")
    pub.lingered("eof")
    pub.lingered("eof")
    pub.lingered("lingering_time")
    m.listener("plain").requests_total = 4
    app = m.upstream("app")
    app.requests = 50
    app.failed("connect")
    app.failed("timeout")
    app.failed("timeout")
    m.guard.minted = 8
    m.guard.minted_for_probes = 6
    m.guard.stripped = 5
    return m


def _stats(
    m: Metrics | None = None, *, process: Mapping[str, float] = PROCESS
) -> dict[str, object]:
    return build_stats(
        metrics=m or _metrics(),
        tls={"public": ENGINE},
        upstream_servers=SERVERS,
        guard_tables={"top_paths": [{"path": "/login", "minted": 8}], "minted": -1},
        process=process,
    )


def _at(tree: object, dotted: str) -> object:
    for key in dotted.split("."):
        assert isinstance(tree, Mapping), f"{dotted}: {key!r} not reachable"
        assert key in tree, f"{dotted}: missing {key!r}"
        tree = tree[key]
    return tree


# --- counters -----------------------------------------------------------------------------------


def test_counters_start_at_zero_with_stable_keys() -> None:
    m = Metrics()
    pub = m.listener("public")
    assert m.listener("public") is pub
    assert pub.responses_by_class == {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}
    assert set(pub.limits) == set(LIMIT_NAMES) and not any(pub.limits.values())
    assert m.upstream("app").failures == {"connect": 0, "timeout": 0, "protocol": 0, "reset": 0}
    pub.limit_enforced("something_new")
    assert pub.limits["something_new"] == 1


def test_limit_names_match_the_config() -> None:
    # The lingering_* settings are not limits a request runs into: lingering_closes counts them.
    # ``rate_limit`` is the listener's own block (listeners[].rate_limit), counted with them.
    limits = {name for name in LimitsConfig.model_fields if not name.startswith("lingering_")}
    assert set(LIMIT_NAMES) == limits | {"rate_limit"}
    assert "rate_limit" in ListenerConfig.model_fields


# --- the stats tree -----------------------------------------------------------------------------

CONTRACT = [  # interfaces.md "Stats", with the values of _metrics() / ENGINE / SERVERS / PROCESS
    ("listeners.public.connections.open", 3),
    ("listeners.public.connections.total", 40),
    ("listeners.public.connections.rejected", 2),
    ("listeners.public.requests.total", 90),
    ("listeners.public.requests.health_checks", 30),
    ("listeners.public.requests.responses.2xx", 3),
    ("listeners.public.requests.responses.4xx", 1),
    ("listeners.public.requests.responses.5xx", 1),
    ("listeners.public.lingering_closes.eof", 2),
    ("listeners.public.lingering_closes.lingering_time", 1),
    ("listeners.public.lingering_closes.lingering_max_bytes", 0),
    ("listeners.public.lingering_closes.draining", 0),
    ("listeners.public.tls.handshakes.full", 6),
    ("listeners.public.tls.handshakes.resumed", 33),
    ("listeners.public.tls.handshakes.failed", 1),
    ("listeners.public.tls.session_cache.entries", 7),
    ("listeners.public.tls.session_cache.max_entries", 100),
    ("listeners.public.tls.session_cache.hits", 5),
    ("listeners.public.tls.session_cache.misses", 2),
    ("listeners.public.tls.session_cache.evictions", 1),
    ("listeners.public.tls.session_cache.expired", 3),
    ("listeners.public.tls.session_cache.per_client_evictions", 4),
    ("listeners.public.tls.tickets.issued", 11),
    ("listeners.public.tls.tickets.renewed", 2),
    ("listeners.public.tls.tickets.rejected", 1),
    ("listeners.public.tls.engine", "ctypes"),
    ("listeners.public.limits.max_requests_per_connection", 2),
    ("listeners.public.limits.max_connections", 1),
    ("listeners.public.limits.request_header_timeout", 0),
    ("listeners.plain.requests.total", 4),
    ("upstreams.app.requests", 50),
    ("upstreams.app.failures.connect", 1),
    ("upstreams.app.failures.timeout", 2),
    ("upstreams.app.failures.reset", 0),
    ("session_guard.minted", 8),
    ("session_guard.minted_for_probes", 6),
    ("session_guard.stripped", 5),
    ("process.rss_bytes", 1000),
    ("process.open_fds", 12),
    ("process.uptime_s", 5.5),
]


@pytest.mark.parametrize(("path", "value"), CONTRACT)
def test_stats_tree_paths(path: str, value: object) -> None:
    assert _at(_stats(), path) == value


def test_stats_tree_lists_and_json() -> None:
    tree = _stats()
    keys = _at(tree, "listeners.public.tls.tickets.keys")
    assert keys == ENGINE["tickets"]["keys"]  # type: ignore[index]  # ENGINE is a literal
    servers = _at(tree, "upstreams.app.servers")
    assert servers == SERVERS["app"]
    assert _at(tree, "session_guard.top_paths") == [{"path": "/login", "minted": 8}]
    assert json.loads(json.dumps(tree)) == tree  # plain JSON, no tuples or dataclasses


def test_plain_listener_has_no_tls_and_missing_engine_fields_are_zero() -> None:
    m = Metrics()
    m.listener("plain").requests_total = 1
    tree = build_stats(
        metrics=m,
        tls={"bare": {}},
        upstream_servers={},
        guard_tables=None,
        process=PROCESS,
    )
    assert "tls" not in _at(tree, "listeners.plain")  # type: ignore[operator]
    assert _at(tree, "listeners.bare.connections.total") == 0  # a TLS listener with no traffic
    assert _at(tree, "listeners.bare.tls.session_cache") == dict.fromkeys(
        ("entries", "max_entries", "hits", "misses", "evictions", "expired"), 0
    )
    assert _at(tree, "listeners.bare.tls.tickets") == {
        "issued": 0,
        "renewed": 0,
        "rejected": 0,
        "keys": [],
    }
    assert _at(tree, "session_guard") == {
        "minted": 0,
        "minted_for_probes": 0,
        "stripped": 0,
        "pinned_reused": 0,
        "minted_by_health_checks": 0,
    }


def test_stats_is_a_snapshot() -> None:
    m = _metrics()
    tree = _stats(m)
    m.listener("public").limit_enforced("max_connections")
    m.listener("public").requests_total += 1
    assert _at(tree, "listeners.public.limits.max_connections") == 1
    assert _at(tree, "listeners.public.requests.total") == 90


# --- merging workers ----------------------------------------------------------------------------


def _second_worker() -> dict[str, object]:
    m = Metrics()
    m.listener("public").requests_total = 10
    m.listener("public").connections_open = 1
    m.listener("public").limit_enforced("max_connections")
    m.upstream("app").failed("reset")
    engine = {
        "session_cache": {"entries": 3, "max_entries": 100},
        "tickets": {"issued": 4, "keys": [{"name_prefix": "ffff0000", "role": "encrypt"}]},
    }
    return build_stats(
        metrics=m,
        tls={"public": engine},
        upstream_servers={
            "app": [
                {"address": "127.0.0.1:8081", "healthy": True, "active": 1, "idle": 1},
                {"address": "127.0.0.1:8080", "healthy": False, "active": 4, "idle": 0},
            ]
        },
        guard_tables=None,
        process={"rss_bytes": 500, "open_fds": 8, "uptime_s": 9.0},
    )


MERGED = [
    ("listeners.public.requests.total", 100),
    ("listeners.public.connections.open", 4),
    ("listeners.public.limits.max_connections", 2),
    ("listeners.public.tls.session_cache.entries", 10),
    ("listeners.public.tls.session_cache.max_entries", 200),
    ("listeners.public.tls.tickets.issued", 15),
    ("listeners.public.tls.engine", "ctypes"),
    ("listeners.plain.requests.total", 4),  # only in the first worker
    ("upstreams.app.failures.reset", 1),
    ("upstreams.app.failures.timeout", 2),
    ("session_guard.minted", 8),
    ("process.rss_bytes", 1500),
    ("process.open_fds", 20),
    ("process.uptime_s", 9.0),  # max, not sum
    ("process.workers", 2),
]


@pytest.mark.parametrize(("path", "value"), MERGED)
def test_merge_stats(path: str, value: object) -> None:
    assert _at(merge_stats([_stats(), _second_worker()]), path) == value


def test_merge_servers_by_address_and_keys_from_first() -> None:
    merged = merge_stats([_stats(), _second_worker()])
    assert _at(merged, "upstreams.app.servers") == [
        {"address": "127.0.0.1:8080", "healthy": True, "active": 6, "idle": 3},
        {"address": "127.0.0.1:8081", "healthy": True, "active": 1, "idle": 1},
    ]
    assert _at(merged, "listeners.public.tls.tickets.keys") == ENGINE["tickets"]["keys"]  # type: ignore[index]


def test_merge_of_one_is_identity_and_of_none_is_empty() -> None:
    tree = _stats()
    merged = merge_stats([tree])
    assert _at(merged, "process.workers") == 1
    assert _at(merged, "listeners") == _at(tree, "listeners")
    empty = merge_stats([])
    assert _at(empty, "listeners") == {} and _at(empty, "process.workers") == 0


def guard_worker(mints: list[tuple[str, str]], *, top_n: int = 2) -> dict[str, object]:
    """One worker's tree after its session guard saw a session minted per (path, client)."""
    m = Metrics()
    guard = SessionGuard(SessionGuardConfig(top_n=top_n), counters=m.guard)
    for path, client in mints:
        guard.on_response(
            request_headers=[],
            response_headers=[(b"set-cookie", b"JSESSIONID=s; Path=/")],
            path=path.encode(),
            client=client,
            is_probe=False,
            method=b"GET",
            now=0.0,
            listener="public",
        )
    tables = guard.tables()
    return build_stats(
        metrics=m, tls={}, upstream_servers={}, guard_tables=tables, process={"open_fds": 1}
    )


#: Worker 1 mostly sees /a, worker 2 mostly /b: the sum puts /b first, which neither table alone
#: shows (worker 1 ranks /b last, worker 2 has no /a at all).
GUARD_WORKERS = (
    [("/a", "10.0.0.1")] * 5 + [("/b", "10.0.0.1")],
    [("/b", "10.0.0.2")] * 6 + [("/c/7", "10.0.0.3")] * 2,
)


def test_merge_sums_the_guard_tables_and_keeps_the_top_n_of_the_sum() -> None:
    merged = merge_stats([guard_worker(mints) for mints in GUARD_WORKERS])
    assert _at(merged, "session_guard.top_paths") == [
        {"path": "/b", "minted": 7},
        {"path": "/a", "minted": 5},
    ]
    assert _at(merged, "session_guard.top_clients") == [
        {"client": "10.0.0.1", "minted": 6},
        {"client": "10.0.0.2", "minted": 6},  # a tie: key order
    ]
    assert _at(merged, "session_guard.minted") == 14
    assert _at(merged, "session_guard.by_listener") == {"public": 14}
    assert _at(merged, "session_guard.top_n") == 2  # the configured size, not a sum
    assert _at(merged, "session_guard.pinned") == {"entries": 0, "max_entries": 10000}  # shared


def test_merged_guard_tables_grow_to_the_configured_top_n() -> None:
    merged = merge_stats([guard_worker(mints, top_n=10) for mints in GUARD_WORKERS])
    paths = _at(merged, "session_guard.top_paths")
    assert paths == [
        {"path": "/b", "minted": 7},
        {"path": "/a", "minted": 5},
        {"path": "/c/{n}", "minted": 2},
    ]
    one = guard_worker(GUARD_WORKERS[0])
    assert _at(merge_stats([one]), "session_guard") == _at(one, "session_guard")


def test_merge_top_without_a_size_keeps_the_longest_and_skips_odd_rows() -> None:
    tables = [
        [{"path": "/x", "minted": 1}, {"path": "/y", "minted": 4}, {"path": "/z"}],
        [{"path": "/x", "minted": 5}, "junk", {"path": "/w", "minted": True}],
        None,
    ]
    assert merge_top(tables, key="path") == [
        {"path": "/x", "minted": 6},
        {"path": "/y", "minted": 4},
    ]
    assert merge_top(tables, key="path", limit=1) == [{"path": "/x", "minted": 6}]
    assert merge_top([], key="client") == []


def _supervised(trees: list[dict[str, object]]) -> dict[str, object]:
    """What the supervisor serves: the merged tree plus its section and the per-worker list."""
    merged = merge_stats(trees)
    merged["supervisor"] = {
        "workers": 3,
        "worker_restarts": 2,
        "reloads": 4,
        "reload_failures": 1,
        "generation": 5,
    }
    merged["workers"] = [
        {"index": i, "pid": 1000 + i, "generation": 5, "stats": tree}
        for i, tree in enumerate(trees)
    ]
    return merged


def test_merged_tree_shares_nothing_with_the_worker_trees() -> None:
    first, second = _stats(), _second_worker()
    before = json.dumps([first, second], sort_keys=True)
    tree = _supervised([first, second])
    listener = _at(tree, "listeners.public")
    assert isinstance(listener, dict)
    listener["requests"]["total"] = -1
    listener["tls"]["tickets"]["keys"].append({"name_prefix": "mutated"})
    servers = _at(tree, "upstreams.app.servers")
    assert isinstance(servers, list)
    servers[0]["active"] = -1
    _at(tree, "process")["rss_bytes"] = -1  # type: ignore[index]
    assert json.dumps([first, second], sort_keys=True) == before
    assert json.loads(json.dumps(tree))["workers"][1]["stats"] == second  # JSON-able as served
    assert _at(tree, "supervisor.generation") == 5 and _at(tree, "process.workers") == 2


# --- Prometheus ---------------------------------------------------------------------------------


def test_shared_pin_table_is_not_summed_and_supervisor_counters_are_added() -> None:
    pinned = {"entries": 3, "max_entries": 10000}
    trees = [
        build_stats(
            metrics=Metrics(),
            tls={},
            upstream_servers={},
            guard_tables={"pinned": pinned},
            process=PROCESS,
        )
        for _ in range(2)
    ]
    merged = merge_stats(trees)
    assert _at(merged, "session_guard.pinned") == pinned  # one table every worker reports
    add_counters(merged, "session_guard", {"minted": 2, "minted_by_health_checks": 2})
    assert _at(merged, "session_guard.minted") == 2
    assert _at(merged, "session_guard.minted_by_health_checks") == 2
    add_counters(merged, "new_branch", {"x": 1})
    assert _at(merged, "new_branch.x") == 1
