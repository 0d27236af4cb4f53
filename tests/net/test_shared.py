"""net.shared: two mappings of one memfd are one table; the lock excludes other processes."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from gateproxy.core.config import Config, load_config_data
from gateproxy.core.health import relayed_answer
from gateproxy.core.pass_through import Fetch, Serve, Wait
from gateproxy.errors import SharedStateError
from gateproxy.net.shared import SharedLayout, SharedState, pid_alive


def config(**guard: Any) -> Config:
    listener = {
        "name": "p",
        "bind": "127.0.0.1:0",
        "health_checks": [
            {"path": "/a", "upstream": "app", "mode": "pass_through"},
            {"path": "/b", "upstream": "app", "mode": "pass_through"},
            {"path": "/c", "upstream": "app"},
        ],
        "routes": [{"upstream": "app"}],
    }
    return load_config_data(
        {
            "listeners": [listener],
            "upstreams": {"app": {"servers": ["127.0.0.1:1"]}},
            "session_guard": guard,
        }
    )


@pytest.fixture
def pair() -> Iterator[tuple[SharedState, SharedState]]:
    """The supervisor's state and a worker's, over one memfd."""
    cfg = config(max_pinned=50)
    first = SharedState.create(cfg)
    assert first.fd is not None
    second = SharedState.attach(os.dup(first.fd), cfg)
    yield first, second
    second.close()
    first.close()


def test_layout_follows_the_config() -> None:
    layout = SharedLayout.for_config(config(max_pinned=50))
    assert (layout.pin_slots, layout.answer_slots) == (50, 4)  # 2 pass-through checks, min 4
    assert SharedLayout.for_config(config()).size < 12 * 2**20  # 10000 pins: about 10 MiB


def test_pins_written_through_one_mapping_are_read_through_the_other(
    pair: tuple[SharedState, SharedState],
) -> None:
    a, b = (s.pins(idle_timeout=600.0) for s in pair)
    assert a.update(("10.0.0.1", "app"), set_={b"JSESSIONID": b"A"}, deleted=set(), now=1.0)
    assert b.lookup(("10.0.0.1", "app"), now=2.0) == b"JSESSIONID=A"
    assert b.update(("10.0.0.1", "app"), set_={b"JSESSIONID": b"B"}, deleted=set(), now=3.0)
    assert a.lookup(("10.0.0.1", "app"), now=4.0) == b"JSESSIONID=B"
    assert len(a) == len(b) == 1 and a.max_entries == 50


def test_one_fetch_for_both_mappings(pair: tuple[SharedState, SharedState]) -> None:
    first, second = pair
    options: dict[str, Any] = {"cache_time": 1.0, "timeout": 2.0, "alive": pid_alive}
    plan = first.answers.begin("app", "/a", now=10.0, me=os.getpid(), fetch_id=1, **options)
    assert isinstance(plan, Fetch)
    assert second.answers.begin("app", "/a", now=10.1, me=1, fetch_id=2, **options) == Wait(1)
    answer = relayed_answer(200, [], b"ok")
    first.answers.finish("app", "/a", plan, answer, now=10.2)
    got = second.answers.begin("app", "/a", now=10.3, me=1, fetch_id=3, **options)
    assert got == Serve(answer)


def test_a_worker_given_the_wrong_memory_says_so() -> None:
    small = SharedState.create(config(max_pinned=5))
    assert small.fd is not None
    try:
        with pytest.raises(SharedStateError, match="the config needs"):
            SharedState.attach(small.fd, config(max_pinned=6))
    finally:
        small.close()


def test_an_anonymous_state_has_the_same_tables_and_no_fd() -> None:
    state = SharedState.anonymous(config())
    pins = state.pins(idle_timeout=1.0)
    assert state.fd is None
    assert pins.update(("c", "s"), set_={b"J": b"1"}, deleted=set(), now=0.0)
    assert pins.lookup(("c", "s"), now=0.5) == b"J=1"
    state.close()


_HOLD = """
import os, sys
from gateproxy.net.shared import ProcessLock
lock = ProcessLock(int(sys.argv[1]))
with lock:
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_the_lock_excludes_another_process_and_nests_within_one(
    pair: tuple[SharedState, SharedState],
) -> None:
    first, _ = pair
    assert first.fd is not None
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(first.fd)],
        pass_fds=[first.fd],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "held\n"
        with pytest.raises(OSError):  # EAGAIN or EACCES: held by the child
            fcntl.lockf(first.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=10) == 0
    try_lock = f"import fcntl; fcntl.lockf({first.fd}, fcntl.LOCK_EX | fcntl.LOCK_NB)"
    with first.lock:
        with first.lock:  # nested: the inner exit keeps the lock
            pass
        busy = subprocess.run(
            [sys.executable, "-c", try_lock],
            pass_fds=[first.fd],
            stderr=subprocess.DEVNULL,
            check=False,
        )
        assert busy.returncode != 0
    free = subprocess.run([sys.executable, "-c", try_lock], pass_fds=[first.fd], check=False)
    assert free.returncode == 0


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)
