"""TicketKey and KeyRing: shapes, rotation schedule, grace window, fixed rings, stats view."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateproxy.core.ticket_keys import (
    KeyInfo,
    KeyRing,
    TicketKey,
    TicketStats,
    keep_known,
    keys_from_wire,
    keys_to_wire,
    new_ticket_key,
)


def counter_random() -> Callable[[int], bytes]:
    """Deterministic, never-repeating 'random' bytes: each call is filled with a new counter."""
    state = {"n": 0}

    def random_bytes(size: int) -> bytes:
        state["n"] += 1
        return state["n"].to_bytes(8, "big").rjust(size, b"\xaa")[:size]

    return random_bytes


def key(tag: int, *, size: int = 32, created: float = 0.0) -> TicketKey:
    return TicketKey(
        name=bytes([tag]) * 16,
        aes_key=bytes([tag ^ 0x55]) * size,
        hmac_key=bytes([tag ^ 0xAA]) * size,
        created=created,
    )


# --- TicketKey ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "aes", "hmac", "message"),
    [
        (15, 32, 32, "name: expected 16 bytes, got 15"),
        (17, 32, 32, "name: expected 16 bytes, got 17"),
        (16, 24, 24, "AES key: expected 16 or 32 bytes, got 24"),
        (16, 32, 16, "HMAC key: expected 32 bytes .* got 16"),
        (16, 16, 32, "HMAC key: expected 16 bytes .* got 32"),
    ],
)
def test_ticket_key_shapes_rejected(name: int, aes: int, hmac: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TicketKey(name=b"n" * name, aes_key=b"a" * aes, hmac_key=b"h" * hmac, created=0.0)


@pytest.mark.parametrize(("size", "cipher"), [(32, "aes-256-cbc"), (16, "aes-128-cbc")])
def test_ticket_key_cipher(size: int, cipher: str) -> None:
    assert key(1, size=size).cipher == cipher


def test_name_prefix_and_repr_hide_key_material() -> None:
    k = TicketKey(
        name=bytes.fromhex("deadbeef") + b"\x00" * 12,
        aes_key=b"A" * 32,
        hmac_key=b"H" * 32,
        created=5.0,
    )
    assert k.name_prefix() == "deadbeef"
    assert "AAAA" not in repr(k)
    assert "HHHH" not in repr(k)


def test_new_ticket_key_is_aes256_from_injected_randomness() -> None:
    calls: list[int] = []

    def random_bytes(size: int) -> bytes:
        calls.append(size)
        return bytes([len(calls)]) * size

    k = new_ticket_key(random_bytes=random_bytes, now=42.0)
    assert sorted(calls) == [16, 32, 32]
    assert (len(k.name), len(k.aes_key), len(k.hmac_key)) == (16, 32, 32)
    assert k.aes_key != k.hmac_key
    assert (k.cipher, k.created) == ("aes-256-cbc", 42.0)


# --- rotating ring ------------------------------------------------------------------------------


def test_rotating_ring_starts_with_one_key() -> None:
    ring = KeyRing(rotate_every=3600.0, keep=2, random_bytes=counter_random(), now=100.0)
    assert ring.rotating
    assert len(ring.keys()) == 1
    assert ring.encryption_key().created == 100.0
    assert ring.next_rotation_at() == 3700.0
    assert ring.lookup(ring.encryption_key().name) == (ring.encryption_key(), True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rotate_every": 0.0, "keep": 1}, "rotate_every"),
        ({"rotate_every": 1.0, "keep": -1}, "keep"),
    ],
)
def test_rotating_ring_rejects_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeyRing(random_bytes=counter_random(), now=0.0, **kwargs)  # type: ignore[arg-type]


# (time of the rotate_if_due call, rotated?, next rotation afterwards)
SCHEDULE = [
    (50.0, False, 100.0),
    (99.999, False, 100.0),
    (100.0, True, 200.0),
    (150.0, False, 200.0),
    (530.0, True, 630.0),  # several periods missed: one rotation, the new key is made now
    (629.0, False, 630.0),
    (630.0, True, 730.0),
]


def test_rotation_schedule() -> None:
    ring = KeyRing(rotate_every=100.0, keep=5, random_bytes=counter_random(), now=0.0)
    rotations = 0
    for at, rotated, next_at in SCHEDULE:
        assert ring.rotate_if_due(now=at) is rotated, at
        rotations += rotated
        assert ring.next_rotation_at() == next_at
        assert len(ring.keys()) == 1 + rotations
        if rotated:
            assert ring.encryption_key().created == at


@pytest.mark.parametrize("keep", [0, 1, 2, 5])
def test_grace_window_keeps_at_most_keep_older_keys(keep: int) -> None:
    ring = KeyRing(rotate_every=10.0, keep=keep, random_bytes=counter_random(), now=0.0)
    history = [ring.encryption_key()]
    for i in range(1, 8):
        history.append(ring.rotate(now=float(i * 10)))
        assert ring.keys() == tuple(reversed(history))[: keep + 1]
    current = history[-1]
    assert ring.encryption_key() is current
    assert ring.lookup(current.name) == (current, True)
    for age, old in enumerate(reversed(history[:-1]), start=1):
        expected = (old, False) if age <= keep else None
        assert ring.lookup(old.name) == expected


def test_lookup_unknown_name() -> None:
    ring = KeyRing(rotate_every=10.0, keep=1, random_bytes=counter_random(), now=0.0)
    assert ring.lookup(b"\x00" * 16) is None
    assert ring.lookup(b"short") is None


def test_rotation_swaps_an_immutable_tuple() -> None:
    ring = KeyRing(rotate_every=10.0, keep=2, random_bytes=counter_random(), now=0.0)
    before = ring.keys()
    assert isinstance(before, tuple)
    ring.rotate(now=10.0)
    assert len(before) == 1  # a reader holding the old tuple sees a consistent old ring
    assert ring.keys()[1] is before[0]


def test_duplicate_name_from_bad_randomness_is_refused() -> None:
    ring = KeyRing(rotate_every=10.0, keep=2, random_bytes=lambda n: b"\x01" * n, now=0.0)
    with pytest.raises(ValueError, match="unique"):
        ring.rotate(now=10.0)
    assert len(ring.keys()) == 1  # the ring is unchanged


def test_describe() -> None:
    ring = KeyRing(rotate_every=10.0, keep=2, random_bytes=counter_random(), now=0.0)
    ring.rotate(now=10.0)
    ring.rotate(now=25.0)
    keys = ring.keys()
    assert ring.describe(now=30.0) == [
        KeyInfo(name_prefix=keys[0].name_prefix(), role="encrypt", age_s=5.0),
        KeyInfo(name_prefix=keys[1].name_prefix(), role="decrypt", age_s=20.0),
        KeyInfo(name_prefix=keys[2].name_prefix(), role="decrypt", age_s=30.0),
    ]


def test_replace_on_rotating_ring_keeps_schedule_and_cuts_to_keep() -> None:
    ring = KeyRing(rotate_every=10.0, keep=1, random_bytes=counter_random(), now=0.0)
    ring.replace([key(1), key(2), key(3)])
    assert ring.keys() == (key(1), key(2))
    assert ring.next_rotation_at() == 10.0
    assert ring.rotate_if_due(now=10.0)
    assert ring.keys()[1] == key(1)


# --- fixed ring ---------------------------------------------------------------------------------


def test_fixed_ring_from_keys() -> None:
    ring = KeyRing.from_keys([key(1), key(2), key(3)])
    assert not ring.rotating
    assert ring.next_rotation_at() is None
    assert ring.encryption_key() == key(1)
    assert ring.keys() == (key(1), key(2), key(3))
    assert ring.lookup(key(1).name) == (key(1), True)
    assert ring.lookup(key(3).name) == (key(3), False)
    assert ring.rotate_if_due(now=1e12) is False
    with pytest.raises(ValueError, match="key files"):
        ring.rotate(now=0.0)


@pytest.mark.parametrize(
    ("keys", "message"),
    [([], "at least one key"), ([key(1), key(2), key(1)], "unique")],
)
def test_fixed_ring_rejects_bad_lists(keys: list[TicketKey], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeyRing.from_keys(keys)
    ring = KeyRing.from_keys([key(9)])
    with pytest.raises(ValueError, match=message):
        ring.replace(keys)
    assert ring.keys() == (key(9),)  # a failed replace leaves the ring as it was


def test_fixed_ring_replace_on_reload() -> None:
    ring = KeyRing.from_keys([key(1), key(2)])
    ring.replace([key(3), key(1)])
    assert ring.encryption_key() == key(3)
    assert ring.lookup(key(1).name) == (key(1), False)
    assert ring.lookup(key(2).name) is None


def test_mixed_sizes_allowed_in_a_fixed_ring() -> None:
    ring = KeyRing.from_keys([key(1, size=32), key(2, size=16)])
    keys = ring.keys()
    assert [k.cipher for k in keys] == ["aes-256-cbc", "aes-128-cbc"]


def test_ticket_stats_are_mutable_counters() -> None:
    stats = TicketStats()
    stats.issued += 2
    stats.renewed += 1
    assert stats == TicketStats(issued=2, renewed=1, rejected=0, decrypted=0)


@settings(deadline=None)
@given(
    keep=st.integers(0, 4),
    steps=st.lists(st.floats(0.0, 500.0, allow_nan=False), min_size=1, max_size=40),
)
def test_ring_invariants_under_random_clock(keep: int, steps: list[float]) -> None:
    ring = KeyRing(rotate_every=100.0, keep=keep, random_bytes=counter_random(), now=0.0)
    now = 0.0
    for step in steps:
        now += step
        ring.rotate_if_due(now=now)
        keys = ring.keys()
        assert 1 <= len(keys) <= keep + 1
        assert len({k.name for k in keys}) == len(keys)
        assert [ring.lookup(k.name) for k in keys] == [(k, i == 0) for i, k in enumerate(keys)]
        next_at = ring.next_rotation_at()
        assert next_at is not None and now < next_at <= now + 100.0
        created = [k.created for k in keys]
        assert created == sorted(created, reverse=True)


# --- keep_known -------------------------------------------------------------------------------


def test_keep_known_keeps_the_creation_of_keys_read_again() -> None:
    old = [key(1, created=10.0), key(2, created=5.0)]
    reread = [key(3, created=99.0), key(1, created=99.0), key(2, size=16, created=99.0)]
    kept = keep_known(old, reread)
    assert [k.created for k in kept] == [99.0, 10.0, 99.0]  # key 2 changed material: new
    assert [k.name for k in kept] == [k.name for k in reread]  # the new order


# --- keys_to_wire / keys_from_wire --------------------------------------------------------------


def test_wire_round_trip_preserves_key_material_and_order() -> None:
    keys = [key(1, created=90.0), key(2, size=16, created=40.0), key(3, created=100.0)]
    back = keys_from_wire(keys_to_wire(keys, now=100.0), now=100.0)
    assert [(k.name, k.aes_key, k.hmac_key) for k in back] == [
        (k.name, k.aes_key, k.hmac_key) for k in keys
    ]
    assert [k.cipher for k in back] == ["aes-256-cbc", "aes-128-cbc", "aes-256-cbc"]
    assert back == keys  # same clock, so created survives too


def test_wire_carries_ages_not_clock_readings() -> None:
    keys = [key(1, created=1000.0), key(2, created=400.0)]
    wire = keys_to_wire(keys, now=1000.0)
    assert [item["age_s"] for item in wire] == [0.0, 600.0]
    # the worker's monotonic clock is unrelated to the supervisor's
    back = keys_from_wire(wire, now=5.0)
    assert [k.created for k in back] == [5.0, -595.0]
    ring = KeyRing.from_keys(back)
    assert [info.age_s for info in ring.describe(now=5.0)] == [0.0, 600.0]


def test_wire_age_never_negative_and_defaults_to_zero() -> None:
    (item,) = keys_to_wire([key(1, created=50.0)], now=10.0)  # created "in the future"
    assert item["age_s"] == 0.0
    del item["age_s"]
    (back,) = keys_from_wire([item], now=7.0)
    assert back.created == 7.0


def test_wire_is_json_safe_hex() -> None:
    wire = keys_to_wire([key(0xAB)], now=0.0)
    assert json.loads(json.dumps(wire)) == wire
    assert wire[0]["name"] == "ab" * 16
    assert wire[0]["aes"] == bytes([0xAB ^ 0x55]).hex() * 32
    assert wire[0]["hmac"] == bytes([0xAB ^ 0xAA]).hex() * 32


def test_wire_rejects_bad_shapes_through_ticket_key_validation() -> None:
    (item,) = keys_to_wire([key(1)], now=0.0)
    item["hmac"] = "00" * 16
    with pytest.raises(ValueError, match="HMAC key: expected 32 bytes"):
        keys_from_wire([item], now=0.0)


def test_keys_from_the_wire_hide_their_material_in_repr() -> None:
    original = TicketKey(name=b"N" * 16, aes_key=b"\x11" * 32, hmac_key=b"\x22" * 32, created=0.0)
    (back,) = keys_from_wire(keys_to_wire([original], now=0.0), now=0.0)
    text = repr(back)
    assert "name=" in text
    for secret in (back.aes_key, back.hmac_key):
        assert repr(secret) not in text
        assert secret.hex() not in text
    assert "aes_key" not in text and "hmac_key" not in text
    ring_text = repr(KeyRing.from_keys([back]))
    assert back.aes_key.hex() not in ring_text and back.hmac_key.hex() not in ring_text
