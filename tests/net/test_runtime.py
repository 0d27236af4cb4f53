"""ListenerRuntime.enforced: counts, per-client rejection lines and limit-storm events."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from tests.helpers.runtime import plain_listener_runtime

_listener = plain_listener_runtime


def _events(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines()]


async def test_a_limit_storm_is_one_event_per_window(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    listener = _listener()
    for i in range(250):  # 250 clients, each over its connection cap once, within 2.5 s
        listener.enforced("max_connections_per_client", client=f"10.0.0.{i}")
        listener.enforced("keepalive_timeout", client="10.9.9.9")  # lifecycle: never a storm
        await trio.sleep(0.01)
    events = _events(capsys.readouterr().err)
    storms = [e for e in events if e["event"] == "limit_storm"]
    assert storms == [
        {
            "time": storms[0]["time"],
            "event": "limit_storm",
            "listener": "plain",
            "count": 100,
            "window_s": 10.0,
            "by_reason": {"max_connections_per_client": 100},
        }
    ]
    per_client = [e for e in events if e["event"] == "limit_enforced"]
    assert len(per_client) == 250  # every client still gets its own first line
    assert listener.counters.limits["max_connections_per_client"] == 250
    assert listener.counters.limits["keepalive_timeout"] == 250
    await trio.sleep(10)  # next window: the storm goes on and is reported again
    for _ in range(100):
        listener.enforced("max_headers", client="10.1.0.1")
    storms = [e for e in _events(capsys.readouterr().err) if e["event"] == "limit_storm"]
    assert [s["by_reason"] for s in storms] == [{"max_headers": 100}]
