"""Config files of a fleet host for the fleet tests: one TLS listener whose ticket keys come from
the fleet (``tls.tickets.source: fleet``), the session cache off (only tickets resume), an admin
listener, and one fleet secret file shared by every host written in the same folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.conftest import CertPaths
from tests.helpers.proxy import proxy_config, tls_listener


def fleet_config_file(
    tmp_path: Path,
    name: str,
    *,
    cert: CertPaths,
    upstream: str,
    redis_url: str,
    rotate: str,
    keep: int = 1,
) -> Path:
    """Write ``<tmp_path>/<name>.yaml`` (and ``fleet.secret`` once) and return its path."""
    secret = tmp_path / "fleet.secret"
    if not secret.exists():
        secret.write_bytes(os.urandom(32))
    tls = {
        "session_cache": {"mode": "off"},
        "tickets": {"source": "fleet", "rotate_every": rotate, "keep": keep},
    }
    listener = tls_listener(cert=cert.cert, key=cert.key, tls=tls)
    fleet: dict[str, Any] = {
        "redis": {"url": redis_url, "timeout": "200ms"},
        "secret_file": str(secret),
    }
    config = proxy_config(
        [listener], {"app": {"servers": [upstream]}}, fleet=fleet, shutdown_timeout="2s"
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path
