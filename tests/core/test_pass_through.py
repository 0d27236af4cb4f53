"""core.pass_through: the shared pass-through slot; who serves, waits or fetches (explicit now)."""

from __future__ import annotations

import math

import pytest

from gateproxy.core.health import relayed_answer, unavailable_answer
from gateproxy.core.pass_through import (
    ANSWER_VALUE_CAP,
    AnswerBoard,
    AnswerSlot,
    Fetch,
    Serve,
    Wait,
    decode_slot,
    encode_slot,
    memory_board,
)
from gateproxy.core.shared_table import LruTable

OK = relayed_answer(200, [(b"content-type", b"text/plain")], b"fine\n")
DOWN = unavailable_answer("connect failed")
ME, OTHER = 100, 200


def begin(board: AnswerBoard, now: float, **kw: object) -> Serve | Wait | Fetch:
    options: dict[str, object] = {
        "cache_time": 1.0,
        "timeout": 3.0,
        "me": ME,
        "fetch_id": int(now * 1000) + 1,
        "alive": lambda pid: True,
    }
    options.update(kw)
    return board.begin("app", "/status", now=now, **options)  # type: ignore[arg-type]


def fetched(board: AnswerBoard, now: float, answer: object = OK, **kw: object) -> Fetch:
    plan = begin(board, now, **kw)
    assert isinstance(plan, Fetch)
    board.finish("app", "/status", plan, answer, now=now)  # type: ignore[arg-type]
    return plan


@pytest.mark.parametrize(
    "slot",
    [
        AnswerSlot(),
        AnswerSlot(OK, 10.5, 7, ME, 8, 13.5),
        AnswerSlot(DOWN, -math.inf, 1),
        AnswerSlot(relayed_answer(204, [], b""), 1.0, 2),
    ],
)
def test_slot_encoding_round_trips(slot: AnswerSlot) -> None:
    assert decode_slot(encode_slot(slot)) == slot


def test_the_largest_relayed_answer_fits_and_garbage_is_refused() -> None:
    big = relayed_answer(200, [(b"content-type", b"x" * 1000)], b"y" * 10_000)
    assert len(encode_slot(AnswerSlot(big, 0.0, 1, ME, 2, 0.0))) <= ANSWER_VALUE_CAP
    with pytest.raises(ValueError, match="not an answer slot"):
        decode_slot(b"\x00" * 7)


def test_first_probe_fetches_then_the_answer_is_served_for_cache_time() -> None:
    board = memory_board()
    first = fetched(board, 100.0)
    assert first.started == 100.0
    for now in (100.0, 100.5, 100.999):
        assert begin(board, now) == Serve(OK)
    assert isinstance(begin(board, 101.0), Fetch)  # measured from the start of the fetch


def test_while_a_fetch_runs_everyone_else_waits_and_then_gets_its_answer() -> None:
    board = memory_board()
    plan = begin(board, 0.0, fetch_id=11)
    assert isinstance(plan, Fetch)
    assert begin(board, 0.1, me=OTHER) == Wait(11)
    assert begin(board, 0.2) == Wait(11)  # another task of the fetching process waits too
    board.finish("app", "/status", plan, DOWN, now=0.3)
    assert begin(board, 0.4, me=OTHER, waited_for=11) == Serve(DOWN)  # failures are cached


def test_the_answer_waited_for_is_served_even_with_cache_time_zero() -> None:
    board = memory_board()
    plan = begin(board, 0.0, fetch_id=5, cache_time=0.0)
    assert isinstance(plan, Fetch)
    board.finish("app", "/status", plan, OK, now=0.1)
    assert begin(board, 0.2, cache_time=0.0, waited_for=5) == Serve(OK)
    assert isinstance(begin(board, 0.2, cache_time=0.0), Fetch)  # a new probe asks again


def test_an_abandoned_fetch_lets_a_waiter_fetch() -> None:
    board = memory_board()
    plan = begin(board, 0.0, fetch_id=1)
    assert isinstance(plan, Fetch)
    assert begin(board, 0.1, me=OTHER) == Wait(1)
    board.abandon("app", "/status", plan, now=0.2)  # its client left
    taken = begin(board, 0.3, me=OTHER, fetch_id=2, waited_for=1)
    assert taken == Fetch(2, 0.3)


@pytest.mark.parametrize(
    ("now", "alive", "why"),
    [(0.5, False, "the fetching process died"), (3.0, True, "the mark went stale at until")],
)
def test_a_dead_or_stale_mark_is_taken_over(now: float, alive: bool, why: str) -> None:
    board = memory_board()
    assert isinstance(begin(board, 0.0, fetch_id=1, me=OTHER), Fetch)
    plan = begin(board, now, fetch_id=2, alive=lambda pid: alive and pid == OTHER)
    assert plan == Fetch(2, now), why


def test_a_slow_fetch_does_not_overwrite_a_newer_answer_or_another_mark() -> None:
    board = memory_board()
    slow = begin(board, 0.0, fetch_id=1, me=OTHER)
    assert isinstance(slow, Fetch)
    newer = begin(board, 3.5, fetch_id=2)  # took the stale mark over
    assert isinstance(newer, Fetch)
    board.finish("app", "/status", newer, OK, now=3.6)
    board.finish("app", "/status", slow, DOWN, now=3.7)  # late: its answer is older
    assert begin(board, 3.8) == Serve(OK)
    third = begin(board, 4.6, fetch_id=3)  # OK went stale; a new fetch marks the slot
    assert isinstance(third, Fetch)
    board.abandon("app", "/status", slow, now=4.7)  # not its mark: nothing changes
    assert begin(board, 4.8, me=OTHER) == Wait(3)


def test_each_upstream_and_path_has_its_own_slot() -> None:
    board = memory_board()
    fetched(board, 0.0)
    assert isinstance(board.begin("app", "/other", now=0.1, cache_time=1.0, timeout=1.0,
                                  me=ME, fetch_id=9, alive=lambda pid: True), Fetch)  # fmt: skip
    assert isinstance(board.begin("api", "/status", now=0.1, cache_time=1.0, timeout=1.0,
                                  me=ME, fetch_id=10, alive=lambda pid: True), Fetch)  # fmt: skip
    assert begin(board, 0.2) == Serve(OK)


def test_a_corrupt_slot_is_forgotten_not_fatal() -> None:
    table = LruTable.in_memory(slots=2, value_cap=ANSWER_VALUE_CAP)
    board = AnswerBoard(table)
    fetched(board, 0.0)
    key = table.keys()[0]
    table.put(key, b"garbage", now=0.0)
    assert isinstance(begin(board, 0.1), Fetch)
    with pytest.raises(ValueError, match="answers need"):
        AnswerBoard(LruTable.in_memory(slots=1, value_cap=8))
