"""Run a real gateproxy daemon in the test's trio loop, on ephemeral ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio

from gateproxy.core.config import load_config_data
from gateproxy.daemon import Daemon


def tls_listener(
    *,
    cert: Path,
    key: Path,
    upstream: str = "app",
    name: str = "public",
    **extra: Any,
) -> dict[str, Any]:
    """A TLS listener on 127.0.0.1:0 routing everything to ``upstream``."""
    tls = {"certificates": [{"cert": str(cert), "key": str(key)}]}
    tls.update(extra.pop("tls", {}))
    listener: dict[str, Any] = {
        "name": name,
        "bind": "127.0.0.1:0",
        "tls": tls,
        "routes": [{"path_prefix": "/", "upstream": upstream}],
    }
    listener.update(extra)
    return listener


def proxy_config(
    listeners: list[dict[str, Any]], upstreams: Mapping[str, Any], **top: Any
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listeners": listeners,
        "upstreams": dict(upstreams),
        "admin": {"bind": "127.0.0.1:0"},
        "access_log": {"path": "off"},
        "shutdown_timeout": "5s",
    }
    config.update(top)
    return config


@asynccontextmanager
async def running_proxy(
    config: dict[str, Any], *, base_dir: Path = Path(".")
) -> AsyncIterator[Daemon]:
    """Start the daemon, yield it once listening, drain and stop it on exit."""
    daemon = Daemon(load_config_data(config, source="<test>"), base_dir=base_dir, source="<test>")
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(daemon.serve, handle_signals=False))
        try:
            yield daemon
        finally:
            daemon.request_stop(at_once=True)  # tests wait for a drain only when they ask


def address(daemon: Daemon, name: str = "public") -> str:
    host, port = daemon.addresses[name]
    return f"{host}:{port}"


async def poll(predicate: Callable[[], bool], *, max_wait: float = 3.0) -> None:
    """Wait until ``predicate()`` holds, checking every few milliseconds."""
    with trio.fail_after(max_wait):
        while True:  # counters have no change event to wait on: poll
            if predicate():
                return
            await trio.sleep(0.005)
