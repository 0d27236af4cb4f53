"""Sealing session bytes for the shared store (``Sealer.seal_bytes`` / ``open_bytes``)."""

from __future__ import annotations

import pytest

from gateproxy.core.fleet_seal import SESSIONS_LABEL, Sealer, SealError

SECRET = b"f" * 32


def test_round_trip_bound_to_the_store_key_and_label() -> None:
    sealer = Sealer(SECRET, label=SESSIONS_LABEL)
    value = sealer.seal_bytes(b"der", store_key="gp:sessions:a:01", nonce=b"n" * 12)
    assert b"der" not in value
    assert sealer.open_bytes(value, store_key="gp:sessions:a:01") == b"der"
    with pytest.raises(SealError, match="does not open"):
        sealer.open_bytes(value, store_key="gp:sessions:b:01")
    with pytest.raises(SealError, match="does not open"):
        Sealer(SECRET).open_bytes(value, store_key="gp:sessions:a:01")  # the ticket-key label
    with pytest.raises(SealError, match="not a sealed"):
        sealer.open_bytes(b"junk", store_key="gp:sessions:a:01")
