"""Sealing fleet ticket keys: a round trip opens, and another secret, another store key or one
changed byte is refused with a SealError that names the store key."""

from __future__ import annotations

import os

import pytest

from gateproxy.core.fleet_seal import MIN_SECRET_LEN, NONCE_LEN, Sealer
from gateproxy.core.ticket_keys import new_ticket_key
from gateproxy.errors import GateproxyError, SealError

SECRET = bytes(range(32))
STORE_KEY = "gateproxy:ticket-keys:public:123"


def _sealed() -> tuple[bytes, bytes]:
    key = new_ticket_key(random_bytes=os.urandom, now=0.0)
    value = Sealer(SECRET).seal(key, store_key=STORE_KEY, nonce=os.urandom(NONCE_LEN))
    return key.name + key.aes_key + key.hmac_key, value


def test_round_trip_gives_the_same_key_and_the_value_is_not_the_key() -> None:
    key = new_ticket_key(random_bytes=os.urandom, now=0.0)
    value = Sealer(SECRET).seal(key, store_key=STORE_KEY, nonce=os.urandom(NONCE_LEN))
    opened = Sealer(bytes(SECRET)).open(value, store_key=STORE_KEY, created=1230.0)
    assert (opened.name, opened.aes_key, opened.hmac_key) == (key.name, key.aes_key, key.hmac_key)
    assert opened.created == 1230.0
    for part in (key.name, key.aes_key, key.hmac_key):
        assert part not in value


def test_two_seals_of_one_key_differ_by_their_nonce() -> None:
    key = new_ticket_key(random_bytes=os.urandom, now=0.0)
    sealer = Sealer(SECRET)
    first = sealer.seal(key, store_key=STORE_KEY, nonce=os.urandom(NONCE_LEN))
    second = sealer.seal(key, store_key=STORE_KEY, nonce=os.urandom(NONCE_LEN))
    assert first != second


def test_another_secret_is_refused() -> None:
    _, value = _sealed()
    with pytest.raises(SealError, match=f"{STORE_KEY}: the value does not open"):
        Sealer(b"\x01" * 32).open(value, store_key=STORE_KEY, created=0.0)


def test_a_value_copied_to_another_store_key_is_refused() -> None:
    _, value = _sealed()
    other = "gateproxy:ticket-keys:admin:123"
    with pytest.raises(SealError, match=f"{other}: .*copied from another key"):
        Sealer(SECRET).open(value, store_key=other, created=0.0)
    with pytest.raises(SealError):
        Sealer(SECRET).open(value, store_key="gateproxy:ticket-keys:public:124", created=0.0)


@pytest.mark.parametrize("index", [0, 4, 4 + NONCE_LEN, -1])
def test_a_changed_byte_is_refused(index: int) -> None:
    _, value = _sealed()
    damaged = bytearray(value)
    damaged[index] ^= 0x01
    with pytest.raises(SealError, match=STORE_KEY):
        Sealer(SECRET).open(bytes(damaged), store_key=STORE_KEY, created=0.0)


@pytest.mark.parametrize("value", [b"", b"gpk1", b"raw key bytes, never sealed" * 4])
def test_short_or_unsealed_values_are_refused(value: bytes) -> None:
    with pytest.raises(SealError, match="not a sealed gateproxy ticket key"):
        Sealer(SECRET).open(value, store_key=STORE_KEY, created=0.0)


def test_seal_errors_are_gateproxy_errors() -> None:
    assert issubclass(SealError, GateproxyError)


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match=f"at least {MIN_SECRET_LEN} bytes, got 31"):
        Sealer(b"x" * 31)
