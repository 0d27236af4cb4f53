"""One configured upstream as the request path decides about it: config, balancer, counters.

The pure half of an upstream group. The connection machine picks servers, reports failures and
successes and counts requests here; the shell's ``net.upstream_group.UpstreamGroup`` adds the
keep-alive pool of real connections around the same object.
"""

from __future__ import annotations

from gateproxy.core.balancer import Balancer
from gateproxy.core.config import UpstreamConfig
from gateproxy.core.metrics import UpstreamCounters


class UpstreamState:
    """Balancer decisions and counters of one upstream (``upstreams.<name>``)."""

    __slots__ = ("balancer", "config", "counters", "name")

    def __init__(self, name: str, config: UpstreamConfig, *, counters: UpstreamCounters) -> None:
        self.name = name
        self.config = config
        self.counters = counters
        self.balancer = Balancer(
            config.servers, max_fails=config.max_fails, fail_timeout=config.fail_timeout
        )

    def servers_up(self, *, now: float) -> list[str]:
        """The servers routing may pick at ``now`` (healthy and not passively marked down)."""
        return [
            s.address for s in self.balancer.servers_state(now=now) if s.healthy and s.available
        ]

    def report_failure(self, server: str, *, reason: str, now: float) -> None:
        """A connect failure or timeout: counted, and the passive check marks the server."""
        self.counters.failed(reason)
        self.balancer.report_failure(server, now=now)
