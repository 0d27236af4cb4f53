"""``tls.session_cache.shared``: defaults and the cross-checks with the fleet block."""

from __future__ import annotations

from typing import Any

import pytest

from gateproxy.core.config import SessionCacheConfig, load_config_data
from gateproxy.errors import ConfigError
from tests.core.test_config import _with

FLEET = {"redis": {"url": "redis://127.0.0.1:6379/0"}, "secret_file": "fleet.secret"}
SHARED = "listeners[0].tls.session_cache.shared"


def _data(*, fleet: bool = True, **cache: object) -> Any:
    data: Any = _with("listeners[0].tls.session_cache", {"shared": True, **cache})
    if fleet:
        data["fleet"] = FLEET
    return data


def _cache(data: Any) -> SessionCacheConfig:
    tls = load_config_data(data, source="gp.yaml").listeners[0].tls
    assert tls is not None
    return tls.session_cache


def _problems(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_data(data, source="gp.yaml")
    return str(info.value).splitlines()


def test_defaults_are_off_with_a_20ms_timeout() -> None:
    assert (SessionCacheConfig().shared, SessionCacheConfig().shared_timeout) == (False, 0.02)


def test_shared_with_a_fleet_block_loads() -> None:
    cache = _cache(_data(shared_timeout="50ms"))
    assert (cache.shared, cache.shared_timeout) == (True, 0.05)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_data(fleet=False), f"gp.yaml: {SHARED}: shared: true needs a top-level fleet: block"),
        (_data(mode="openssl"), f"gp.yaml: {SHARED}: shared: true needs mode: lru, got openssl"),
        (
            {**_data(), "tls_engine": "stdlib_only"},
            f"gp.yaml: {SHARED}: shared: true needs tls_engine: full",
        ),
    ],
)
def test_shared_needs_fleet_lru_and_the_full_engine(data: object, expected: str) -> None:
    problems = _problems(data)
    assert any(line.startswith(expected) for line in problems), problems


def test_timeout_must_be_positive() -> None:
    problems = _problems(_data(shared_timeout=0))
    assert any(
        p.startswith("gp.yaml: listeners[0].tls.session_cache.shared_timeout") for p in problems
    )
