"""Drive a ``core.machine.ConnectionMachine`` by hand: bytes in, bytes and actions out, no I/O.

:class:`Play` builds the machine of the first listener of a config (a dict, validated like a
file) and plays the shell's part: it feeds client and upstream bytes at an explicit ``now``,
answers ``Acquire`` with a fresh (or reused) ``ClientConnection``, and collects what the
machine leaves: ``to_client()`` / ``to_upstream()`` bytes and every action taken so far.
"""

from __future__ import annotations

from typing import Any

from gateproxy.core.actions import Acquire, Action, Enforced, LogRecord, Release
from gateproxy.core.config import Config, load_config_data
from gateproxy.core.h1_client import ClientConnection
from gateproxy.core.machine import ConnectionMachine
from gateproxy.core.metrics import Metrics
from gateproxy.core.policy import ServiceState, build_policy
from gateproxy.core.session_guard import SessionGuard
from gateproxy.core.upstream_state import UpstreamState

DATE = b"Thu, 03 Dec 2026 10:00:00 GMT"
GET = b"GET /a HTTP/1.1\r\nHost: app.test\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def config(**listener: Any) -> dict[str, Any]:
    """A one-listener config dict; ``listener`` keys override, ``upstreams=`` replaces them."""
    upstreams = listener.pop("upstreams", {"app": {"servers": ["10.0.0.1:80", "10.0.0.2:80"]}})
    guard = listener.pop("session_guard", None)
    base: dict[str, Any] = {
        "listeners": [
            {"name": "public", "bind": "127.0.0.1:0", "routes": [{"upstream": "app"}], **listener}
        ],
        "upstreams": upstreams,
    }
    if guard is not None:
        base["session_guard"] = guard
    return base


class Play:
    """One client connection's machine and the shell around it (see the module docstring)."""

    def __init__(self, data: dict[str, Any] | None = None, *, probe: bool = False) -> None:
        self.config: Config = load_config_data(data or config())
        self.metrics = Metrics()
        self.service = ServiceState()
        self.service.date = DATE
        self.upstreams = {
            name: UpstreamState(name, cfg, counters=self.metrics.upstream(name))
            for name, cfg in self.config.upstreams.items()
        }
        self.guard = SessionGuard(self.config.session_guard, counters=self.metrics.guard)
        listener = self.config.listeners[0]
        self.policy = build_policy(
            self.config,
            listener,
            counters=self.metrics.listener(listener.name),
            upstreams=self.upstreams,
            service=self.service,
            guard=self.guard,
        )
        self.now = 0.0
        self.machine = ConnectionMachine(self.policy, client_ip="192.0.2.7", probe=probe, now=0.0)
        self.actions: list[Action] = []
        self.conns: list[ClientConnection] = []

    # --- inputs ---------------------------------------------------------------------------

    def at(self, now: float) -> Play:
        self.now = now
        return self

    def client(self, data: bytes) -> Play:
        self.machine.client_data(data, now=self.now)
        return self._collect()

    def upstream(self, data: bytes) -> Play:
        self.machine.upstream_data(data, now=self.now)
        return self._collect()

    def ready(self, *, reused: bool = False) -> ClientConnection:
        """Answer the pending ``Acquire`` with a connection to its server."""
        acquire = self.last(Acquire)
        conn = ClientConnection(server=acquire.server)
        conn.reused = reused
        self.conns.append(conn)
        self.machine.upstream_ready(conn, now=self.now)
        self._collect()
        return conn

    def connect_failed(self, *, timeout: bool = False) -> Play:
        self.machine.upstream_failed(connected=False, timeout=timeout, now=self.now)
        return self._collect()

    def broken(self, *, timeout: bool = False) -> Play:
        self.machine.upstream_failed(connected=True, timeout=timeout, now=self.now)
        return self._collect()

    def tick(self) -> Play:
        """The pump's deadline fired at ``now``."""
        self.machine.timer(now=self.now)
        return self._collect()

    def gone(self) -> Play:
        self.machine.client_gone(now=self.now)
        return self._collect()

    def _collect(self) -> Play:
        self.actions += self.machine.take_actions()
        return self

    # --- outputs --------------------------------------------------------------------------

    def to_client(self) -> bytes:
        data = bytes(self.machine.out_client)
        self.machine.out_client.clear()
        return data

    def to_upstream(self) -> bytes:
        data = bytes(self.machine.out_upstream)
        self.machine.out_upstream.clear()
        return data

    def of(self, kind: type[Any]) -> list[Any]:
        return [a for a in self.actions if isinstance(a, kind)]

    def last(self, kind: type[Any]) -> Any:
        found = self.of(kind)
        assert found, f"no {kind.__name__} in {self.actions}"
        return found[-1]

    @property
    def enforced(self) -> list[str]:
        return [a.reason for a in self.of(Enforced)]

    @property
    def logged(self) -> list[tuple[str, int]]:
        return [(a.kind, a.status) for a in self.of(LogRecord)]

    @property
    def releases(self) -> list[bool]:
        return [a.reusable for a in self.of(Release)]


def status_of(response: bytes) -> int:
    """The status code of the first response in ``response``."""
    assert response.startswith(b"HTTP/1.1 "), response[:80]
    return int(response[9:12])
