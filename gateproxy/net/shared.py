"""Memory that every worker of a daemon maps: the session guard's pins and pass-through answers.

Theory of operation. The supervisor creates a memfd (:meth:`SharedState.create`) sized from
the config (``max_pinned`` pins, one answer slot per pass-through check) and formats it; a
reload that keeps that layout keeps the memfd (``net.fleet_health``). Each worker inherits the
fd (``pass_fds``; its number comes in the setup message) and maps it
(:meth:`SharedState.attach`); the supervisor maps it too (its active checker uses the pins).
Layout and every decision are in ``core`` (``core.shared_table``, ``core.pins``,
``core.pass_through``): this module only maps memory and holds the lock.

The lock is one POSIX record lock (``fcntl.lockf``) on the whole file, taken around each table
operation: a few dozen memory reads and writes, no ``await`` inside, so contention is tiny and
the kernel drops the lock of a process that dies. Record locks belong to a process, so they
exclude other processes only; :class:`ProcessLock` counts nesting within one. A plain
``Daemon`` (one process: ``gateproxy demo``, tests) uses an anonymous mapping and no lock.
Times stored in the tables are ``time.monotonic()``, the same clock in every process.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from dataclasses import dataclass
from types import TracebackType

from gateproxy.core.config import Config
from gateproxy.core.pass_through import ANSWER_VALUE_CAP, AnswerBoard
from gateproxy.core.pins import MAX_PIN_BYTES, TablePins
from gateproxy.core.shared_table import LruTable
from gateproxy.errors import SharedStateError

__all__ = ["ProcessLock", "SharedLayout", "SharedState", "pid_alive"]


@dataclass(frozen=True, slots=True)
class SharedLayout:
    """Where the two tables are: the pins first, then the answers."""

    pin_slots: int
    answer_slots: int

    @classmethod
    def for_config(cls, config: Config) -> SharedLayout:
        checks = sum(
            1 for lc in config.listeners for hc in lc.health_checks if hc.mode == "pass_through"
        )
        return cls(pin_slots=config.session_guard.max_pinned, answer_slots=max(4, checks))

    @property
    def pin_bytes(self) -> int:
        return LruTable.size_for(slots=self.pin_slots, value_cap=MAX_PIN_BYTES)

    @property
    def size(self) -> int:
        answers = LruTable.size_for(slots=self.answer_slots, value_cap=ANSWER_VALUE_CAP)
        return self.pin_bytes + answers


class ProcessLock:
    """``fcntl.lockf`` on the whole of ``fd`` (no fd: no lock), re-entrant within a process."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self._depth = 0

    def __enter__(self) -> None:
        if self._depth == 0 and self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
        self._depth += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)


class SharedState:
    """One mapping of the shared tables (see the module docstring)."""

    def __init__(self, mapping: mmap.mmap, layout: SharedLayout, *, fd: int | None) -> None:
        self.layout = layout
        self.fd = fd
        self.lock = ProcessLock(fd)
        self._mapping = mapping
        view = memoryview(mapping)
        self._views = [view[: layout.pin_bytes], view[layout.pin_bytes : layout.size]]
        view.release()
        with self.lock:
            self._pin_table = LruTable(
                self._views[0], slots=layout.pin_slots, value_cap=MAX_PIN_BYTES
            )
            self._answer_table = LruTable(
                self._views[1], slots=layout.answer_slots, value_cap=ANSWER_VALUE_CAP
            )
        self.answers = AnswerBoard(self._answer_table, lock=self.lock)

    @classmethod
    def create(cls, config: Config) -> SharedState:
        """A new memfd for ``config``'s generation (to be inherited by its workers)."""
        layout = SharedLayout.for_config(config)
        fd = os.memfd_create("gateproxy-shared", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, layout.size)
            return cls(mmap.mmap(fd, layout.size), layout, fd=fd)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, fd: int, config: Config) -> SharedState:
        """Map the memfd ``fd`` that the supervisor made for ``config``."""
        layout = SharedLayout.for_config(config)
        size = os.fstat(fd).st_size
        if size != layout.size:
            raise SharedStateError(
                f"shared memory fd {fd} holds {size} bytes, the config needs {layout.size}"
            )
        return cls(mmap.mmap(fd, layout.size), layout, fd=fd)

    @classmethod
    def anonymous(cls, config: Config) -> SharedState:
        """Memory for one process only (a plain ``Daemon``): the same tables, no lock."""
        layout = SharedLayout.for_config(config)
        return cls(mmap.mmap(-1, layout.size), layout, fd=None)

    def pins(self, *, idle_timeout: float) -> TablePins:
        """The session guard's pin store over the shared pin table."""
        return TablePins(self._pin_table, idle_timeout=idle_timeout, lock=self.lock)

    def close(self) -> None:
        """Unmap (and close the fd). Tables and boards made from this state are then unusable."""
        self._pin_table.release()
        self._answer_table.release()
        for view in self._views:
            view.release()
        self._mapping.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still exists (a fetcher that died leaves its mark behind)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
