"""Pass-through health answers shared by every worker: who fetches, who waits, what is served.

Theory of operation. Each pass-through (upstream, path) has one slot in an
:class:`~gateproxy.core.shared_table.LruTable` that all workers of a daemon map. A slot holds
the last answer with the time its fetch started (``fetched_at``) and the id of that fetch, and
at most one *fetch in progress* mark: the pid of the process fetching, the fetch's id and the
time after which the mark is stale. :meth:`AnswerBoard.begin` decides, under the table's lock:

* the answer is fresh (``now < fetched_at + cache_time``), or it is the answer of the fetch
  this caller was waiting for: :class:`Serve` it;
* another fetch is in progress, its mark not stale and its process alive: :class:`Wait`
  (the shell polls again shortly; it never fetches itself meanwhile);
* otherwise: :class:`Fetch` — the caller's mark is written, so everyone else waits.

The fetcher then calls :meth:`AnswerBoard.finish` with the answer (the mark is cleared and the
answer stored with ``fetched_at`` = the time of its ``begin``), or :meth:`AnswerBoard.abandon`
if it was cancelled (its client left): a waiter then fetches. A fetcher that died leaves a
mark whose process is gone (``alive(pid)`` is False) or that goes stale at ``until``: it is
taken over. So the upstream is asked at most once per ``cache_time`` for the whole daemon.

Times are ``now`` parameters: the shell passes ``time.monotonic()`` (CLOCK_MONOTONIC, the same
in every process; trio's clock has a per-process offset). Nothing here reads a clock.
"""

from __future__ import annotations

import contextlib
import math
import struct
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from gateproxy.core.health import (
    MAX_RELAYED_BODY,
    CachedAnswer,
    HealthAnswer,
    unavailable_answer,
)
from gateproxy.core.shared_table import LruTable, TableCorrupt, table_key

__all__ = [
    "ANSWER_VALUE_CAP",
    "AnswerBoard",
    "AnswerSlot",
    "Fetch",
    "Serve",
    "Wait",
    "decode_slot",
    "encode_slot",
]

#: Room for one shared answer: the bounded body plus headers (status, content type...).
ANSWER_VALUE_CAP = MAX_RELAYED_BODY + 2048
_FIXED = struct.Struct("=dQIQdHH")  # fetched_at answer_id pid fetch_id until status n_headers
_LEN16 = struct.Struct("=H")
_LEN32 = struct.Struct("=I")


@dataclass(frozen=True, slots=True)
class AnswerSlot:
    """What one slot holds. ``answer`` is None until a fetch finished; ``fetcher`` 0: none."""

    answer: HealthAnswer | None = None
    fetched_at: float = -math.inf
    answer_id: int = 0
    fetcher: int = 0
    fetch_id: int = 0
    until: float = -math.inf


def encode_slot(slot: AnswerSlot) -> bytes:
    """The slot as bytes (at most :data:`ANSWER_VALUE_CAP` for any answer gateproxy makes)."""
    answer = slot.answer
    headers = answer.headers if answer is not None else ()
    parts = [
        _FIXED.pack(
            slot.fetched_at,
            slot.answer_id,
            slot.fetcher,
            slot.fetch_id,
            slot.until,
            answer.status if answer is not None else 0,
            len(headers),
        )
    ]
    for name, value in headers:
        parts += [_LEN16.pack(len(name)), name, _LEN16.pack(len(value)), value]
    body = answer.body if answer is not None else b""
    parts += [_LEN32.pack(len(body)), body]
    return b"".join(parts)


def decode_slot(data: bytes) -> AnswerSlot:
    """The inverse of :func:`encode_slot`; raises ``ValueError`` for bytes it did not make."""
    try:
        fetched_at, answer_id, fetcher, fetch_id, until, status, count = _FIXED.unpack_from(data)
        at = _FIXED.size
        headers: list[tuple[bytes, bytes]] = []
        for _ in range(count):
            pair = []
            for _ in range(2):
                (length,) = _LEN16.unpack_from(data, at)
                pair.append(data[at + 2 : at + 2 + length])
                at += 2 + length
            headers.append((pair[0], pair[1]))
        (length,) = _LEN32.unpack_from(data, at)
        body = data[at + 4 : at + 4 + length]
    except struct.error as exc:
        raise ValueError(f"not an answer slot: {exc}") from exc
    answer = HealthAnswer(status, tuple(headers), body) if status else None
    return AnswerSlot(answer, fetched_at, answer_id, fetcher, fetch_id, until)


@dataclass(frozen=True, slots=True)
class Serve:
    answer: HealthAnswer


@dataclass(frozen=True, slots=True)
class Wait:
    """Another fetch (``fetch_id``) is in progress: look again shortly."""

    fetch_id: int


@dataclass(frozen=True, slots=True)
class Fetch:
    """Fetch now (the mark is set); then ``finish`` or ``abandon`` with ``fetch_id``."""

    fetch_id: int
    started: float


Plan = Serve | Wait | Fetch


class AnswerBoard:
    """The shared pass-through answers (module docstring); ``lock`` is held around each call."""

    def __init__(
        self, table: LruTable, *, lock: AbstractContextManager[object] | None = None
    ) -> None:
        if table.value_cap < ANSWER_VALUE_CAP:
            raise ValueError(
                f"answers need {ANSWER_VALUE_CAP} bytes, the table has {table.value_cap}"
            )
        self._table = table
        self._lock = lock if lock is not None else contextlib.nullcontext()

    def begin(
        self,
        upstream: str,
        path: str,
        *,
        now: float,
        cache_time: float,
        timeout: float,
        me: int,
        fetch_id: int,
        waited_for: int = 0,
        alive: Callable[[int], bool],
    ) -> Plan:
        """Serve, wait or fetch (module docstring). ``me`` is this process's pid, ``fetch_id``
        a fresh id (used only if the answer is :class:`Fetch`), ``waited_for`` the id of the
        fetch this caller waited for, ``alive(pid)`` whether a process still runs."""
        key = table_key(upstream, path)
        with self._lock:
            slot = self._read(key, now=now)
            answer = slot.answer
            if answer is not None and (
                CachedAnswer(answer, slot.fetched_at).fresh(now=now, cache_time=cache_time)
                or (waited_for != 0 and slot.answer_id == waited_for)
            ):
                return Serve(answer)
            if slot.fetcher != 0 and now < slot.until and alive(slot.fetcher):
                return Wait(slot.fetch_id)
            mark = AnswerSlot(
                slot.answer, slot.fetched_at, slot.answer_id, me, fetch_id, now + timeout
            )
            self._write(key, mark, now=now)
            return Fetch(fetch_id, now)

    def finish(
        self, upstream: str, path: str, plan: Fetch, answer: HealthAnswer, *, now: float
    ) -> None:
        """Store the answer of ``plan``'s fetch (fetched at ``plan.started``); clear its mark."""
        key = table_key(upstream, path)
        with self._lock:
            slot = self._read(key, now=now)
            mine = slot.fetch_id == plan.fetch_id
            if plan.started < slot.fetched_at:
                return  # a newer fetch (that took over a stale mark) already stored its answer
            self._write(
                key,
                AnswerSlot(
                    _shareable(answer),
                    plan.started,
                    plan.fetch_id,
                    0 if mine else slot.fetcher,
                    0 if mine else slot.fetch_id,
                    -math.inf if mine else slot.until,
                ),
                now=now,
            )

    def abandon(self, upstream: str, path: str, plan: Fetch, *, now: float) -> None:
        """The fetch of ``plan`` was cancelled: clear its mark so a waiter fetches."""
        key = table_key(upstream, path)
        with self._lock:
            slot = self._read(key, now=now)
            if slot.fetch_id == plan.fetch_id and slot.fetcher != 0:
                cleared = AnswerSlot(slot.answer, slot.fetched_at, slot.answer_id)
                self._write(key, cleared, now=now)

    def _read(self, key: bytes, *, now: float) -> AnswerSlot:
        try:
            data = self._table.get(key, now=now)
            return decode_slot(data) if data is not None else AnswerSlot()
        except (TableCorrupt, ValueError):
            self._table.reset()  # a table left inconsistent by a killed process: start afresh
            return AnswerSlot()

    def _write(self, key: bytes, slot: AnswerSlot, *, now: float) -> None:
        try:
            self._table.put(key, encode_slot(slot), now=now)
        except TableCorrupt:
            self._table.reset()


def _shareable(answer: HealthAnswer) -> HealthAnswer:
    """``answer`` if it fits a slot, else a 503 saying so (only an absurd upstream
    ``Content-Type`` can make a relayed answer that large)."""
    size = len(encode_slot(AnswerSlot(answer)))
    if size <= ANSWER_VALUE_CAP:
        return answer
    return unavailable_answer("the upstream health answer's headers are too large to share")


def memory_board(*, slots: int = 4) -> AnswerBoard:
    """Answers held by this process only (a ``bytearray``; tests, tools)."""
    return AnswerBoard(LruTable.in_memory(slots=slots, value_cap=ANSWER_VALUE_CAP))
