"""The supervisor's part in health and session hygiene: one checker and one shared memory per
daemon, however many workers it runs.

Theory of operation. An upstream must see one active check per ``interval`` and at most one app
session per server from gateproxy, and ``cache_time`` must hold for the whole daemon, not N of
each for N workers. So the supervisor (``gateproxy.supervisor``), through :class:`FleetHealth`:

* gives each config generation its shared memory (``net.shared``: session-guard pins and
  pass-through answers) before its first worker starts, and hands its fd to every worker of that
  generation (a restarted one too). A generation whose layout (``max_pinned``, number of
  pass-through checks) is that of the one before shares its memory, so pins and cached answers
  survive a reload; otherwise it gets new memory. The supervisor closes its copy once no
  generation uses it (the workers keep their mappings until they exit);
* runs the active checks (``net.probes``) of the current generation, with a session guard over
  that generation's pins, so the checks and the workers' pass-through fetches share one app
  session per server; every changed verdict goes to every live worker as
  ``{"op": "health", "upstream", "server", "healthy"}``, and a worker that starts gets the
  verdicts so far in its setup. The rise/fall state (a ``core.health.HealthBoard``) outlives
  reloads; after a reload every worker is sent the whole board once;
* adds the checker's session-guard counters to ``/stats`` (``session_guard.minted``,
  ``.minted_for_probes``, ``.minted_by_health_checks``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict
from functools import partial
from typing import Any

import trio

from gateproxy.core.config import Config
from gateproxy.core.health import HealthBoard, Verdict
from gateproxy.core.metrics import GuardCounters, add_counters
from gateproxy.core.session_guard import SessionGuard
from gateproxy.net.probes import run_health_checks
from gateproxy.net.shared import SharedLayout, SharedState
from gateproxy.net.workers import WorkerHandle

__all__ = ["FleetHealth"]

Workers = Callable[[], Iterable[WorkerHandle]]


class FleetHealth:
    """Shared memory per generation and the daemon's one active checker (module docstring)."""

    def __init__(self) -> None:
        self.board = HealthBoard()
        self.counters = GuardCounters()
        self._states: dict[int, SharedState] = {}
        self._checker: tuple[trio.CancelScope, trio.Event] | None = None

    def setup(self, generation: int, config: Config) -> tuple[dict[str, Any], list[int]]:
        """What a worker of ``generation`` gets in its setup message, and the fds it inherits."""
        state = self._state(generation, config)
        assert state.fd is not None
        verdicts = [asdict(v) for v in self.board.verdicts()]
        return {"shared_fd": state.fd, "verdicts": verdicts}, [state.fd]

    async def start_checks(
        self, nursery: trio.Nursery, generation: int, config: Config, workers: Workers
    ) -> None:
        """Run the active checks of ``generation`` (stopping those of the one before)."""
        await self.stop_checks()
        state = self._state(generation, config)
        guard = SessionGuard(
            config.session_guard,
            counters=self.counters,
            pins=state.pins(idle_timeout=config.session_guard.pin_idle_timeout),
        )
        for verdict in self.board.verdicts():  # workers started while the old checker ran
            await _tell(workers, verdict)
        self._checker = await nursery.start(self._run_checks, config, guard, workers)

    async def stop_checks(self) -> None:
        if self._checker is not None:
            scope, done = self._checker
            self._checker = None
            scope.cancel()
            await done.wait()

    def forget(self, generation: int) -> None:
        """``generation`` is gone (retired, or a reload that failed): close our copy of its
        memory unless another generation shares it."""
        state = self._states.pop(generation, None)
        if state is not None and all(s is not state for s in self._states.values()):
            state.close()

    def add_stats(self, tree: dict[str, object]) -> None:
        """Add the checker's session-guard counters to a merged ``/stats`` tree."""
        add_counters(tree, "session_guard", vars(self.counters))

    def _state(self, generation: int, config: Config) -> SharedState:
        state = self._states.get(generation)
        if state is None:
            layout = SharedLayout.for_config(config)
            same = [s for s in self._states.values() if s.layout == layout]
            state = same[-1] if same else SharedState.create(config)
            self._states[generation] = state
        return state

    async def _run_checks(
        self,
        config: Config,
        guard: SessionGuard,
        workers: Workers,
        *,
        task_status: trio.TaskStatus[tuple[trio.CancelScope, trio.Event]],
    ) -> None:
        done = trio.Event()
        send, receive = trio.open_memory_channel[Verdict](math.inf)
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_forward, receive, workers)
                    await nursery.start(
                        partial(
                            run_health_checks,
                            config.upstreams,
                            board=self.board,
                            on_change=send.send_nowait,
                            guard=guard,
                        )
                    )
                    task_status.started((scope, done))
        finally:
            done.set()


async def _forward(receive: trio.MemoryReceiveChannel[Verdict], workers: Workers) -> None:
    async for verdict in receive:
        await _tell(workers, verdict)


async def _tell(workers: Workers, verdict: Verdict) -> None:
    message = {"op": "health", **asdict(verdict)}
    for handle in list(workers()):
        await handle.send(message)
