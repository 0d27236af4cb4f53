"""Fleet slot arithmetic and key-state decisions, with explicit wall-clock ``now``."""

from __future__ import annotations

import itertools

from gateproxy.core.fleet_keys import FleetKeyState, slot_of, wanted_slots
from gateproxy.core.ticket_keys import new_ticket_key

_counter = itertools.count(1)


def rand(size: int) -> bytes:
    return next(_counter).to_bytes(8, "big").rjust(size, b"\x5a")[:size]


def test_slot_is_floor_of_now_over_period() -> None:
    assert slot_of(now=0.0, rotate_every=10) == 0
    assert slot_of(now=9.999, rotate_every=10) == 0
    assert slot_of(now=10.0, rotate_every=10) == 1
    assert wanted_slots(now=25.0, rotate_every=10, keep=2) == (3, 2, 1, 0)


def _state_with_store(store: dict[int, object], now: float) -> FleetKeyState:
    state = FleetKeyState("public", rotate_every=10, keep=1)
    for slot in state.missing(now=now):
        if slot >= state.current_slot(now=now):
            key = store.setdefault(slot, new_ticket_key(random_bytes=rand, now=slot * 10.0))
            state.learn(slot, key, now=now, created_here=False)  # type: ignore[arg-type]
        elif slot in store:
            state.learn(slot, store[slot], now=now, created_here=False)  # type: ignore[arg-type]
    return state


def test_skewed_clocks_still_read_each_others_tickets() -> None:
    store: dict[int, object] = {}
    a = _state_with_store(store, now=19.0)  # slot 1
    b = _state_with_store(store, now=22.0)  # 3 s ahead: slot 2
    a_names = {k.name for k in a.ring_keys(now=19.0)}
    b_names = {k.name for k in b.ring_keys(now=22.0)}
    assert b.ring_keys(now=22.0)[0].name in a_names  # a holds b's key as next, decrypt-only
    assert a.ring_keys(now=19.0)[0].name in b_names  # b holds a's key as previous
    assert a.ring_keys(now=19.0)[0].name != b.ring_keys(now=22.0)[0].name


def test_store_down_keeps_held_key_then_falls_back_then_rejoins() -> None:
    state = FleetKeyState("public", rotate_every=10, keep=1)
    fleet = new_ticket_key(random_bytes=rand, now=0.0)
    state.learn(0, fleet, now=1.0, created_here=True)
    assert not state.store_failed(now=2.0, reason="down", random_bytes=rand)
    assert state.ring_keys(now=2.0)[0] == fleet and state.stats.fallbacks == 0
    assert state.store_failed(now=11.0, reason="down", random_bytes=rand)  # slot 1: no key
    assert state.source(now=11.0) == "local" and state.stats.fallbacks == 1
    local = state.ring_keys(now=11.0)[0]
    assert 1 in state.missing(now=11.0)  # rejoin: ask again
    back = new_ticket_key(random_bytes=rand, now=10.0)
    state.learn(1, back, now=12.0, created_here=False)
    ring = state.ring_keys(now=12.0)
    assert ring[0] == back and local in ring[1:] and state.source(now=12.0) == "fleet"


def test_a_rejoin_is_counted_once_when_the_store_works_again() -> None:
    state = FleetKeyState("public", rotate_every=10, keep=1)
    assert state.store_failed(now=1.0, reason="down", random_bytes=rand)
    assert not state.store_failed(now=2.0, reason="down", random_bytes=rand)
    assert state.store_down and state.stats.rejoins == 0
    state.learn(0, new_ticket_key(random_bytes=rand, now=0.0), now=3.0, created_here=False)
    state.learn(1, new_ticket_key(random_bytes=rand, now=10.0), now=3.0, created_here=True)
    assert not state.store_down and state.stats.rejoins == 1
    assert state.describe(now=3.0)["rejoins"] == 1


def test_slot_keys_are_zeroed_when_they_leave_the_window() -> None:
    state = FleetKeyState("public", rotate_every=10, keep=1)
    state.learn(0, new_ticket_key(random_bytes=rand, now=0.0), now=1.0, created_here=True)
    held = state._fleet[0]  # the one bytearray the state keeps for slot 0
    assert any(held.material)
    state.learn(2, new_ticket_key(random_bytes=rand, now=20.0), now=21.0, created_here=True)
    assert 0 not in state._fleet  # slot 0 is older than current (2) - keep (1)
    assert held.material == bytearray(len(held.material)) and state.stats.wiped == 1
