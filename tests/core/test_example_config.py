"""The example config parses and shows exactly the built-in defaults."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateproxy.core.config import (
    AccessLogConfig,
    Config,
    LimitsConfig,
    SessionCacheConfig,
    SessionGuardConfig,
    TicketsConfig,
    TLSConfig,
    UpstreamConfig,
    load_config_text,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def _example() -> Config:
    path = CONFIG_DIR / "gateproxy.example.yaml"
    return load_config_text(path.read_text(), source=str(path))


def test_example_parses_and_matches_defaults() -> None:
    config = _example()
    listener = config.listeners[0]
    assert listener.tls is not None
    assert listener.tls.session_cache == SessionCacheConfig()
    assert listener.tls.tickets == TicketsConfig()
    assert listener.tls == TLSConfig(certificates=listener.tls.certificates)
    assert listener.limits == LimitsConfig()
    assert listener.access == () and listener.rate_limit is None  # no ACL, no rate limit
    assert config.session_guard == SessionGuardConfig()
    assert config.access_log == AccessLogConfig()
    defaults = UpstreamConfig(servers=("127.0.0.1:8080",))
    assert config.upstreams["app"] == defaults
    top = Config(listeners=config.listeners, upstreams=config.upstreams)
    assert (
        config.workers,
        config.shutdown_timeout,
        config.shutdown_delay,
        config.tls_engine,
        config.admin,
    ) == (
        top.workers,
        top.shutdown_timeout,
        top.shutdown_delay,
        top.tls_engine,
        top.admin,
    )


def test_example_lists_every_limit_key() -> None:
    raw = yaml.safe_load((CONFIG_DIR / "gateproxy.example.yaml").read_text())
    assert set(raw["listeners"][0]["limits"]) == set(LimitsConfig.model_fields)
    assert set(raw["listeners"][0]["tls"]) == set(TLSConfig.model_fields)
    assert set(raw["listeners"][0]["tls"]["session_cache"]) == set(SessionCacheConfig.model_fields)
    assert set(raw["listeners"][0]["tls"]["tickets"]) == set(TicketsConfig.model_fields)
    assert set(raw["upstreams"]["app"]) == set(UpstreamConfig.model_fields)
    assert set(raw["session_guard"]) == set(SessionGuardConfig.model_fields)
    assert set(raw) == set(Config.model_fields)


def test_minimal_config_parses() -> None:
    path = CONFIG_DIR / "minimal.yaml"
    config = load_config_text(path.read_text(), source=str(path))
    assert config.listeners[0].health_checks[0].path == "/healthz"


def test_the_first_config_in_the_readme_is_the_load_balancer_layout_and_parses() -> None:
    """The example people copy first classes the load balancers as probers (``probe_clients``):
    only that leaves no TLS state at all for them (TLS 1.2 tickets are a documented limit)."""
    readme = (CONFIG_DIR.parent / "README.md").read_text()
    first = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = load_config_text(first, source="README.md")
    listener = config.listeners[0]
    assert listener.probe_clients and listener.health_checks
    assert config.upstreams["app"].health is not None
    limit = readme.split("**Limit:** TLS 1.2 *with tickets* cannot take a ticket back", 1)
    assert len(limit) == 2 and "use `probe_clients`" in limit[1][:400]
