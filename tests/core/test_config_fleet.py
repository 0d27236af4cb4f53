"""The ``fleet:`` block and ``tls.tickets.source: fleet``: every problem names its dotted path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateproxy.core.config import load_config_data
from gateproxy.errors import ConfigError
from tests.helpers.proxy import proxy_config, tls_listener

FLEET = {"redis": {"url": "redis://127.0.0.1:6379/0"}, "secret_file": "fleet.secret"}


def _config(tickets: dict[str, Any], **top: Any) -> dict[str, Any]:
    listener = tls_listener(cert=Path("c.pem"), key=Path("k.pem"), tls={"tickets": tickets})
    return proxy_config([listener], {"app": {"servers": ["127.0.0.1:9"]}}, **top)


def _problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config_data(raw, source="f.yaml")
    return str(caught.value).splitlines()


def test_a_fleet_listener_with_a_fleet_block_loads_with_the_defaults() -> None:
    config = load_config_data(_config({"source": "fleet"}, fleet=FLEET), source="f.yaml")
    assert config.fleet is not None
    assert config.fleet.redis.key_prefix == "gateproxy"
    assert config.fleet.redis.timeout == 0.5
    assert config.listeners[0].tls is not None
    assert config.listeners[0].tls.tickets.source == "fleet"


def test_source_fleet_without_a_fleet_block_is_refused() -> None:
    assert _problems(_config({"source": "fleet"})) == [
        "f.yaml: listeners[0].tls.tickets.source: source: fleet needs a top-level fleet: "
        "block (redis, ...)"
    ]


@pytest.mark.parametrize(
    ("tickets", "top", "rule"),
    [
        ({"key_files": ["a.key"]}, {}, "source: fleet and key_files exclude each other"),
        ({"stateless": False}, {}, "needs enabled: true and stateless: true"),
        ({}, {"tls_engine": "stdlib_only"}, "needs tls_engine: full"),
    ],
)
def test_source_fleet_conflicts_name_the_listener(
    tickets: dict[str, Any], top: dict[str, Any], rule: str
) -> None:
    (line,) = _problems(_config({"source": "fleet", **tickets}, fleet=FLEET, **top))
    assert line.startswith("f.yaml: listeners[0].tls.tickets.source: ") and rule in line


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:6379", "got 'http://127.0.0.1:6379'"),
        ("redis://:6379/0", "got 'redis://:6379/0'"),
        ("redis://127.0.0.1:99999/0", "(bad port)"),
        ("redis://127.0.0.1:6379/zero", "(the db is a number)"),
        (6379, "got 6379"),
    ],
)
def test_a_bad_redis_url_is_refused_at_its_path(url: object, why: str) -> None:
    fleet = {**FLEET, "redis": {"url": url}}
    (line,) = _problems(_config({}, fleet=fleet))
    assert line.startswith("f.yaml: fleet.redis.url: ") and why in line


@pytest.mark.parametrize(
    ("block", "path"),
    [
        ({"redis": {}}, "fleet.secret_file"),
        ({**FLEET, "redis": {"timeout": "0s"}}, "fleet.redis.timeout"),
        ({**FLEET, "redis": {"key_prefix": "has space"}}, "fleet.redis.key_prefix"),
        ({**FLEET, "redis": {"host": "x"}}, "fleet.redis.host"),
    ],
)
def test_other_fleet_block_problems_name_their_path(block: dict[str, Any], path: str) -> None:
    (line,) = _problems(_config({}, fleet=block))
    assert line.startswith(f"f.yaml: {path}: "), line
