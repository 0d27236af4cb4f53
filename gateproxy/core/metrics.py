"""Counters and the stats tree. Sans-IO. (Prometheus text is ``core.prometheus``.)

Theory of operation
-------------------
The shell owns one :class:`Metrics` per worker process and bumps plain integer attributes on the
hot path (``metrics.listener("public").requests_total += 1``): no locks, no label lookups, no
allocation beyond the first use of a name. Everything else happens only when someone asks:

* :func:`build_stats` snapshots the counters together with data the shell collects from the
  providers (TLS engines, upstream pools, the session guard, ``/proc``) into one plain, JSON-able
  tree whose paths are the contract of ``interfaces.md`` ("Stats").
* :func:`merge_stats` folds the trees of several workers into one (rules below).
* ``core.prometheus.render_prometheus`` turns a tree (one worker's or a merged one) into the
  Prometheus text exposition format 0.0.4 ("Metrics" in ``interfaces.md``).

Because rendering starts from the tree, ``/stats`` and ``/metrics`` can never disagree.

Merge rules (:func:`merge_stats`)
---------------------------------
* Numbers are summed: every counter, and the additive gauges ``connections.open``,
  ``session_cache.entries`` and ``session_cache.max_entries`` (each worker has its own cache, so
  the sum is the capacity of the whole process group), ``process.rss_bytes`` and
  ``process.open_fds``.
* Histograms (``latency.*``: cumulative ``buckets`` per ``le``, ``sum``, ``count``;
  ``core.histogram``) need no rule of their own: every worker has the same buckets, so summing
  per key is the histogram of all the workers' observations.
* ``process.start_time_s`` takes the minimum (the oldest worker; the supervisor then puts its
  own start time there).
* ``process.uptime_s`` is not summed: it takes the maximum (the oldest worker), and so do
  ``session_guard.pinned.entries`` / ``.max_entries``: every worker reports the one pin table
  they share.
* ``process.workers`` is added: the number of trees merged.
* ``upstreams.<name>.servers[]`` is merged by ``address``: numbers (``active``, ``idle``) summed,
  ``healthy`` true if any worker sees the server healthy (the supervisor's active checks tell
  every worker the same verdicts; passive marks are per worker).
* ``session_guard.top_paths[]`` and ``.top_clients[]`` (:data:`TOP_TABLES`) are merged by their
  key (``path``, ``client``): ``minted`` summed, then the ``top_n`` highest sums kept, highest
  first (ties: key order). ``top_n`` is the largest ``session_guard.top_n`` of the trees (the
  configured size), or the longest table when no tree says. Each worker keeps only its own
  top ``top_n``, so a sum is exact for a key every worker still holds and a lower bound
  otherwise; a key is missing only if it fell out of every worker's table.
  ``session_guard.by_listener`` is summed; ``.pinned`` is one table shared by every worker
  (``gateproxy.net.shared``), so each reports the same numbers: the maximum is kept.
* Booleans elsewhere: any. Other lists and strings come from the first worker that has them:
  ``tickets.keys[]`` (every worker holds the same keys: the supervisor hands its keys to all of
  them, or all read the same ``key_files``), and strings such as ``tls.engine`` and
  ``session_cache.mode`` that the one config sets alike for every worker.

The merged tree shares nothing with its inputs (every mapping and list is new), so the
multi-process supervisor can add its own top-level keys to it and keep the workers' trees:

* ``supervisor``: ``{"workers": <configured>, "worker_restarts", "reloads", "reload_failures",
  "generation"}`` (all integers; rendered by ``core.prometheus``);
* ``workers``: ``[{"index", "pid", "generation", "stats": <that worker's tree>}, ...]``, the
  per-worker breakdown shown in ``/stats`` only (Prometheus ignores it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass

from gateproxy.core.client_address import PROXY_REJECT_REASONS
from gateproxy.core.histogram import Histogram
from gateproxy.core.lingering import LINGER_ENDINGS

#: The enforceable limits of ``listeners[].limits`` (config.LimitsConfig) and
#: ``listeners[].rate_limit`` (a request refused by ``core.rate_limit``): reported even at 0.
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
    "websocket_idle_timeout",
    "max_upgraded_connections",
    "rate_limit",
)
RESPONSE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_STATUS_CLASSES = {int(name[0]): name for name in RESPONSE_CLASSES}
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
    connections_denied: int = 0  # by listeners[].access (core.access)
    rate_limit_buckets: int = 0  # gauge: the per-address table of core.rate_limit
    rate_limit_evictions: int = 0
    requests_total: int = 0
    health_checks: int = 0
    handshakes_full: int = 0
    handshakes_resumed: int = 0
    handshakes_failed: int = 0
    responses_by_class: dict[str, int] = field(default_factory=lambda: _zeros(RESPONSE_CLASSES))
    limits: dict[str, int] = field(default_factory=lambda: _zeros(LIMIT_NAMES))
    lingering_closes: dict[str, int] = field(default_factory=lambda: _zeros(LINGER_ENDINGS))
    # Upgrades (core.upgrade): forwarded and not ended yet (waiting for the 101, or upgraded);
    # 101s relayed.
    upgrades_open: int = 0
    upgrades_total: int = 0
    # application bytes read from / written to clients (after TLS), and the latency histograms
    bytes_received: int = 0
    bytes_sent: int = 0
    request_seconds: Histogram = field(default_factory=Histogram)
    first_byte_seconds: Histogram = field(default_factory=Histogram)
    # completed handshakes by protocol version ("TLSv1.3") -> {"full": n, "resumed": n}
    handshakes_by_version: dict[str, dict[str, int]] = field(default_factory=dict)

    def handshake(self, version: str, *, resumed: bool) -> None:
        """Count one completed handshake, by kind and by protocol version."""
        if resumed:
            self.handshakes_resumed += 1
        else:
            self.handshakes_full += 1
        by_kind = self.handshakes_by_version.get(version)
        if by_kind is None:
            by_kind = self.handshakes_by_version[version] = {"full": 0, "resumed": 0}
        by_kind["resumed" if resumed else "full"] += 1

    # PROXY protocol headers: accepted (with an address / LOCAL) and refused connections.
    proxy_accepted: int = 0
    proxy_local: int = 0
    proxy_rejected: dict[str, int] = field(default_factory=lambda: _zeros(PROXY_REJECT_REASONS))

    def lingered(self, ending: str) -> None:
        """Count one lingering close by how it ended (``core.lingering.LINGER_ENDINGS``)."""
        self.lingering_closes[ending] = self.lingering_closes.get(ending, 0) + 1

    def limit_enforced(self, name: str) -> None:
        """Count one enforcement of the limit ``name`` (a ``limits`` config key)."""
        self.limits[name] = self.limits.get(name, 0) + 1

    def response(self, status: int) -> None:
        """Count one response sent downstream, by status class (``"2xx"``...)."""
        key = _STATUS_CLASSES.get(status // 100) or f"{status // 100}xx"
        self.responses_by_class[key] = self.responses_by_class.get(key, 0) + 1


@dataclass
class UpstreamCounters:
    """Per-upstream counters: requests forwarded and failures by reason."""

    requests: int = 0
    failures: dict[str, int] = field(default_factory=lambda: _zeros(UPSTREAM_FAILURE_REASONS))
    bytes_sent: int = 0  # request bytes written to its servers (heads and bodies)
    bytes_received: int = 0  # response bytes read from them
    request_seconds: Histogram = field(default_factory=Histogram)
    first_byte_seconds: Histogram = field(default_factory=Histogram)

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
    minted_by_health_checks: int = 0  # for gateproxy's own active checks and pass-through fetches


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
            "by_version": _plain(counters.handshakes_by_version),
        },
        session_cache=cache,
        tickets=tickets,
    )
    return tls


def _latency_tree(request: Histogram, first_byte: Histogram) -> dict[str, object]:
    return {"request_seconds": request.tree(), "first_byte_seconds": first_byte.tree()}


def _listener_tree(
    counters: ListenerCounters, engine: Mapping[str, object] | None
) -> dict[str, object]:
    tree: dict[str, object] = {
        "connections": {
            "open": counters.connections_open,
            "total": counters.connections_total,
            "rejected": counters.connections_rejected,
            "denied": counters.connections_denied,
        },
        "requests": {
            "total": counters.requests_total,
            "health_checks": counters.health_checks,
            "responses": dict(counters.responses_by_class),
        },
        "limits": dict(counters.limits),
        "lingering_closes": dict(counters.lingering_closes),
        "upgrades": {"open": counters.upgrades_open, "total": counters.upgrades_total},
        "bytes": {"received": counters.bytes_received, "sent": counters.bytes_sent},
        "latency": _latency_tree(counters.request_seconds, counters.first_byte_seconds),
        "rate_limit": {
            "buckets": counters.rate_limit_buckets,
            "evictions": counters.rate_limit_evictions,
        },
        "proxy_protocol": {
            "accepted": counters.proxy_accepted,
            "local": counters.proxy_local,
            "rejected": dict(counters.proxy_rejected),
        },
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
    process: Mapping[str, object],
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
            "bytes": {"sent": counters.bytes_sent, "received": counters.bytes_received},
            "latency": _latency_tree(counters.request_seconds, counters.first_byte_seconds),
        }
    guard: dict[str, object] = {str(k): _plain(v) for k, v in (guard_tables or {}).items()}
    guard.update(vars(metrics.guard))
    return {
        "listeners": listeners,
        "upstreams": upstreams,
        "session_guard": guard,
        "process": _plain(process),
    }


# --- merging workers ----------------------------------------------------------------------------

_MAX_KEYS = frozenset({"uptime_s", "top_n"})
_MIN_KEYS = frozenset({"start_time_s"})

#: The session guard's top-N tables in a stats tree (``SessionGuard.tables``): name -> row key.
TOP_TABLES = {"top_paths": "path", "top_clients": "client"}
_SHARED_KEYS = frozenset({"pinned"})  # maps whose numbers every worker reports alike: maximum


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
        if key in _SHARED_KEYS:
            return {k: _shared_value([m[k] for m in maps if k in m]) for k in keys}
        return {k: _merge_values(k, [m[k] for m in maps if k in m]) for k in keys}
    if all(isinstance(v, bool) for v in values):
        return any(values)
    if all(_is_number(v) for v in values):
        numbers = [v for v in values if isinstance(v, int | float)]
        if key in _MIN_KEYS:
            return min(numbers)
        return max(numbers) if key in _MAX_KEYS else sum(numbers)
    if key == "servers" and all(isinstance(v, list) for v in values):
        return _merge_servers([v for v in values if isinstance(v, list)])
    return _plain(values[0])


def merge_top(
    tables: Sequence[object], *, key: str, limit: int | None = None
) -> list[dict[str, object]]:
    """The top ``limit`` rows of several top-N tables by the sum of ``minted`` per ``key``.

    ``tables`` are lists of ``{key: ..., "minted": n}`` rows (anything else is skipped);
    ``limit`` None keeps as many rows as the longest table. Highest sum first, ties by key.
    """
    totals: dict[str, int | float] = {}
    longest = 0
    for rows in tables:
        if not isinstance(rows, list):
            continue
        longest = max(longest, len(rows))
        for row in rows:
            if not isinstance(row, Mapping):
                continue
            minted = row.get("minted")
            if isinstance(minted, int | float) and not isinstance(minted, bool):
                name = str(row.get(key))
                totals[name] = totals.get(name, 0) + minted
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    return [{key: name, "minted": minted} for name, minted in ranked[: limit or longest]]


def _merge_guard_tables(merged: dict[str, object], trees: Sequence[Mapping[str, object]]) -> None:
    guard = merged.get("session_guard")
    if not isinstance(guard, dict):
        return
    sources = [g for t in trees if isinstance(g := t.get("session_guard"), Mapping)]
    top_n = guard.get("top_n")
    limit = top_n if isinstance(top_n, int) and not isinstance(top_n, bool) else None
    for table, key in TOP_TABLES.items():
        if table in guard:
            guard[table] = merge_top([s.get(table) for s in sources], key=key, limit=limit)


def _shared_value(values: Sequence[object]) -> object:
    numbers = [v for v in values if _is_number(v) and isinstance(v, int | float)]
    return max(numbers) if len(numbers) == len(values) else _plain(values[0])


def add_counters(tree: dict[str, object], section: str, counters: Mapping[str, int]) -> None:
    """Add ``counters`` into ``tree[section]`` (a merged tree; the supervisor's own counters)."""
    branch = tree.setdefault(section, {})
    if not isinstance(branch, dict):
        raise ValueError(f"stats branch {section!r} is not a mapping")
    for name, value in counters.items():
        before = branch.get(name, 0)
        branch[name] = (before if _is_number(before) else 0) + value


def add_fleet_key_stats(tree: dict[str, object], fleet: Mapping[str, Mapping[str, object]]) -> None:
    """Put the supervisor's fleet key state of each listener (``net.fleet_keys``) at
    ``listeners.<name>.tls.tickets.fleet`` of a merged tree."""
    for name, branch in fleet.items():
        node: dict[str, object] = tree
        for key in ("listeners", name, "tls", "tickets"):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ValueError(f"stats branch {key!r} is not a mapping")
            node = child
        node["fleet"] = dict(branch)


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
    _merge_guard_tables(merged, trees)
    process = merged.get("process")
    if isinstance(process, dict):
        process["workers"] = len(trees)
    return merged


# --- Prometheus text format 0.0.4 ---------------------------------------------------------------
