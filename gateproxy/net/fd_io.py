"""Descriptor I/O for the hot path: reads and writes straight on a non-blocking socket's fd.

trio's socket streams take two trips through the scheduler per operation even when the kernel
has the bytes ready, and serialise callers with conflict detectors. A connection of gateproxy
has exactly one reader and one writer, both in its pump, so :class:`FdIO` calls ``os.read`` /
``os.write`` first and waits (``trio.lowlevel.wait_readable`` / ``wait_writable``) only when the
kernel says it would block.

* **Writes are cancellation-safe.** What a cancelled wait left unsent is kept and goes out first
  on the next :meth:`write_all` (``write_all(b"")`` finishes it), so the connection's one
  deadline may interrupt any wait without corrupting the byte stream.
* **Fairness.** A peer that always has data ready must not hold the event loop (nor its own
  deadline): every ``CHECKPOINT_EVERY``-th operation that did not wait passes a checkpoint.
* After this side has written, the peer's answer cannot be there yet: :meth:`read` with
  ``wait_first`` waits for readiness before trying.

``OSError`` is raised as is; callers translate it for their side (client or upstream).
"""

from __future__ import annotations

import os

import trio

READ_SIZE = 64 * 1024  # below glibc's mmap threshold: no mmap/munmap per read
CHECKPOINT_EVERY = 16


class FdIO:
    """Reads and writes on one connected non-blocking socket descriptor."""

    __slots__ = ("_unsent", "_unyielded", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._unsent = memoryview(b"")
        self._unyielded = 0

    @property
    def unsent(self) -> bool:
        """A cancelled write left bytes behind."""
        return bool(self._unsent)

    async def write_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write every byte (those a cancelled call left first)."""
        if self._unsent:
            view = memoryview(bytes(self._unsent) + bytes(data))
        elif data:
            view = memoryview(bytes(data) if isinstance(data, bytearray) else data)
        else:
            return
        fd = self.fd
        while view:
            try:
                sent = os.write(fd, view)
            except BlockingIOError:
                self._unyielded = 0
                self._unsent = view
                await trio.lowlevel.wait_writable(fd)
                continue
            except OSError:
                self._unsent = memoryview(b"")
                raise
            view = view[sent:]
        self._unsent = view
        await self.maybe_yield()

    def write_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """Write what the kernel takes now; True if nothing is left (else ``write_all(b"")``
        sends the rest)."""
        if self._unsent:
            self._unsent = memoryview(bytes(self._unsent) + bytes(data))
            return False
        try:
            sent = os.write(self.fd, data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return True
        self._unsent = memoryview(bytes(memoryview(data)[sent:]))  # (data may be reused)
        return False

    def read_nowait(self, size: int = READ_SIZE) -> bytes | None:
        """What the kernel has (``b""``: end of file), or None if a read would block."""
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            return None

    async def read(self, size: int = READ_SIZE, *, wait_first: bool = False) -> bytes:
        """One read (``b""``: end of file), waiting only when nothing is there."""
        fd = self.fd
        if wait_first:
            self._unyielded = 0
            await trio.lowlevel.wait_readable(fd)
        while True:
            try:
                data = os.read(fd, size)
            except BlockingIOError:
                self._unyielded = 0
                await trio.lowlevel.wait_readable(fd)
                continue
            await self.maybe_yield()
            return data

    async def maybe_yield(self) -> None:
        self._unyielded += 1
        if self._unyielded >= CHECKPOINT_EVERY:
            self._unyielded = 0
            await trio.lowlevel.checkpoint()
