"""Worker processes as the supervisor sees them: start one, talk to it, notice when it is gone.

:func:`spawn_worker` starts ``python -m gateproxy.worker`` with the listening sockets it needs
and one end of a socketpair, then sends the ``setup`` message (see ``gateproxy.worker`` for the
protocol). :meth:`WorkerHandle.run` reads the worker's messages until its end of the channel
closes and then reaps the process; the events on the handle (``ready``, ``draining``,
``exited``) are what the supervisor waits on. A worker runs in its own session, so a Ctrl-C in a
terminal reaches only the supervisor, which decides what the workers do.
"""

from __future__ import annotations

import math
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from gateproxy.net.control import ControlChannel, ControlError, Message


@dataclass(eq=False)
class WorkerHandle:
    """One worker process and its control channel."""

    index: int
    generation: int
    process: trio.Process
    channel: ControlChannel
    started_at: float
    state: str = "starting"  # starting | ready | retiring | stopping
    restartable: bool = False  # the supervisor restarts it if it dies (set once committed)
    ready: trio.Event = field(default_factory=trio.Event)
    draining: trio.Event = field(default_factory=trio.Event)
    exited: trio.Event = field(default_factory=trio.Event)
    _replies: dict[int, Message] = field(default_factory=dict)
    _reply_events: dict[int, trio.Event] = field(default_factory=dict)
    _next_id: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def send(self, message: Message) -> bool:
        """Send a control message; False if the worker is already gone."""
        try:
            await self.channel.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def stats(self, *, max_wait: float) -> dict[str, Any] | None:
        """This worker's stats tree, or None if it does not answer within ``max_wait`` s."""
        self._next_id += 1
        request_id = self._next_id
        done = self._reply_events[request_id] = trio.Event()
        try:
            if not await self.send({"op": "stats", "id": request_id}):
                return None
            with trio.move_on_after(max_wait):
                await done.wait()
            reply = self._replies.pop(request_id, None)
        finally:
            self._reply_events.pop(request_id, None)
        stats = reply.get("stats") if reply else None
        return stats if isinstance(stats, dict) else None

    async def run(self) -> None:
        """Read messages until the worker closes its end, then wait for the process to end."""
        try:
            while True:
                message = await self.channel.receive()
                if message is None:
                    break
                self._dispatch(message)
        except ControlError:
            pass  # garbage on the channel: treat the worker as gone; the process is reaped below
        finally:
            with trio.CancelScope(shield=True):
                await self.channel.aclose()
                await self.process.wait()
                self.exited.set()
                self.ready.set()  # wake anyone still waiting for it to come up
                self.draining.set()

    def _dispatch(self, message: Message) -> None:
        op = message["op"]
        if op == "ready":
            self.state = "ready" if self.state == "starting" else self.state
            self.ready.set()
        elif op == "draining":
            self.draining.set()
        elif op == "stats_reply":
            request_id = message.get("id")
            if isinstance(request_id, int) and request_id in self._reply_events:
                self._replies[request_id] = message
                self._reply_events[request_id].set()

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


async def spawn_worker(
    *, index: int, generation: int, setup: Message, fds: Sequence[int]
) -> WorkerHandle:
    """Start a worker that inherits ``fds`` (the listening sockets) and send it ``setup``."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "gateproxy.worker", "--control-fd", str(child.fileno())],
            pass_fds=(child.fileno(), *fds),
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
    handle = WorkerHandle(
        index=index,
        generation=generation,
        process=process,
        channel=ControlChannel.from_socket(parent),
        started_at=trio.current_time(),
    )
    await handle.send({"op": "setup", "index": index, "generation": generation, **setup})
    return handle


async def wait_ready(handles: Sequence[WorkerHandle], *, max_wait: float) -> bool:
    """True once every handle said ``ready``; False if one died first or time ran out."""
    with trio.move_on_after(max_wait):
        for handle in handles:
            await handle.ready.wait()
            if handle.exited.is_set():
                return False
        return True
    return False


async def stop_all(handles: Sequence[WorkerHandle], *, grace: float) -> None:
    """Ask each worker to drain, wait up to ``grace`` seconds, then kill what is left."""
    for handle in handles:
        handle.state = "stopping"
        await handle.send({"op": "stop"})
    with trio.move_on_after(grace if math.isfinite(grace) else 3600.0):
        for handle in handles:
            await handle.exited.wait()
    for handle in handles:
        handle.kill()


async def gather_stats(
    handles: Sequence[WorkerHandle], *, max_wait: float
) -> dict[WorkerHandle, dict[str, Any]]:
    """Every worker's stats tree, asked concurrently; workers that do not answer are left out."""
    trees: dict[WorkerHandle, dict[str, Any]] = {}

    async def ask(handle: WorkerHandle) -> None:
        tree = await handle.stats(max_wait=max_wait)
        if tree is not None:
            trees[handle] = tree

    async with trio.open_nursery() as nursery:
        for handle in handles:
            nursery.start_soon(ask, handle)
    return trees
