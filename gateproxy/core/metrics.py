"""Counters, the stats tree, and its Prometheus rendering. Sans-IO.

Theory of operation
-------------------
The shell owns one :class:`Metrics` per worker process and bumps plain integer attributes on the
hot path (``metrics.listener("public").requests_total += 1``): no locks, no label lookups, no
allocation beyond the first use of a name. Everything else happens only when someone asks:

* :func:`build_stats` snapshots the counters together with data the shell collects from the
  providers (TLS engines, upstream pools, the session guard, ``/proc``) into one plain, JSON-able
  tree whose paths are the contract of ``interfaces.md`` ("Stats").
* :func:`merge_stats` folds the trees of several workers into one (rules below).
* :func:`render_prometheus` turns a tree (one worker's or a merged one) into the Prometheus text
  exposition format 0.0.4 ("Metrics" in ``interfaces.md``).

Because rendering starts from the tree, ``/stats`` and ``/metrics`` can never disagree.

Merge rules (:func:`merge_stats`)
---------------------------------
* Numbers are summed: every counter, and the additive gauges ``connections.open``,
  ``session_cache.entries`` and ``session_cache.max_entries`` (each worker has its own cache, so
  the sum is the capacity of the whole process group), ``process.rss_bytes`` and
  ``process.open_fds``.
* ``process.uptime_s`` is not summed: it takes the maximum (the oldest worker).
* ``process.workers`` is added: the number of trees merged.
* ``upstreams.<name>.servers[]`` is merged by ``address``: numbers (``active``, ``idle``) summed,
  ``healthy`` true if any worker sees the server healthy (each worker probes on its own).
* Booleans elsewhere: any. Other lists (``tickets.keys[]``, session-guard top-N tables) and strings
  come from the first worker that has them: workers share ticket keys when key files are used,
  and per-worker top-N tables cannot be merged exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass

#: The enforceable limits of ``listeners[].limits`` (config.LimitsConfig): reported even at 0.
LIMIT_NAMES = (
    "max_requests_per_connection",
    "max_connection_age",
    "keepalive_timeout",
    "request_header_timeout",
    "body_timeout",
    "max_header_bytes",
    "max_headers",
    "max_body_bytes",
    "max_connections",
    "max_connections_per_client",
)
RESPONSE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
UPSTREAM_FAILURE_REASONS = ("connect", "timeout", "protocol", "reset")
SESSION_CACHE_FIELDS = ("entries", "max_entries", "hits", "misses", "evictions", "expired")
TICKET_FIELDS = ("issued", "renewed", "rejected")


def _zeros(names: Iterable[str]) -> dict[str, int]:
    return dict.fromkeys(names, 0)


@dataclass
class ListenerCounters:
    """Per-listener counters, bumped directly by the shell."""

    connections_open: int = 0
    connections_total: int = 0
    connections_rejected: int = 0
    requests_total: int = 0
    health_checks: int = 0
    handshakes_full: int = 0
    handshakes_resumed: int = 0
    handshakes_failed: int = 0
    responses_by_class: dict[str, int] = field(default_factory=lambda: _zeros(RESPONSE_CLASSES))
    limits: dict[str, int] = field(default_factory=lambda: _zeros(LIMIT_NAMES))

    def limit_enforced(self, name: str) -> None:
        """Count one enforcement of the limit ``name`` (a ``limits`` config key)."""
        self.limits[name] = self.limits.get(name, 0) + 1

    def response(self, status: int) -> None:
        """Count one response sent downstream, by status class (``"2xx"``...)."""
        key = f"{status // 100}xx"
        self.responses_by_class[key] = self.responses_by_class.get(key, 0) + 1


@dataclass
class UpstreamCounters:
    """Per-upstream counters: requests forwarded and failures by reason."""

    requests: int = 0
    failures: dict[str, int] = field(default_factory=lambda: _zeros(UPSTREAM_FAILURE_REASONS))

    def failed(self, reason: str) -> None:
        """Count one failure (``connect``, ``timeout``, ``protocol``, ``reset``...)."""
        self.failures[reason] = self.failures.get(reason, 0) + 1


@dataclass
class GuardCounters:
    """Session-guard counters: app session cookies minted for cookie-less requests."""

    minted: int = 0
    minted_for_probes: int = 0
    stripped: int = 0
    pinned_reused: int = 0


class Metrics:
    """All counters of one worker process. Names are created on first use."""

    def __init__(self) -> None:
        self.listeners: dict[str, ListenerCounters] = {}
        self.upstreams: dict[str, UpstreamCounters] = {}
        self.guard = GuardCounters()

    def listener(self, name: str) -> ListenerCounters:
        counters = self.listeners.get(name)
        if counters is None:
            counters = self.listeners[name] = ListenerCounters()
        return counters

    def upstream(self, name: str) -> UpstreamCounters:
        counters = self.upstreams.get(name)
        if counters is None:
            counters = self.upstreams[name] = UpstreamCounters()
        return counters


# --- the stats tree -----------------------------------------------------------------------------


def _plain(value: object) -> object:
    """A deep, JSON-able copy: mappings and dataclasses become dicts, sequences lists."""
    if is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(v) for v in value]
    return value


def _section(tree: Mapping[str, object], key: str) -> dict[str, object]:
    value = _plain(tree.get(key, {}))
    return value if isinstance(value, dict) else {}


def _tls_tree(counters: ListenerCounters, engine: Mapping[str, object]) -> dict[str, object]:
    tls = {str(k): _plain(v) for k, v in engine.items()}
    cache = _section(engine, "session_cache")
    for name in SESSION_CACHE_FIELDS:
        cache.setdefault(name, 0)
    tickets = _section(engine, "tickets")
    for name in TICKET_FIELDS:
        tickets.setdefault(name, 0)
    tickets.setdefault("keys", [])
    tls.update(
        handshakes={
            "full": counters.handshakes_full,
            "resumed": counters.handshakes_resumed,
            "failed": counters.handshakes_failed,
        },
        session_cache=cache,
        tickets=tickets,
    )
    return tls


def _listener_tree(
    counters: ListenerCounters, engine: Mapping[str, object] | None
) -> dict[str, object]:
    tree: dict[str, object] = {
        "connections": {
            "open": counters.connections_open,
            "total": counters.connections_total,
            "rejected": counters.connections_rejected,
        },
        "requests": {
            "total": counters.requests_total,
            "health_checks": counters.health_checks,
            "responses": dict(counters.responses_by_class),
        },
        "limits": dict(counters.limits),
    }
    handshakes = counters.handshakes_full + counters.handshakes_resumed + counters.handshakes_failed
    if engine is not None or handshakes:
        tree["tls"] = _tls_tree(counters, engine or {})
    return tree


def build_stats(
    *,
    metrics: Metrics,
    tls: Mapping[str, Mapping[str, object]],
    upstream_servers: Mapping[str, Sequence[Mapping[str, object]]],
    guard_tables: Mapping[str, object] | None,
    process: Mapping[str, float | int],
) -> dict[str, object]:
    """Snapshot counters plus provider data into the ``/stats`` tree of ``interfaces.md``.

    ``tls`` maps a TLS listener's name to its engine stats (``session_cache``, ``tickets`` with
    ``keys``, ...); a plain-HTTP listener has no entry and gets no ``tls`` branch. The required
    session-cache and ticket fields are filled with 0 when the engine leaves them out. Counter
    values win over same-named ``guard_tables`` entries.
    """
    listeners = {
        name: _listener_tree(metrics.listener(name), tls.get(name))
        for name in sorted(set(metrics.listeners) | set(tls))
    }
    upstreams: dict[str, object] = {}
    for name in sorted(set(metrics.upstreams) | set(upstream_servers)):
        counters = metrics.upstream(name)
        upstreams[name] = {
            "servers": _plain(upstream_servers.get(name, [])),
            "requests": counters.requests,
            "failures": dict(counters.failures),
        }
    guard: dict[str, object] = {str(k): _plain(v) for k, v in (guard_tables or {}).items()}
    guard.update(vars(metrics.guard))
    return {
        "listeners": listeners,
        "upstreams": upstreams,
        "session_guard": guard,
        "process": dict(process),
    }


# --- merging workers ----------------------------------------------------------------------------

_MAX_KEYS = frozenset({"uptime_s"})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _merge_servers(lists: Sequence[list[object]]) -> list[object]:
    by_address: dict[str, list[Mapping[str, object]]] = {}
    for servers in lists:
        for server in servers:
            if isinstance(server, Mapping):
                by_address.setdefault(str(server.get("address")), []).append(server)
    return [_merge_values("", group) for group in by_address.values()]


def _merge_values(key: str, values: Sequence[object]) -> object:
    maps = [v for v in values if isinstance(v, Mapping)]
    if len(maps) == len(values):
        keys: dict[str, None] = {}
        for mapping in maps:
            keys.update(dict.fromkeys(str(k) for k in mapping))
        return {k: _merge_values(k, [m[k] for m in maps if k in m]) for k in keys}
    if all(isinstance(v, bool) for v in values):
        return any(values)
    if all(_is_number(v) for v in values):
        numbers = [v for v in values if isinstance(v, int | float)]
        return max(numbers) if key in _MAX_KEYS else sum(numbers)
    if key == "servers" and all(isinstance(v, list) for v in values):
        return _merge_servers([v for v in values if isinstance(v, list)])
    return _plain(values[0])


def merge_stats(trees: Sequence[Mapping[str, object]]) -> dict[str, object]:
    """Aggregate several workers' stats trees into one (see the module docstring for the rules)."""
    if not trees:
        return build_stats(
            metrics=Metrics(),
            tls={},
            upstream_servers={},
            guard_tables=None,
            process={"workers": 0},
        )
    merged = _merge_values("", list(trees))
    assert isinstance(merged, dict)
    process = merged.get("process")
    if isinstance(process, dict):
        process["workers"] = len(trees)
    return merged


# --- Prometheus text format 0.0.4 ---------------------------------------------------------------

Labels = tuple[tuple[str, str], ...]

#: Every family gateproxy exports: name (after ``gateproxy_``) -> (type, help), in output order.
FAMILIES: dict[str, tuple[str, str]] = {
    "connections_open": ("gauge", "Client connections open now."),
    "connections_total": ("counter", "Client connections accepted."),
    "connections_rejected_total": ("counter", "Client connections refused by admission limits."),
    "requests_total": ("counter", "Requests received."),
    "responses_total": ("counter", "Responses sent, by status class."),
    "health_checks_total": ("counter", "Health-check requests answered by gateproxy itself."),
    "limit_enforced_total": ("counter", "Times a configured limit was enforced, by limit."),
    "tls_handshakes_total": ("counter", "TLS handshakes, by kind (full, resumed, failed)."),
    "tls_session_cache_entries": ("gauge", "TLS sessions held in the server session cache."),
    "tls_session_cache_max_entries": ("gauge", "Capacity of the TLS session cache (hard cap)."),
    "tls_session_cache_hits_total": ("counter", "Session cache lookups that found a session."),
    "tls_session_cache_misses_total": ("counter", "Session cache lookups that found nothing."),
    "tls_session_cache_evictions_total": ("counter", "Sessions evicted to make room."),
    "tls_session_cache_expired_total": ("counter", "Sessions removed because they expired."),
    "tls_tickets_issued_total": ("counter", "TLS session tickets issued."),
    "tls_tickets_renewed_total": ("counter", "Tickets re-issued under the current key."),
    "tls_tickets_rejected_total": ("counter", "Tickets that could not be decrypted."),
    "tls_ticket_key_age_seconds": ("gauge", "Age of each session-ticket key, by role."),
    "upstream_requests_total": ("counter", "Requests forwarded to the upstream."),
    "upstream_failures_total": ("counter", "Upstream failures, by reason."),
    "upstream_healthy": ("gauge", "1 when the upstream server is healthy, else 0."),
    "upstream_active_connections": ("gauge", "Upstream connections in use."),
    "upstream_idle_connections": ("gauge", "Idle pooled upstream connections."),
    "session_guard_minted_total": ("counter", "App session cookies set for cookie-less requests."),
    "session_guard_minted_for_probes_total": ("counter", "The same, for probe requests."),
    "session_guard_stripped_total": ("counter", "App session cookies stripped from responses."),
    "session_guard_pinned_reused_total": ("counter", "Pinned probe sessions reused."),
    "session_guard_top_path_minted": (
        "gauge",
        "Sessions minted per normalised path, for the top_n paths (a bounded table).",
    ),
    "session_guard_top_client_minted": (
        "gauge",
        "Sessions minted per client address, for the top_n clients (a bounded table).",
    ),
    "process_resident_memory_bytes": ("gauge", "Resident memory size in bytes."),
    "process_open_fds": ("gauge", "Open file descriptors."),
    "process_uptime_seconds": ("gauge", "Seconds since the process started."),
    "process_workers": ("gauge", "Worker processes included in these figures."),
}
PREFIX = "gateproxy_"


def _get(tree: object, *path: str) -> object:
    for key in path:
        if not isinstance(tree, Mapping):
            return None
        tree = tree.get(key)
    return tree


def _items(tree: object, *path: str) -> list[tuple[str, object]]:
    node = _get(tree, *path)
    return sorted((str(k), v) for k, v in node.items()) if isinstance(node, Mapping) else []


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class _Samples:
    """Samples collected per family; values that are not numbers (missing data) are skipped."""

    def __init__(self) -> None:
        self.by_family: dict[str, list[tuple[Labels, float]]] = {}

    def add(self, family: str, labels: Labels, value: object) -> None:
        assert family in FAMILIES, family
        if isinstance(value, int | float):  # bool is an int: healthy -> 1 / 0
            self.by_family.setdefault(family, []).append(
                (labels, int(value) if isinstance(value, bool) else value)
            )

    def render(self) -> str:
        lines: list[str] = []
        for family, (kind, help_) in FAMILIES.items():
            if family not in self.by_family:
                continue
            name = PREFIX + family
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
            for labels, value in self.by_family[family]:
                text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                braced = f"{{{text}}}" if text else ""
                lines.append(f"{name}{braced} {_format_value(value)}")
        return "".join(line + "\n" for line in lines)


_LISTENER_PATHS = {
    "connections_open": ("connections", "open"),
    "connections_total": ("connections", "total"),
    "connections_rejected_total": ("connections", "rejected"),
    "requests_total": ("requests", "total"),
    "health_checks_total": ("requests", "health_checks"),
}


def _key_label(key: object, index: int) -> str:
    name = _get(key, "name_prefix") or _get(key, "name")
    return str(name) if name else str(index)


def _render_listener(out: _Samples, name: str, tree: object) -> None:
    ln = (("listener", name),)
    for family, path in _LISTENER_PATHS.items():
        out.add(family, ln, _get(tree, *path))
    for cls, value in _items(tree, "requests", "responses"):
        out.add("responses_total", (*ln, ("class", cls)), value)
    for limit, value in _items(tree, "limits"):
        out.add("limit_enforced_total", (*ln, ("reason", limit)), value)
    tls = _get(tree, "tls")
    if tls is None:
        return
    for kind in ("full", "resumed", "failed"):
        out.add("tls_handshakes_total", (*ln, ("kind", kind)), _get(tls, "handshakes", kind))
    for field_name in SESSION_CACHE_FIELDS:
        family = f"tls_session_cache_{field_name}"
        family = family if family in FAMILIES else family + "_total"
        out.add(family, ln, _get(tls, "session_cache", field_name))
    for field_name in TICKET_FIELDS:
        out.add(f"tls_tickets_{field_name}_total", ln, _get(tls, "tickets", field_name))
    keys = _get(tls, "tickets", "keys")
    for index, key in enumerate(keys if isinstance(keys, list) else []):
        labels = (*ln, ("role", str(_get(key, "role"))), ("key", _key_label(key, index)))
        out.add("tls_ticket_key_age_seconds", labels, _get(key, "age_s"))


def _render_upstream(out: _Samples, name: str, tree: object) -> None:
    up = (("upstream", name),)
    out.add("upstream_requests_total", up, _get(tree, "requests"))
    for reason, value in _items(tree, "failures"):
        out.add("upstream_failures_total", (*up, ("reason", reason)), value)
    servers = _get(tree, "servers")
    for server in servers if isinstance(servers, list) else []:
        labels = (*up, ("server", str(_get(server, "address"))))
        out.add("upstream_healthy", labels, _get(server, "healthy"))
        out.add("upstream_active_connections", labels, _get(server, "active"))
        out.add("upstream_idle_connections", labels, _get(server, "idle"))


_PROCESS_PATHS = {
    "process_resident_memory_bytes": "rss_bytes",
    "process_open_fds": "open_fds",
    "process_uptime_seconds": "uptime_s",
    "process_workers": "workers",
}


def render_prometheus(tree: Mapping[str, object]) -> str:
    """Render a stats tree as Prometheus text format 0.0.4.

    Families come out in :data:`FAMILIES` order, each with its ``# HELP``/``# TYPE`` once; a
    family without any sample (say, TLS families when no listener has TLS) is left out.
    """
    out = _Samples()
    for name, subtree in _items(tree, "listeners"):
        _render_listener(out, name, subtree)
    for name, subtree in _items(tree, "upstreams"):
        _render_upstream(out, name, subtree)
    for counter in vars(GuardCounters()):
        out.add(f"session_guard_{counter}_total", (), _get(tree, "session_guard", counter))
    _render_guard_tables(out, tree)
    for family, key in _PROCESS_PATHS.items():
        out.add(family, (), _get(tree, "process", key))
    return out.render()


def _render_guard_tables(out: _Samples, tree: Mapping[str, object]) -> None:
    """The session guard's top-N tables; bounded by ``top_n``, so the label sets are too."""
    for table, label in (("top_paths", "path"), ("top_clients", "client")):
        rows = _get(tree, "session_guard", table)
        family = f"session_guard_top_{label}_minted"
        for row in rows if isinstance(rows, list) else ():
            if isinstance(row, Mapping):
                out.add(family, ((label, str(row.get(label, ""))),), row.get("minted"))
