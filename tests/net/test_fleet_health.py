"""net.fleet_health: one shared memory per generation, handed to its workers; stats added."""

from __future__ import annotations

import os

import pytest

from gateproxy.core.config import Config, SessionGuardConfig, load_config_data
from gateproxy.core.metrics import merge_stats
from gateproxy.net.fleet_health import FleetHealth

CONFIG = load_config_data(
    {
        "listeners": [{"name": "p", "bind": "127.0.0.1:0", "routes": [{"upstream": "app"}]}],
        "upstreams": {"app": {"servers": ["127.0.0.1:1"], "health": {}}},
    }
)


def test_generations_share_memory_while_its_layout_holds_and_it_is_closed_when_unused() -> None:
    fleet = FleetHealth()
    fleet.board.record("app", "127.0.0.1:1", ok=False, rise=2, fall=3)
    setup, fds = fleet.setup(1, CONFIG)
    again, _ = fleet.setup(1, CONFIG)  # a second worker, or a restarted one
    reloaded, _ = fleet.setup(2, CONFIG)  # a reload with the same layout: pins survive it
    bigger, bigger_fds = fleet.setup(3, _with(max_pinned=20))  # another layout: new memory
    assert setup == again == reloaded and fds == [setup["shared_fd"]]
    assert bigger["shared_fd"] != setup["shared_fd"] and bigger_fds == [bigger["shared_fd"]]
    assert setup["verdicts"] == [{"upstream": "app", "server": "127.0.0.1:1", "healthy": False}]
    fleet.forget(1)
    os.fstat(fds[0])  # generation 2 still uses it
    fleet.forget(2)
    with pytest.raises(OSError):
        os.fstat(fds[0])
    fleet.forget(2)  # twice: nothing left to close
    fleet.forget(3)


def _with(**guard: object) -> Config:
    return CONFIG.model_copy(update={"session_guard": SessionGuardConfig.model_validate(guard)})


def test_the_checkers_counters_are_added_to_the_merged_stats() -> None:
    fleet = FleetHealth()
    fleet.counters.minted = fleet.counters.minted_by_health_checks = 1
    tree = merge_stats([])
    fleet.add_stats(tree)
    guard = tree["session_guard"]
    assert isinstance(guard, dict)
    assert guard["minted"] == 1 and guard["minted_by_health_checks"] == 1
