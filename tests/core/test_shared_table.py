"""core.shared_table: the fixed-size LRU table in one flat buffer, against a dict model."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateproxy.core.shared_table import LruTable, TableCorrupt, table_key


def table(slots: int = 3, value_cap: int = 16) -> LruTable:
    return LruTable.in_memory(slots=slots, value_cap=value_cap)


K = [table_key("client", str(i)) for i in range(10)]


def test_keys_are_16_byte_digests_of_the_parts() -> None:
    assert len(K[0]) == 16 and len(set(K)) == 10
    assert table_key("a", "b") != table_key("a\x00b") != table_key("ab")
    assert table_key("a", "b") == table_key("a", "b")


def test_put_get_replace_delete() -> None:
    t = table()
    assert t.get(K[0], now=0.0) is None and len(t) == 0
    assert t.put(K[0], b"one", now=1.0) and t.get(K[0], now=1.0) == b"one"
    assert t.put(K[0], b"longer value", now=2.0) and t.get(K[0], now=2.0) == b"longer value"
    assert t.put(K[0], b"", now=2.0) and t.get(K[0], now=2.0) == b""
    assert len(t) == 1
    assert t.delete(K[0]) and not t.delete(K[0]) and len(t) == 0
    assert t.get(K[0], now=3.0) is None


def test_too_large_values_and_bad_keys_are_refused() -> None:
    t = table(value_cap=4)
    assert not t.put(K[0], b"12345", now=0.0)
    assert not t.put(b"short", b"1", now=0.0)
    assert len(t) == 0


def test_full_table_evicts_the_least_recently_used() -> None:
    t = table(slots=3)
    for i in range(3):
        t.put(K[i], b"%d" % i, now=float(i))
    assert t.get(K[0], now=3.0) == b"0"  # 0 is now the most recent; 1 the least
    t.put(K[3], b"3", now=4.0)
    assert t.get(K[1], now=5.0) is None
    assert t.keys() == [K[3], K[0], K[2]] and len(t) == 3
    assert t.get(K[2], now=5.0, touch=False) == b"2"  # not touched: still the least recent
    t.put(K[4], b"4", now=6.0)
    assert t.get(K[2], now=6.0) is None


def test_expire_drops_idle_entries_from_the_tail() -> None:
    t = table(slots=4)
    for i in range(3):
        t.put(K[i], b"x", now=float(i))
    t.get(K[0], now=10.0)  # use keeps it
    assert t.expire(now=12.0, idle=10.0) == 2  # 1 and 2 idle for 11 and 10 s
    assert t.keys() == [K[0]]
    assert t.expire(now=19.9, idle=10.0) == 0 and t.expire(now=20.0, idle=10.0) == 1
    assert len(t) == 0


def test_freed_slots_are_reused_and_a_fresh_buffer_is_only_touched_at_the_front() -> None:
    buffer = bytearray(LruTable.size_for(slots=1000, value_cap=64))
    t = LruTable(buffer, slots=1000, value_cap=64)
    for _ in range(50):
        t.put(K[0], b"v", now=0.0)
        t.delete(K[0])
    t.put(K[1], b"v", now=0.0)
    assert not any(buffer[len(buffer) // 2 :])  # slot 1 over and over: the far end untouched


def test_a_formatted_buffer_is_reused_and_another_geometry_is_refused() -> None:
    buffer = bytearray(LruTable.size_for(slots=4, value_cap=16))
    LruTable(buffer, slots=4, value_cap=16).put(K[0], b"kept", now=0.0)
    assert LruTable(buffer, slots=4, value_cap=16).get(K[0], now=0.0) == b"kept"
    with pytest.raises(ValueError, match="holds a table of 4 slots x 16 bytes"):
        LruTable(buffer, slots=2, value_cap=16)
    with pytest.raises(ValueError, match="the table needs"):
        LruTable(bytearray(10), slots=4, value_cap=16)


def test_a_cycle_in_the_links_is_reported_not_looped_and_reset_clears() -> None:
    t = table(slots=2)
    t.put(K[0], b"a", now=0.0)
    t.put(K[1], b"b", now=0.0)
    words = t._w  # corrupt it as a process killed mid-update could: a chain pointing to itself
    for bucket in range(16, 18):
        if words[bucket]:
            words[t._at(words[bucket]) + 2] = words[bucket]
    with pytest.raises(TableCorrupt):
        for key in (table_key("absent", str(i)) for i in range(20)):
            t.get(key, now=0.0)
    t.reset()
    assert len(t) == 0 and t.get(K[0], now=0.0) is None
    assert t.put(K[0], b"again", now=1.0) and t.get(K[0], now=1.0) == b"again"


_ops = st.lists(
    st.tuples(st.sampled_from(["put", "get", "peek", "delete", "expire"]), st.integers(0, 9)),
    max_size=120,
)


@settings(max_examples=60, deadline=None)
@given(ops=_ops, slots=st.integers(1, 5))
def test_behaves_like_an_ordered_dict_lru(ops: list[tuple[str, int]], slots: int) -> None:
    """Never more than ``slots`` entries, and the same contents and order as a simple model."""
    t = table(slots=slots)
    model: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
    for now, (op, i) in enumerate(ops):
        key, value = K[i], b"v%d-%d" % (i, now)
        if op == "put":
            assert t.put(key, value, now=now)
            model.pop(key, None)
            model[key] = (value, now)
            while len(model) > slots:
                model.popitem(last=False)
        elif op in ("get", "peek"):
            expected = model.get(key)
            assert t.get(key, now=now, touch=op == "get") == (expected and expected[0])
            if expected is not None and op == "get":
                model.move_to_end(key)
                model[key] = (expected[0], now)
        elif op == "delete":
            assert t.delete(key) == (model.pop(key, None) is not None)
        else:
            idle = 5.0
            while model and now - next(iter(model.values()))[1] >= idle:
                model.popitem(last=False)
            t.expire(now=now, idle=idle)
        assert len(t) == len(model) <= slots
        assert t.keys() == list(reversed(model))
