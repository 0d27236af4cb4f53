"""Daemon stop phases: the ``shutdown_delay`` lame duck (health 503, still accepting, every
response closing its connection), then the drain; a further signal hurries one step."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from gateproxy.core.config import load_config_data
from gateproxy.daemon import Daemon
from tests.helpers.proxy import proxy_config
from tests.helpers.rawhttp import RawClient, plain_listener
from tests.helpers.upstreams import RecordingUpstream

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


@asynccontextmanager
async def _serving(upstream: str, **top: Any) -> AsyncIterator[Daemon]:
    """A plain-HTTP daemon with a local /healthz; the block must stop it."""
    listener = plain_listener(health_checks=[{"path": "/healthz", "upstream": "app"}])
    config = proxy_config([listener], {"app": {"servers": [upstream]}}, admin=None, **top)
    daemon = Daemon(load_config_data(config, source="<test>"), base_dir=Path("."))
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(daemon.serve, handle_signals=False))
        yield daemon


def _events(capsys: pytest.CaptureFixture[str]) -> list[str]:
    lines = capsys.readouterr().err.splitlines()
    return [json.loads(line)["event"] for line in lines if line.startswith("{")]


async def _ask(daemon: Daemon, request: bytes) -> tuple[int, bool]:
    """(status, whether the response says Connection: close) on a new connection."""
    async with await RawClient.connect(daemon) as client:
        await client.send(request)
        response = await client.read_response()
        return response.status, response.closes


async def _refused(daemon: Daemon) -> bool:
    try:
        stream = await trio.open_tcp_stream(*daemon.addresses["plain"])
    except OSError:
        return True
    await stream.aclose()
    return False


async def test_during_the_delay_it_accepts_serves_and_answers_health_503(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with RecordingUpstream() as up, _serving(up.address, shutdown_delay="1h") as daemon:
        assert await _ask(daemon, HEALTH) == (200, False)
        async with await RawClient.connect(daemon) as idle:  # keep-alive, idle at the stop
            await idle.send(GET)
            assert (await idle.read_response()).status == 200
            daemon.request_stop()
            with trio.fail_after(5):
                assert await _ask(daemon, HEALTH) == (503, True)  # new connections accepted
                assert await _ask(daemon, GET) == (200, True)
                await idle.send(GET)  # the idle one is served too, and told to go away
                last = await idle.read_response()
                assert (last.status, last.closes) == (200, True)
                assert await idle.closed_within(5)
        assert not daemon.stopped_accepting.is_set()
        daemon.hurry()  # a second signal: the drain begins now
        with trio.fail_after(5):
            await daemon.stopped_accepting.wait()
        assert await _refused(daemon)
        await daemon.stopped.wait()
    assert _events(capsys)[-3:] == ["lame_duck", "draining", "stopped"]


async def test_the_delay_ends_by_itself_then_the_drain_begins(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    async with _serving("127.0.0.1:9", shutdown_delay="30s") as daemon:
        stopped_at = trio.current_time()
        daemon.request_stop()
        await daemon.stopped_accepting.wait()
        assert trio.current_time() - stopped_at == pytest.approx(30.0)
        assert daemon.shared.draining
    assert _events(capsys)[-3:] == ["lame_duck", "draining", "stopped"]


async def test_no_delay_by_default_stops_accepting_at_once(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    async with _serving("127.0.0.1:9") as daemon:
        stopped_at = trio.current_time()
        daemon.request_stop()
        await daemon.stopped_accepting.wait()
        assert trio.current_time() == stopped_at
    assert "lame_duck" not in _events(capsys)


async def test_signals_hurry_one_step_each(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    hold = trio.Event()  # never set: the in-flight request waits for its upstream
    async with RecordingUpstream(hold=hold) as up:
        async with _serving(up.address, shutdown_delay="1h", shutdown_timeout="1h") as daemon:
            async with await RawClient.connect(daemon) as client:
                await client.send(GET)
                await up.wait_for(lambda: len(up.requests) == 1)
                daemon._on_signal(signal.SIGTERM)  # the lame duck
                await trio.sleep(1)  # (the mock clock's second)
                assert not daemon.stopped_accepting.is_set()
                daemon._on_signal(signal.SIGTERM)  # ends the delay; the drain waits for the request
                await daemon.stopped_accepting.wait()
                assert not daemon.stopped.is_set()
                at = trio.current_time()
                daemon._on_signal(signal.SIGTERM)  # cuts the drain short
                await daemon.stopped.wait()
                assert trio.current_time() == at
                assert await client.closed_within(1)
    phases = [e for e in _events(capsys) if e in ("lame_duck", "draining", "stopped")]
    assert phases == ["lame_duck", "draining", "stopped"]
