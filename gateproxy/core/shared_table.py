"""A fixed-size LRU table laid out in one flat buffer, for state that worker processes share.

Theory of operation
-------------------
The buffer is a ``bytearray`` (one process, tests) or a shared memory mapping (``net.shared``:
every worker maps the same memfd). Nothing here allocates, locks or reads a clock: the shell
holds the lock around each operation (or a group of them) and passes ``now``.

Layout, little-endian::

    header   16 x u32: magic, version, slots, buckets, value_cap, count, head, tail, free, high
    buckets  buckets x u32 (padded to 8 bytes): first slot of the hash chain (0 = empty)
    slots    slots x (40 + value_cap, padded to 8 bytes): prev, next, chain, value length
             (u32 each), last_used (f64), key (16 bytes), value

Slots are numbered from 1 (0 means none). Native byte order: the memory is shared between the
processes of one host, never written to disk or sent anywhere.

Keys are 16-byte digests (:func:`table_key`), so every slot has the same size. A slot is on
one doubly linked LRU list (``head`` most recently used, ``tail`` least) and on one hash chain.
Slots never used are past ``high`` (so a fresh, zeroed mapping is only touched where it is
used); freed slots go on the ``free`` list. ``put`` into a full table evicts the tail: at most
``slots`` entries, ever. ``expire`` drops idle entries from the tail. Every walk is bounded by
``slots`` steps: a table left inconsistent (a process killed in the middle of an update) raises
:class:`TableCorrupt` instead of looping, and the shell then clears it with :meth:`LruTable.reset`.
"""

from __future__ import annotations

import hashlib

__all__ = ["KEY_SIZE", "LruTable", "TableCorrupt", "table_key"]

KEY_SIZE = 16
_MAGIC = 0x47505354  # "GPST"
_VERSION = 1
_HEADER_WORDS = 16
# header words
_H_MAGIC, _H_VERSION, _H_SLOTS, _H_BUCKETS, _H_CAP = 0, 1, 2, 3, 4
_H_COUNT, _H_HEAD, _H_TAIL, _H_FREE, _H_HIGH = 5, 6, 7, 8, 9
# slot words (from the slot's first word); last_used is the f64 at word 4, the key at word 6
_PREV, _NEXT, _CHAIN, _VLEN, _LAST, _KEY, _SLOT_WORDS = 0, 1, 2, 3, 4, 6, 10


class TableCorrupt(ValueError):
    """The table's links are inconsistent; the shell clears it with ``reset``."""


def table_key(*parts: str) -> bytes:
    """The 16-byte key of a tuple of strings (a BLAKE2b digest: fixed size, no collisions)."""
    digest = hashlib.blake2b(digest_size=KEY_SIZE)
    for part in parts:  # length-prefixed: ("a", "b") and ("a\0b",) differ
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(4, "little") + data)
    return digest.digest()


def _geometry(slots: int, value_cap: int) -> tuple[int, int, int]:
    """(first slot's word, words per slot, total bytes)."""
    bucket_words = slots + slots % 2  # padded to 8 bytes
    stride_words = _SLOT_WORDS + (value_cap + 7) // 8 * 2
    base = _HEADER_WORDS + bucket_words
    return base, stride_words, 4 * (base + stride_words * slots)


class LruTable:
    """At most ``slots`` values of at most ``value_cap`` bytes each, LRU by last use."""

    __slots__ = ("_b", "_base", "_d", "_stride", "_w", "buckets", "slots", "value_cap")

    def __init__(self, buffer: memoryview | bytearray, *, slots: int, value_cap: int) -> None:
        """Use ``buffer`` (at least :meth:`size_for` bytes); format it if it holds no table.

        A buffer that holds a table of another geometry is an error (two processes would
        disagree on where the slots are).
        """
        if slots < 1 or value_cap < 0:
            raise ValueError(f"slots must be >= 1 and value_cap >= 0, got {slots}, {value_cap}")
        self.slots = self.buckets = slots
        self.value_cap = value_cap
        self._base, self._stride, need = _geometry(slots, value_cap)
        if len(buffer) < need:
            raise ValueError(f"buffer of {len(buffer)} bytes, the table needs {need}")
        self._b = memoryview(buffer).cast("B")[:need]
        self._w = self._b.cast("I")
        self._d = self._b.cast("d")
        w = self._w
        if w[_H_MAGIC] == 0:
            self.reset()
        elif (w[_H_MAGIC], w[_H_VERSION], w[_H_SLOTS], w[_H_CAP]) != (
            _MAGIC,
            _VERSION,
            slots,
            value_cap,
        ):
            raise ValueError(
                f"buffer holds a table of {w[_H_SLOTS]} slots x {w[_H_CAP]} bytes "
                f"(magic {w[_H_MAGIC]:#x}), expected {slots} x {value_cap}"
            )

    @classmethod
    def in_memory(cls, *, slots: int, value_cap: int) -> LruTable:
        """A table over a ``bytearray`` of its own (one process)."""
        return cls(
            bytearray(cls.size_for(slots=slots, value_cap=value_cap)),
            slots=slots,
            value_cap=value_cap,
        )

    @staticmethod
    def size_for(*, slots: int, value_cap: int) -> int:
        """Bytes a table of this geometry needs."""
        return _geometry(slots, value_cap)[2]

    def release(self) -> None:
        """Drop the views of the buffer (a shared mapping can then be closed)."""
        for view in (self._d, self._w, self._b):
            view.release()

    def reset(self) -> None:
        """Forget every entry (writes the header and the bucket array only)."""
        w = self._w
        w[: self._base] = memoryview(bytes(4 * self._base)).cast("I")
        w[_H_MAGIC], w[_H_VERSION], w[_H_SLOTS] = _MAGIC, _VERSION, self.slots
        w[_H_BUCKETS], w[_H_CAP] = self.buckets, self.value_cap

    # --- the public operations ------------------------------------------------------------------

    def __len__(self) -> int:
        return self._w[_H_COUNT]

    def get(self, key: bytes, *, now: float, touch: bool = True) -> bytes | None:
        """The value of ``key``, or None; ``touch`` makes it the most recently used at ``now``."""
        slot = self._find(key)
        if slot == 0:
            return None
        at = self._at(slot)
        if touch:
            self._d[(at + _LAST) // 2] = now
            self._to_front(slot)
        start = 4 * (at + _SLOT_WORDS)
        return bytes(self._b[start : start + self._w[at + _VLEN]])

    def put(self, key: bytes, value: bytes, *, now: float) -> bool:
        """Store ``value`` as the most recently used at ``now``; False if it is too large."""
        if len(value) > self.value_cap or len(key) != KEY_SIZE:
            return False
        w = self._w
        slot = self._find(key)
        if slot == 0:
            slot = self._allocate()
            at = self._at(slot)
            bucket = self._bucket(key)
            w[at + _CHAIN] = w[bucket]
            w[bucket] = slot
            self._b[4 * (at + _KEY) : 4 * (at + _KEY) + KEY_SIZE] = key
            self._link_front(slot)
            w[_H_COUNT] += 1
        else:
            at = self._at(slot)
            self._to_front(slot)
        w[at + _VLEN] = len(value)
        self._d[(at + _LAST) // 2] = now
        start = 4 * (at + _SLOT_WORDS)
        self._b[start : start + len(value)] = value
        return True

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; True if it was there."""
        slot = self._find(key)
        if slot == 0:
            return False
        self._remove(slot)
        return True

    def expire(self, *, now: float, idle: float) -> int:
        """Drop the entries unused for ``idle`` seconds or more at ``now``; how many."""
        dropped = 0
        while (tail := self._w[_H_TAIL]) != 0:
            if now - self._d[(self._at(tail) + _LAST) // 2] < idle:
                break
            self._remove(tail)
            dropped += 1
        return dropped

    def keys(self) -> list[bytes]:
        """Every key, most recently used first (for tests and consistency checks)."""
        out: list[bytes] = []
        slot = self._w[_H_HEAD]
        while slot != 0:
            self._check_steps(len(out))
            out.append(self._key_of(self._at(slot)))
            slot = self._w[self._at(slot) + _NEXT]
        return out

    # --- internals ------------------------------------------------------------------------------

    def _at(self, slot: int) -> int:
        if not 1 <= slot <= self.slots:
            raise TableCorrupt(f"slot number {slot} outside 1..{self.slots}")
        return self._base + (slot - 1) * self._stride

    def _key_of(self, at: int) -> bytes:
        return bytes(self._b[4 * (at + _KEY) : 4 * (at + _KEY) + KEY_SIZE])

    def _bucket(self, key: bytes) -> int:
        return _HEADER_WORDS + int.from_bytes(key[:4], "little") % self.buckets

    def _check_steps(self, steps: int) -> None:
        if steps > self.slots:
            raise TableCorrupt(f"a walk took more than {self.slots} steps: a cycle")

    def _find(self, key: bytes) -> int:
        w, b = self._w, self._b
        slot, steps = w[self._bucket(key)], 0
        while slot != 0:
            at = self._at(slot)
            if b[4 * (at + _KEY) : 4 * (at + _KEY) + KEY_SIZE] == key:
                return slot
            steps += 1
            self._check_steps(steps)
            slot = w[at + _CHAIN]
        return 0

    def _allocate(self) -> int:
        w = self._w
        free = w[_H_FREE]
        if free != 0:
            w[_H_FREE] = w[self._at(free) + _NEXT]
            return free
        if w[_H_HIGH] < self.slots:
            w[_H_HIGH] += 1
            return w[_H_HIGH]
        tail = w[_H_TAIL]
        if tail == 0:
            raise TableCorrupt("the table is full but its LRU list is empty")
        self._remove(tail)  # full: the least recently used entry goes
        return self._allocate()

    def _remove(self, slot: int) -> None:
        w = self._w
        at = self._at(slot)
        link, steps = self._bucket(self._key_of(at)), 0  # unlink from the hash chain
        while (current := w[link]) != slot:
            if current == 0:
                raise TableCorrupt("an entry is missing from its hash chain")
            steps += 1
            self._check_steps(steps)
            link = self._at(current) + _CHAIN
        w[link] = w[at + _CHAIN]
        self._unlink(slot)
        w[at + _NEXT] = w[_H_FREE]
        w[_H_FREE] = slot
        w[_H_COUNT] -= 1

    def _unlink(self, slot: int) -> None:
        w = self._w
        at = self._at(slot)
        prev, nxt = w[at + _PREV], w[at + _NEXT]
        if prev:
            w[self._at(prev) + _NEXT] = nxt
        else:
            w[_H_HEAD] = nxt
        if nxt:
            w[self._at(nxt) + _PREV] = prev
        else:
            w[_H_TAIL] = prev

    def _link_front(self, slot: int) -> None:
        w = self._w
        at, head = self._at(slot), w[_H_HEAD]
        w[at + _PREV], w[at + _NEXT] = 0, head
        if head:
            w[self._at(head) + _PREV] = slot
        else:
            w[_H_TAIL] = slot
        w[_H_HEAD] = slot

    def _to_front(self, slot: int) -> None:
        if self._w[_H_HEAD] != slot:
            self._unlink(slot)
            self._link_front(slot)
