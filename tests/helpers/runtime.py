"""A ListenerRuntime for unit tests of the net/ shell: one plain listener routed to an upstream
whose port refuses (127.0.0.1:9), access log off. Build it inside a trio run."""

from __future__ import annotations

from pathlib import Path

from gateproxy.core.config import AccessLogConfig, load_config_data
from gateproxy.logs import AccessLog
from gateproxy.net.runtime import ListenerRuntime, Shared, build_runtime
from tests.helpers.rawhttp import plain_listener


def plain_listener_runtime() -> ListenerRuntime:
    config = load_config_data(
        {
            "listeners": [plain_listener()],
            "upstreams": {"app": {"servers": ["127.0.0.1:9"]}},
            "access_log": {"path": "off"},
        }
    )
    log = AccessLog(AccessLogConfig(path="off"))
    runtime = build_runtime(config, base_dir=Path("."), shared=Shared(), access_log=log)
    return runtime.listeners[0]
