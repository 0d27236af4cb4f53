"""MAC'd session ids: ours check, forged / foreign / other-listener ones do not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateproxy.core.session_ids import ID_LEN, RANDOM_LEN, SessionIds

SECRET = b"s" * 32


def test_issued_ids_check_on_every_host_with_the_same_secret() -> None:
    session_id = SessionIds(SECRET, listener="public").issue(b"r" * RANDOM_LEN)
    assert len(session_id) == ID_LEN
    assert SessionIds(SECRET, listener="public").is_ours(session_id)


def test_other_secret_other_listener_and_tampering_fail() -> None:
    session_id = SessionIds(SECRET, listener="public").issue(b"r" * RANDOM_LEN)
    assert not SessionIds(b"t" * 32, listener="public").is_ours(session_id)
    assert not SessionIds(SECRET, listener="admin").is_ours(session_id)
    tampered = bytes([session_id[0] ^ 1]) + session_id[1:]
    assert not SessionIds(SECRET, listener="public").is_ours(tampered)
    assert not SessionIds(SECRET, listener="public").is_ours(session_id[:-1])


@given(st.binary(max_size=40))
def test_random_ids_are_not_ours(candidate: bytes) -> None:
    assert not SessionIds(SECRET, listener="public").is_ours(candidate)


def test_bad_inputs_name_the_rule() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        SessionIds(b"short", listener="public")
    with pytest.raises(ValueError, match="16 random bytes"):
        SessionIds(SECRET, listener="public").issue(b"r")
