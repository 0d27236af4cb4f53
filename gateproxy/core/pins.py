"""Pinned probe sessions: (client, scope) -> the session cookies the app set, LRU by last use.

The session guard talks to a :class:`PinStore`. :class:`TablePins` keeps the pins in an
:class:`~gateproxy.core.shared_table.LruTable`: over a ``bytearray`` in one process
(:func:`memory_pins`), or over shared memory so every worker of a daemon sees the same pins
(``net.shared``). Bounds: at most ``max_entries`` pins (least recently used dropped), each
forgotten after ``idle_timeout`` seconds unused, none longer than :data:`MAX_PIN_BYTES`.

A value is the cookie header gateproxy sends back (``NAME=value; NAME2=value2``): cookie names
hold no ``=`` and the values the guard keeps hold no ``;``, so it parses back unambiguously.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Protocol

from gateproxy.core.shared_table import LruTable, TableCorrupt, table_key

__all__ = [
    "MAX_PIN_BYTES",
    "PinKey",
    "PinStore",
    "TablePins",
    "cookie_header",
    "memory_pins",
    "parse_cookie_header",
]

#: A pinned cookie header value longer than this is not remembered (session ids are short).
MAX_PIN_BYTES = 1024

PinKey = tuple[str, str]  # (client, scope)


class PinStore(Protocol):
    """Where the session guard keeps its pins (synchronous: called on the request path)."""

    @property
    def max_entries(self) -> int: ...

    def __len__(self) -> int: ...

    def lookup(self, key: PinKey, *, now: float) -> bytes | None:
        """The cookie header pinned for ``key`` (now its most recent use), or None."""
        ...

    def update(
        self, key: PinKey, *, set_: Mapping[bytes, bytes], deleted: set[bytes], now: float
    ) -> bool:
        """Merge the cookies a response set (and drop those it deleted); True if kept."""
        ...

    def expire(self, *, now: float) -> None:
        """Forget the pins unused for the idle timeout."""
        ...


def cookie_header(cookies: Mapping[bytes, bytes]) -> bytes:
    return b"; ".join(name + b"=" + value for name, value in cookies.items())


def parse_cookie_header(value: bytes | None) -> dict[bytes, bytes]:
    """``NAME=value; ...`` as a dict (the first of a repeated name wins)."""
    out: dict[bytes, bytes] = {}
    for part in (value or b"").split(b";"):
        name, eq, val = part.strip().partition(b"=")
        if eq and name and name not in out:
            out[name] = val
    return out


class TablePins:
    """A :class:`PinStore` over an :class:`LruTable`; ``lock`` is held around each call."""

    def __init__(
        self,
        table: LruTable,
        *,
        idle_timeout: float,
        lock: AbstractContextManager[object] | None = None,
    ) -> None:
        if table.value_cap < MAX_PIN_BYTES:
            raise ValueError(
                f"pin values need {MAX_PIN_BYTES} bytes, the table has {table.value_cap}"
            )
        self._table = table
        self._idle = idle_timeout
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self.resets = 0  # times a corrupt table was cleared

    @property
    def max_entries(self) -> int:
        return self._table.slots

    def __len__(self) -> int:
        with self._lock:
            return len(self._table)

    def lookup(self, key: PinKey, *, now: float) -> bytes | None:
        with self._lock:
            try:
                self._table.expire(now=now, idle=self._idle)
                return self._table.get(table_key(*key), now=now)
            except TableCorrupt:
                self._reset()
                return None

    def update(
        self, key: PinKey, *, set_: Mapping[bytes, bytes], deleted: set[bytes], now: float
    ) -> bool:
        k = table_key(*key)
        with self._lock:
            try:
                self._table.expire(now=now, idle=self._idle)
                cookies = parse_cookie_header(self._table.get(k, now=now, touch=False))
                cookies.update(set_)
                for name in deleted:
                    cookies.pop(name, None)
                size = sum(len(n) + len(v) + 3 for n, v in cookies.items())
                if not cookies or size > MAX_PIN_BYTES:
                    self._table.delete(k)
                    return False
                return self._table.put(k, cookie_header(cookies), now=now)
            except TableCorrupt:
                self._reset()
                return False

    def expire(self, *, now: float) -> None:
        with self._lock:
            try:
                self._table.expire(now=now, idle=self._idle)
            except TableCorrupt:
                self._reset()

    def _reset(self) -> None:
        self._table.reset()
        self.resets += 1


def memory_pins(*, max_entries: int, idle_timeout: float) -> TablePins:
    """Pins held by this process only (a ``bytearray``)."""
    table = LruTable.in_memory(slots=max_entries, value_cap=MAX_PIN_BYTES)
    return TablePins(table, idle_timeout=idle_timeout)
