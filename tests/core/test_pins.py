"""core.pins: the pin store over an LruTable (the guard-level rules are in test_session_guard)."""

from __future__ import annotations

import pytest

from gateproxy.core.pins import (
    MAX_PIN_BYTES,
    TablePins,
    cookie_header,
    memory_pins,
    parse_cookie_header,
)
from gateproxy.core.shared_table import LruTable

KEY = ("10.0.0.1", "app")


def test_cookie_header_round_trip() -> None:
    cookies = {b"JSESSIONID": b"A1", b"SESSION": b"x=y"}
    assert cookie_header(cookies) == b"JSESSIONID=A1; SESSION=x=y"
    assert parse_cookie_header(cookie_header(cookies)) == cookies
    assert parse_cookie_header(b"a=1; junk; =2; a=3;") == {b"a": b"1"}
    assert parse_cookie_header(None) == {}


def test_merge_delete_and_bounds() -> None:
    pins = memory_pins(max_entries=2, idle_timeout=10.0)
    assert pins.update(KEY, set_={b"JSESSIONID": b"A"}, deleted=set(), now=0.0)
    assert pins.update(KEY, set_={b"SESSION": b"T"}, deleted=set(), now=1.0)
    assert pins.lookup(KEY, now=2.0) == b"JSESSIONID=A; SESSION=T"
    assert not pins.update(KEY, set_={}, deleted={b"JSESSIONID", b"SESSION"}, now=3.0)
    assert pins.lookup(KEY, now=3.0) is None and len(pins) == 0
    huge = {b"JSESSIONID": b"x" * MAX_PIN_BYTES}
    assert not pins.update(KEY, set_=huge, deleted=set(), now=4.0)
    for i in range(3):
        pins.update((f"c{i}", "app"), set_={b"J": b"%d" % i}, deleted=set(), now=5.0 + i)
    assert len(pins) == 2 == pins.max_entries
    assert pins.lookup(("c0", "app"), now=8.0) is None
    assert pins.lookup(("c2", "app"), now=16.9) == b"J=2"  # set at 7.0: 9.9 s idle
    assert pins.lookup(("c1", "app"), now=16.9) is None  # set at 6.0: 10.9 s idle


def test_a_corrupt_table_is_cleared_and_counted() -> None:
    table = LruTable.in_memory(slots=2, value_cap=MAX_PIN_BYTES)
    pins = TablePins(table, idle_timeout=10.0)
    pins.update(KEY, set_={b"J": b"A"}, deleted=set(), now=0.0)
    table._w[7] = 99  # the LRU tail points outside the table
    assert pins.lookup(KEY, now=1.0) is None  # expire walks from the tail: corrupt
    assert pins.resets == 1 and len(pins) == 0
    assert pins.update(KEY, set_={b"J": b"B"}, deleted=set(), now=2.0)
    assert pins.lookup(KEY, now=3.0) == b"J=B"


def test_the_table_must_hold_a_whole_pin() -> None:
    small = LruTable.in_memory(slots=1, value_cap=8)
    with pytest.raises(ValueError, match="pin values need 1024 bytes"):
        TablePins(small, idle_timeout=1.0)
