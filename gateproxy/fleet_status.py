"""``gateproxy fleet status``: what this host's running gateproxy sees of the fleet.

It asks the running daemon's admin listener (``admin.bind`` of the config, or ``--admin``) for
``/stats`` and prints, for every ``tls.tickets.source: fleet`` listener, where its encryption key
comes from (``fleet`` or a ``local`` fallback), the slot and its age, the key's name prefix and
the Redis counters. Nothing here talks to Redis: this is the host's own view, the one that
decides its tickets.

Exit status: 0 when every fleet listener encrypts with the fleet's key (or there is none), 3
when one runs on a local fallback key, 1 when the daemon cannot be asked.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from pathlib import Path

from gateproxy.core.config import Config, load_config_text, split_hostport
from gateproxy.errors import GateproxyError

__all__ = ["FALLBACK_STATUS", "fetch_stats", "fleet_status", "render_fleet_status"]

FALLBACK_STATUS = 3
"""Exit status while a fleet listener encrypts with a local fallback key."""


def fetch_stats(admin: str, *, timeout: float = 5.0) -> dict[str, object]:
    """``GET /stats`` from the admin listener at ``admin`` (``host:port``)."""
    host, port = split_hostport(admin)
    conn = http.client.HTTPConnection(host.strip("[]"), port, timeout=timeout)
    try:
        conn.request("GET", "/stats", headers={"Host": "admin"})
        response = conn.getresponse()
        body = response.read()
    except OSError as exc:
        raise GateproxyError(
            f"cannot reach the admin listener at {admin}: {exc.strerror or exc} "
            "(is gateproxy running with this config?)"
        ) from None
    finally:
        conn.close()
    if response.status != 200:
        raise GateproxyError(f"admin listener at {admin}: /stats answered {response.status}")
    tree = json.loads(body)
    if not isinstance(tree, dict):
        raise GateproxyError(f"admin listener at {admin}: /stats is not a JSON object")
    return tree


def _fleet_branches(stats: Mapping[str, object]) -> dict[str, Mapping[str, object]]:
    listeners = stats.get("listeners")
    found: dict[str, Mapping[str, object]] = {}
    for name, tree in listeners.items() if isinstance(listeners, Mapping) else []:
        tls = tree.get("tls") if isinstance(tree, Mapping) else None
        tickets = tls.get("tickets") if isinstance(tls, Mapping) else None
        fleet = tickets.get("fleet") if isinstance(tickets, Mapping) else None
        if isinstance(fleet, Mapping):
            found[str(name)] = fleet
    return found


def render_fleet_status(stats: Mapping[str, object], *, redis_url: str | None) -> tuple[str, int]:
    """The report of ``stats`` (a ``/stats`` tree) and its exit status."""
    branches = _fleet_branches(stats)
    if not branches:
        return "no listener takes its ticket keys from the fleet (tls.tickets.source: fleet)", 0
    lines = [f"redis: {redis_url}" if redis_url else "redis: (no fleet: block in this config)"]
    status = 0
    for name, fleet in branches.items():
        source = fleet.get("source")
        status = FALLBACK_STATUS if source != "fleet" else status
        lines.append(
            f"listener {name}: source {source}, slot {fleet.get('slot')} "
            f"(age {fleet.get('key_age_s')} s of {fleet.get('rotate_every_s')} s), "
            f"key {fleet.get('key')}, keep {fleet.get('keep')}"
        )
        down = "down" if fleet.get("store_down") else "reachable at the last round"
        lines.append(
            f"  redis {down}; fetched {fleet.get('fetched')}, created {fleet.get('created')}, "
            f"redis errors {fleet.get('redis_errors')}, fallbacks {fleet.get('fallbacks')}, "
            f"rejoins {fleet.get('rejoins')}"
        )
        if fleet.get("last_error"):
            lines.append(f"  last error: {fleet.get('last_error')}")
        slots = fleet.get("slots")
        for held in slots if isinstance(slots, list) else []:
            if isinstance(held, Mapping):
                lines.append(f"  slot {held.get('slot')}: {held.get('origin')} {held.get('key')}")
    return "\n".join(lines), status


def fleet_status(config_path: Path, *, admin: str | None, as_json: bool) -> tuple[str, int]:
    """What ``gateproxy fleet status`` prints, and its exit status."""
    config = _load(config_path)
    if admin is None:
        if config.admin is None:
            raise GateproxyError(
                f"{config_path}: admin: null, so there is no admin listener to ask; "
                "pass --admin HOST:PORT"
            )
        admin = config.admin.bind
    stats = fetch_stats(admin)
    if as_json:
        _, status = render_fleet_status(stats, redis_url=None)
        return json.dumps(_fleet_branches(stats), indent=2, sort_keys=True), status
    return render_fleet_status(
        stats, redis_url=config.fleet.redis.url if config.fleet is not None else None
    )


def _load(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GateproxyError(f"{path}: cannot read config file: {exc.strerror}") from None
    return load_config_text(text, source=str(path))
