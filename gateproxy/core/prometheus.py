"""The stats tree as Prometheus text exposition format 0.0.4. Sans-IO.

Rendering starts from the tree ``core.metrics.build_stats`` (or ``merge_stats``) produced, so
``/stats`` and ``/metrics`` can never disagree. Names follow ``interfaces.md`` ("Metrics"):
prefix ``gateproxy_``, snake_case, base units, counters ending in ``_total``.

A multi-process tree (``merge_stats`` of the workers' trees) may carry two more top-level keys,
added by the supervisor: ``supervisor`` (``workers`` configured, ``worker_restarts``, ``reloads``,
``reload_failures``, ``generation``), rendered as the ``workers_configured``,
``worker_restarts_total``, ``reloads_total``, ``reload_failures_total`` and
``config_generation`` families; and ``workers``, the per-worker breakdown for ``/stats``, which
is *not* rendered: its figures are already in the merged tree, and rendering them again would
duplicate every sample under a ``worker`` label no dashboard asked for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from gateproxy.core.metrics import SESSION_CACHE_FIELDS, TICKET_FIELDS, GuardCounters
from gateproxy.core.prometheus_sessions import SHARED_SESSION_FAMILIES, shared_session_samples

Labels = tuple[tuple[str, str], ...]

#: Every family gateproxy exports: name (after ``gateproxy_``) -> (type, help), in output order.
FAMILIES: dict[str, tuple[str, str]] = {
    "connections_open": ("gauge", "Client connections open now."),
    "connections_total": ("counter", "Client connections accepted."),
    "connections_rejected_total": ("counter", "Client connections refused by admission limits."),
    "connections_denied_total": (
        "counter",
        "Client connections closed before the handshake by the listener's access rules.",
    ),
    "requests_total": ("counter", "Requests received."),
    "responses_total": ("counter", "Responses sent, by status class."),
    "health_checks_total": ("counter", "Health-check requests answered by gateproxy itself."),
    "limit_enforced_total": ("counter", "Times a configured limit was enforced, by limit."),
    "rate_limit_buckets": ("gauge", "Client addresses in the rate-limit tables (bounded)."),
    "rate_limit_evictions_total": (
        "counter",
        "Rate-limit buckets pushed out of a full table while still limiting their client.",
    ),
    "lingering_closes_total": (
        "counter",
        "Connections closed after reading and discarding what the client still sent, by how "
        "that ended.",
    ),
    "upgraded_connections_open": (
        "gauge",
        "Upgrade (WebSocket) requests forwarded and not ended yet: awaiting the 101, or relaying.",
    ),
    "upgraded_connections_total": (
        "counter",
        "Connections upgraded (101 Switching Protocols relayed), e.g. WebSocket.",
    ),
    "bytes_received_total": ("counter", "Bytes read from clients (after TLS decryption)."),
    "bytes_sent_total": ("counter", "Bytes written to clients (before TLS encryption)."),
    "request_duration_seconds": (
        "histogram",
        "Seconds from a request's head to the end of its response (health checks excluded).",
    ),
    "request_first_byte_seconds": (
        "histogram",
        "Seconds from a request's head to the first byte of the upstream's response.",
    ),
    "proxy_protocol_accepted_total": (
        "counter",
        "Connections whose PROXY protocol header was accepted (LOCAL ones included).",
    ),
    "proxy_protocol_rejected_total": (
        "counter",
        "Connections closed over their PROXY protocol header (missing from a trusted source, "
        "sent by an untrusted one, invalid, or too slow), by reason.",
    ),
    "tls_handshakes_total": ("counter", "TLS handshakes, by kind (full, resumed, failed)."),
    "tls_handshakes_by_version_total": (
        "counter",
        "Completed TLS handshakes, by protocol version and kind (full, resumed).",
    ),
    "tls_session_cache_entries": ("gauge", "TLS sessions held in the server session cache."),
    "tls_session_cache_max_entries": ("gauge", "Capacity of the TLS session cache (hard cap)."),
    "tls_session_cache_hits_total": ("counter", "Session cache lookups that found a session."),
    "tls_session_cache_misses_total": ("counter", "Session cache lookups that found nothing."),
    "tls_session_cache_evictions_total": ("counter", "Sessions evicted to make room."),
    "tls_session_cache_expired_total": ("counter", "Sessions removed because they expired."),
    **SHARED_SESSION_FAMILIES,  # tls.session_cache.shared (core/prometheus_sessions.py)
    "tls_tickets_issued_total": ("counter", "TLS session tickets issued."),
    "tls_tickets_renewed_total": ("counter", "Tickets re-issued under the current key."),
    "tls_tickets_rejected_total": ("counter", "Tickets that could not be decrypted."),
    "tls_ticket_key_age_seconds": ("gauge", "Age of each session-ticket key, by role."),
    "tls_fleet_key_slot": ("gauge", "Time slot of the fleet ticket key that encrypts now."),
    "tls_fleet_key_age_seconds": ("gauge", "Seconds since the current fleet key slot began."),
    "tls_fleet_key_local": (
        "gauge",
        "1 while the listener encrypts with a local fallback key (Redis unreachable), else 0.",
    ),
    "tls_fleet_keys_fetched_total": ("counter", "Fleet slot keys read from Redis."),
    "tls_fleet_keys_created_total": ("counter", "Fleet slot keys this host made (SET NX won)."),
    "tls_fleet_redis_errors_total": ("counter", "Failed Redis rounds for fleet ticket keys."),
    "tls_fleet_fallbacks_total": ("counter", "Local random keys made because Redis failed."),
    "tls_fleet_rejoins_total": ("counter", "Redis rounds that worked again after failing."),
    "tls_fleet_redis_down": ("gauge", "1 from a failed Redis round until one works, else 0."),
    "upstream_requests_total": ("counter", "Requests forwarded to the upstream."),
    "upstream_failures_total": ("counter", "Upstream failures, by reason."),
    "upstream_bytes_sent_total": ("counter", "Request bytes written to the upstream's servers."),
    "upstream_bytes_received_total": (
        "counter",
        "Response bytes read from the upstream's servers.",
    ),
    "upstream_request_duration_seconds": (
        "histogram",
        "Seconds from a forwarded request's head to the end of its response.",
    ),
    "upstream_first_byte_seconds": (
        "histogram",
        "Seconds from a forwarded request's head to the first byte of the upstream's response.",
    ),
    "upstream_healthy": ("gauge", "1 when the upstream server is healthy, else 0."),
    "upstream_active_connections": ("gauge", "Upstream connections in use."),
    "upstream_idle_connections": ("gauge", "Idle pooled upstream connections."),
    "session_guard_minted_total": ("counter", "App session cookies set for cookie-less requests."),
    "session_guard_minted_for_probes_total": ("counter", "The same, for probe requests."),
    "session_guard_stripped_total": ("counter", "App session cookies stripped from responses."),
    "session_guard_pinned_reused_total": ("counter", "Pinned probe sessions reused."),
    "session_guard_minted_by_health_checks_total": (
        "counter",
        "App sessions minted for gateproxy's own health requests (at most one per server).",
    ),
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
    "process_start_time_seconds": (
        "gauge",
        "Start time of the gateproxy process since the Unix epoch, in seconds.",
    ),
    "build_info": (
        "gauge",
        "Always 1; the labels name gateproxy's, Python's and OpenSSL's version.",
    ),
    "workers_configured": ("gauge", "Worker processes the supervisor is configured to run."),
    "worker_restarts_total": ("counter", "Worker processes restarted after an unexpected exit."),
    "reloads_total": ("counter", "Configuration reloads (SIGHUP) applied."),
    "reload_failures_total": (
        "counter",
        "Configuration reloads refused (the previous configuration kept running).",
    ),
    "config_generation": ("gauge", "Generation of the configuration in use (1 at start)."),
    "admin_connections_denied_total": (
        "counter",
        "Admin API connections closed by admin.access before a request was read.",
    ),
}
PREFIX = "gateproxy_"
#: Families exported under their standard name, without :data:`PREFIX` (what dashboards expect
#: from every Prometheus client library).
UNPREFIXED = frozenset({"process_start_time_seconds"})


def exported_name(family: str) -> str:
    """The metric name of a :data:`FAMILIES` entry as it appears in the exposition."""
    return family if family in UNPREFIXED else PREFIX + family


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
        self.by_family: dict[str, list[tuple[str, Labels, float]]] = {}

    def add(self, family: str, labels: Labels, value: object, *, suffix: str = "") -> None:
        assert family in FAMILIES, family
        if isinstance(value, int | float):  # bool is an int: healthy -> 1 / 0
            self.by_family.setdefault(family, []).append(
                (suffix, labels, int(value) if isinstance(value, bool) else value)
            )

    def add_histogram(self, family: str, labels: Labels, tree: object) -> None:
        """A histogram tree (``core.histogram``): ``_bucket`` per ``le``, ``_sum``, ``_count``;
        a histogram without its ``+Inf`` bucket or count (malformed data) is skipped."""
        buckets = _get(tree, "buckets")
        count = _get(tree, "count")
        if not isinstance(buckets, Mapping) or "+Inf" not in buckets or not _is_count(count):
            return
        ordered = sorted(buckets.items(), key=lambda item: _bound(str(item[0])))
        for le, value in ordered:
            self.add(family, (*labels, ("le", str(le))), value, suffix="_bucket")
        self.add(family, labels, _get(tree, "sum"), suffix="_sum")
        self.add(family, labels, count, suffix="_count")

    def render(self) -> str:
        lines: list[str] = []
        for family, (kind, help_) in FAMILIES.items():
            if family not in self.by_family:
                continue
            name = exported_name(family)
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
            for suffix, labels, value in self.by_family[family]:
                text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                braced = f"{{{text}}}" if text else ""
                lines.append(f"{name}{suffix}{braced} {_format_value(value)}")
        return "".join(line + "\n" for line in lines)


_LISTENER_PATHS = {
    "connections_open": ("connections", "open"),
    "connections_total": ("connections", "total"),
    "connections_rejected_total": ("connections", "rejected"),
    "connections_denied_total": ("connections", "denied"),
    "rate_limit_buckets": ("rate_limit", "buckets"),
    "rate_limit_evictions_total": ("rate_limit", "evictions"),
    "requests_total": ("requests", "total"),
    "health_checks_total": ("requests", "health_checks"),
    "upgraded_connections_open": ("upgrades", "open"),
    "upgraded_connections_total": ("upgrades", "total"),
    "proxy_protocol_accepted_total": ("proxy_protocol", "accepted"),
}


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bound(label: str) -> float:
    try:
        return float(label)  # "+Inf" -> inf
    except ValueError:
        return math.nan


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
    for ending, value in _items(tree, "lingering_closes"):
        out.add("lingering_closes_total", (*ln, ("reason", ending)), value)
    out.add("bytes_received_total", ln, _get(tree, "bytes", "received"))
    out.add("bytes_sent_total", ln, _get(tree, "bytes", "sent"))
    latency = _get(tree, "latency")
    out.add_histogram("request_duration_seconds", ln, _get(latency, "request_seconds"))
    out.add_histogram("request_first_byte_seconds", ln, _get(latency, "first_byte_seconds"))
    for reason, value in _items(tree, "proxy_protocol", "rejected"):
        out.add("proxy_protocol_rejected_total", (*ln, ("reason", reason)), value)
    tls = _get(tree, "tls")
    if tls is None:
        return
    for kind in ("full", "resumed", "failed"):
        out.add("tls_handshakes_total", (*ln, ("kind", kind)), _get(tls, "handshakes", kind))
    for version, kinds in _items(tls, "handshakes", "by_version"):
        for kind, value in _items(kinds):
            labels = (*ln, ("version", version), ("kind", kind))
            out.add("tls_handshakes_by_version_total", labels, value)
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
    _render_fleet_keys(out, ln, _get(tls, "tickets", "fleet"))
    for family, extra, value in shared_session_samples(_get(tls, "session_cache", "shared")):
        out.add(family, (*ln, *extra), value)


def _render_fleet_keys(out: _Samples, ln: Labels, fleet: object) -> None:
    """``tls.tickets.fleet`` (a ``source: fleet`` listener under ``gateproxy run``)."""
    if not isinstance(fleet, Mapping):
        return
    out.add("tls_fleet_key_slot", ln, fleet.get("slot"))
    out.add("tls_fleet_key_age_seconds", ln, fleet.get("key_age_s"))
    out.add("tls_fleet_key_local", ln, int(fleet.get("source") == "local"))
    for name in ("fetched", "created"):
        out.add(f"tls_fleet_keys_{name}_total", ln, fleet.get(name))
    out.add("tls_fleet_redis_down", ln, int(fleet.get("store_down") is True))
    for name in ("redis_errors", "fallbacks", "rejoins"):
        out.add(f"tls_fleet_{name}_total", ln, fleet.get(name))


def _render_upstream(out: _Samples, name: str, tree: object) -> None:
    up = (("upstream", name),)
    out.add("upstream_requests_total", up, _get(tree, "requests"))
    for reason, value in _items(tree, "failures"):
        out.add("upstream_failures_total", (*up, ("reason", reason)), value)
    out.add("upstream_bytes_sent_total", up, _get(tree, "bytes", "sent"))
    out.add("upstream_bytes_received_total", up, _get(tree, "bytes", "received"))
    latency = _get(tree, "latency")
    out.add_histogram("upstream_request_duration_seconds", up, _get(latency, "request_seconds"))
    out.add_histogram("upstream_first_byte_seconds", up, _get(latency, "first_byte_seconds"))
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
    "process_start_time_seconds": "start_time_s",
}
_SUPERVISOR_PATHS = {
    "workers_configured": "workers",
    "worker_restarts_total": "worker_restarts",
    "reloads_total": "reloads",
    "reload_failures_total": "reload_failures",
    "config_generation": "generation",
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
    build = _get(tree, "process", "build")
    if isinstance(build, Mapping):
        out.add("build_info", tuple((str(k), str(v)) for k, v in sorted(build.items())), 1)
    for family, key in _SUPERVISOR_PATHS.items():  # the per-worker "workers" list is skipped
        out.add(family, (), _get(tree, "supervisor", key))
    out.add("admin_connections_denied_total", (), _get(tree, "admin", "connections_denied"))
    return out.render()


def _render_guard_tables(out: _Samples, tree: Mapping[str, object]) -> None:
    """The session guard's top-N tables; bounded by ``top_n``, so the label sets are too."""
    for table, label in (("top_paths", "path"), ("top_clients", "client")):
        rows = _get(tree, "session_guard", table)
        family = f"session_guard_top_{label}_minted"
        for row in rows if isinstance(rows, list) else ():
            if isinstance(row, Mapping):
                out.add(family, ((label, str(row.get(label, ""))),), row.get("minted"))
