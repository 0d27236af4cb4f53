"""Which clients are probers (health checkers): by source address (CIDRs) or User-Agent.

Probers get a TLS context with no session state and ``probe_limits``; the session guard treats
their cookie-less requests specially. Classification by address happens at accept time, before the
TLS handshake; by User-Agent only once a request is read.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from gateproxy.core.access import IPNetwork, client_ip


class ProbeClassifier:
    """Matches client addresses against CIDRs and User-Agents against regexes."""

    def __init__(self, *, cidrs: Sequence[str], user_agents: Sequence[str] = ()) -> None:
        self._networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(c, strict=False) for c in cidrs
        )
        self._agents = tuple(re.compile(p.encode()) for p in user_agents)
        self._cache: dict[str, bool] = {}

    @property
    def has_networks(self) -> bool:
        return bool(self._networks)

    def is_probe_address(self, address: str) -> bool:
        """True when ``address`` (an IP literal) lies in one of the probe CIDRs."""
        if not self._networks:
            return False
        known = self._cache.get(address)
        if known is not None:
            return known
        ip = client_ip(address)
        if ip is None:
            return False
        found = any(ip in net for net in self._networks)
        if len(self._cache) > 4096:
            self._cache.clear()  # bounded: a memo, not a table that grows per client
        self._cache[address] = found
        return found

    def is_probe_agent(self, user_agent: bytes | None) -> bool:
        """True when the User-Agent matches one of the configured patterns."""
        if user_agent is None or not self._agents:
            return False
        return any(p.search(user_agent) for p in self._agents)
