"""Cross-checks of ``tls.session_cache.shared`` (the fleet's shared TLS 1.2 session cache).

::

    listeners:
      - tls:
          session_cache:
            mode: lru
            shared: true            # fetch / store TLS 1.2 session-id sessions in fleet.redis
            shared_timeout: 20ms    # the most a handshake waits for the store

The store is the top-level ``fleet.redis`` (core/config_fleet.py) and the MAC and sealing keys
come from ``fleet.secret_file``; the two fields themselves live in ``SessionCacheConfig``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from gateproxy.errors import ConfigProblem

if TYPE_CHECKING:
    from gateproxy.core.config import Config

__all__ = ["shared_session_problems"]


def shared_session_problems(config: Config) -> Iterator[ConfigProblem]:
    """Listeners with ``shared: true`` that the rest of the config cannot serve."""
    for index, lc in enumerate(config.listeners):
        if lc.tls is None or not lc.tls.session_cache.shared:
            continue
        where = f"listeners[{index}].tls.session_cache.shared"
        if config.fleet is None:
            yield ConfigProblem(
                where, "shared: true needs a top-level fleet: block (redis, secret_file)"
            )
        if lc.tls.session_cache.mode != "lru":
            yield ConfigProblem(
                where, f"shared: true needs mode: lru, got {lc.tls.session_cache.mode}"
            )
        if config.tls_engine != "full":
            yield ConfigProblem(where, "shared: true needs tls_engine: full (session callbacks)")
