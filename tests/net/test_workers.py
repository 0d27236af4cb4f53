"""spawn_worker / WorkerHandle / wait_ready / stop_all against a real worker process.

Each test starts ``python -m gateproxy.worker`` with a tiny plain-HTTP config and a socket from
:class:`ListenSlots`, as the supervisor does; the upstream is a closed port, so a request through
the worker is answered 502 by the worker itself.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from gateproxy.net.listen_slots import ListenSlots, slot_key
from gateproxy.net.workers import WorkerHandle, spawn_worker, stop_all, wait_ready
from tests.helpers.rawhttp import plain_listener

KEY = slot_key("plain", "127.0.0.1:0")


@pytest.fixture
def slots() -> Iterator[ListenSlots]:
    held = ListenSlots()
    held.ensure(KEY, slots=1)
    try:
        yield held
    finally:
        held.close_all()


def _setup(slots: ListenSlots, base_dir: Path, *, config_text: str | None = None) -> dict[str, Any]:
    config = {
        "listeners": [plain_listener()],
        "upstreams": {"app": {"servers": ["127.0.0.1:9"], "connect_timeout": "2s"}},
        "admin": None,
        "access_log": {"path": "off"},
        "shutdown_timeout": "5s",
    }
    return {
        "config_text": json.dumps(config) if config_text is None else config_text,
        "source": "<test>",
        "base_dir": str(base_dir),
        "listeners": {"plain": slots.fd(KEY, slot=0)},
        "ticket_keys": {},
    }


async def _spawn(
    slots: ListenSlots, base_dir: Path, nursery: trio.Nursery, **kw: Any
) -> WorkerHandle:
    handle = await spawn_worker(
        index=0, generation=1, setup=_setup(slots, base_dir, **kw), fds=[slots.fd(KEY, slot=0)]
    )
    nursery.start_soon(handle.run)
    return handle


async def _get_status(address: tuple[str, int]) -> bytes:
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


async def test_a_worker_serves_on_the_inherited_socket_reports_stats_and_stops_cleanly(
    slots: ListenSlots, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await _spawn(slots, tmp_path, nursery)
            try:
                assert handle.index == 0 and handle.generation == 1 and handle.pid > 0
                assert await wait_ready([handle], max_wait=30)
                assert handle.state == "ready" and not handle.exited.is_set()

                status = await _get_status(slots.address(KEY))
                assert status.startswith(b"HTTP/1.1 502"), status

                stats = await handle.stats(max_wait=5)
                assert stats is not None
                assert "plain" in stats["listeners"]
                assert stats["listeners"]["plain"]["requests"]["total"] == 1

                assert await handle.send({"op": "stop"})
                await handle.draining.wait()
                await handle.exited.wait()
            finally:
                handle.kill()  # only if a failed assertion left it running
    assert handle.returncode == 0
    # the worker is gone: sending fails quietly and stats says so
    assert not await handle.send({"op": "stats", "id": 99})
    assert await handle.stats(max_wait=1) is None
    # the supervisor still holds the listening socket
    assert slots.fd(KEY, slot=0) != -1


async def test_a_worker_that_dies_before_ready_fails_wait_ready(
    slots: ListenSlots, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await _spawn(slots, tmp_path, nursery, config_text="listeners: 5\n")
            try:
                assert not await wait_ready([handle], max_wait=30)
                await handle.exited.wait()
            finally:
                handle.kill()
    assert handle.returncode == 1
    assert handle.state == "starting"


async def test_stop_all_kills_what_does_not_exit_within_grace(
    slots: ListenSlots, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await _spawn(slots, tmp_path, nursery)
            try:
                assert await wait_ready([handle], max_wait=30)
                handle.process.send_signal(signal.SIGSTOP)  # it can neither answer nor drain
                await stop_all([handle], grace=0.0)
                await handle.exited.wait()
            finally:
                handle.kill()
    assert handle.state == "stopping"
    assert handle.returncode == -signal.SIGKILL
