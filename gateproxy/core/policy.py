"""Everything the connection machine consults about its listener, built once per generation.

A :class:`ListenerPolicy` is the pure half of a listener: limits, routes, health checks, probe
classification, the session guard, counters and the upstreams' balancers. :class:`ServiceState`
is the process-wide part that changes under the machine's feet, set by the shell: draining
(SIGTERM), retiring (a reload replaced this worker) and the current ``Date`` header value,
refreshed once a second so no response formats a date of its own.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateproxy.core.access import AccessList
from gateproxy.core.client_address import ClientTrust
from gateproxy.core.config import Config, LimitsConfig, ListenerConfig
from gateproxy.core.health import HealthMatcher
from gateproxy.core.metrics import ListenerCounters
from gateproxy.core.probes import ProbeClassifier
from gateproxy.core.rate_limit import RateLimits
from gateproxy.core.routing import Router
from gateproxy.core.session_guard import SessionGuard
from gateproxy.core.upstream_state import UpstreamState


class ServiceState:
    """Process-wide flags the request path reads (set by the daemon)."""

    __slots__ = ("date", "draining", "retiring", "shared_clock_offset")

    def __init__(self) -> None:
        self.draining = False  # stopping: health answers 503, connections close after a response
        self.retiring = False  # replaced by a reload: connections close after their next response
        self.date = b""  # IMF-fixdate of the current second ("Sun, 06 Nov 1994 08:49:37 GMT")
        # The machines' ``now`` minus the clock every worker shares (CLOCK_MONOTONIC): the
        # session guard's pins live in memory shared by the workers, so they take that clock.
        self.shared_clock_offset = 0.0


class ListenerPolicy:
    """The decisions' inputs for one listener."""

    __slots__ = (
        "access",
        "client_trust",
        "counters",
        "guard",
        "health",
        "limits",
        "name",
        "probe_limits",
        "probes",
        "rate_limits",
        "router",
        "service",
        "tls",
        "upstreams",
    )

    def __init__(
        self,
        *,
        name: str,
        limits: LimitsConfig,
        probe_limits: LimitsConfig,
        router: Router,
        health: HealthMatcher,
        probes: ProbeClassifier,
        guard: SessionGuard | None,
        counters: ListenerCounters,
        upstreams: Mapping[str, UpstreamState],
        service: ServiceState,
        tls: bool,
        access: AccessList | None = None,
        rate_limits: RateLimits | None = None,
        client_trust: ClientTrust | None = None,
    ) -> None:
        self.client_trust = client_trust or ClientTrust(proxy_trusted=None)
        self.name = name
        self.limits = limits
        self.probe_limits = probe_limits
        self.router = router
        self.health = health
        self.probes = probes
        self.guard = guard
        self.counters = counters
        self.upstreams = dict(upstreams)
        self.service = service
        self.tls = tls
        self.access = access if access else None  # None: everyone may connect
        self.rate_limits = rate_limits

    def limits_for(self, *, probe: bool) -> LimitsConfig:
        return self.probe_limits if probe else self.limits


def build_policy(
    config: Config,
    listener: ListenerConfig,
    *,
    counters: ListenerCounters,
    upstreams: Mapping[str, UpstreamState],
    service: ServiceState,
    guard: SessionGuard | None,
) -> ListenerPolicy:
    """The policy of ``listener`` of ``config`` (routes, health checks, probes, limits)."""
    return ListenerPolicy(
        name=listener.name,
        limits=listener.limits,
        probe_limits=listener.probe_limits.apply_to(listener.limits),
        router=Router(listener.routes),
        health=HealthMatcher(listener.health_checks),
        probes=ProbeClassifier(
            cidrs=listener.probe_clients, user_agents=config.session_guard.probe_user_agents
        ),
        guard=guard,
        counters=counters,
        upstreams=upstreams,
        service=service,
        tls=listener.tls is not None,
        access=AccessList(listener.access),
        rate_limits=(
            RateLimits(listener.rate_limit, counters=counters)
            if listener.rate_limit is not None
            else None
        ),
        client_trust=_client_trust(listener),
    )


def _client_trust(listener: ListenerConfig) -> ClientTrust:
    proxy = listener.proxy_protocol
    return ClientTrust(
        proxy_trusted=proxy.trusted if proxy is not None else None,
        forwarded_trusted=listener.trusted_forwarded,
    )
