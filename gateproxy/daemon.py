"""The daemon's lifecycle: build runtime state, listen, run timers, drain on stop.

Theory of operation. :class:`Daemon` runs two nurseries: the *connection* nursery holds every
client connection; inside it the *service* nursery holds the accept loops, the admin listener,
the timers (session-cache sweep, ticket rotation, upstream idle expiry) and the signal watcher.
Stopping (SIGTERM/SIGINT or :meth:`Daemon.request_stop`) first marks the runtime as draining
(health answers turn 503, responses carry ``Connection: close``). With ``shutdown_delay`` > 0 the
daemon is then a *lame duck* for that long: it still accepts and serves, so a load balancer that
has not yet seen the 503 gets answers, not refused connections. Then it cancels the service
nursery — no more accepts — wakes and closes idle keep-alive connections and gives in-flight
requests ``shutdown_timeout`` before cancelling what is left. A further signal hurries one step
(:meth:`Daemon.hurry`): during the delay it starts the drain at once, during the drain it cancels
what is left.

*Retiring* (SIGQUIT or :meth:`Daemon.retire`) is the gentle stop a reload uses on the old
generation of workers: accepting stops, but health answers stay as they are and established
connections go on, each closed after its next response (``Connection: close``), idle ones at their
keep-alive timeout; ``shutdown_timeout`` caps it all. A SIGTERM while retiring makes it a drain.

In a plain ``Daemon`` SIGHUP (or :meth:`Daemon.reload_ticket_keys`) re-reads every listener's
``tickets.key_files`` and swaps the keys in; a file that cannot be read or parsed keeps that
listener's old keys. ``gateproxy run`` puts a supervisor in front (``gateproxy.supervisor``): it
reloads everything by starting a new generation of workers, each a ``Daemon`` with
``role="worker"`` that accepts on sockets it inherited and uses the ticket keys it was handed.
SIGUSR1 reopens the access log (log rotation).
"""

from __future__ import annotations

import math
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import trio

from gateproxy.core.access import AccessList
from gateproxy.core.config import AccessLogConfig, Config
from gateproxy.core.health import HealthBoard, Verdict
from gateproxy.core.metrics import build_stats
from gateproxy.core.ticket_keys import TicketKey, keep_known
from gateproxy.logs import AccessLog, event
from gateproxy.net.admin import AdminGuard, open_admin_listeners, serve_admin
from gateproxy.net.listener import bound_address, open_listeners, serve_listener, trio_listener
from gateproxy.net.probes import apply_verdict, run_health_checks
from gateproxy.net.procinfo import process_info
from gateproxy.net.runtime import (
    ListenerRuntime,
    Runtime,
    Shared,
    build_runtime,
    read_ticket_keys,
)
from gateproxy.net.shared import SharedState
from gateproxy.tls.selftest import run_self_test

TIMER_PERIOD = 1.0


class Daemon:
    """One gateproxy process serving a config."""

    def __init__(
        self,
        config: Config,
        *,
        base_dir: Path,
        source: str = "<config>",
        role: str = "daemon",
        inherited: Mapping[str, socket.socket] | None = None,
        ticket_keys: Mapping[str, Sequence[TicketKey]] | None = None,
        shared_state: SharedState | None = None,
        verdicts: Sequence[Verdict] = (),
    ) -> None:
        """``role="worker"``: accept on the ``inherited`` sockets (listener name -> socket), use
        the handed ``ticket_keys`` and the workers' ``shared_state``, start from the active
        checks' ``verdicts`` and get later ones from the supervisor (:meth:`apply_verdict`),
        and leave the admin listener and the active checks to the supervisor."""
        self.config = config
        self.base_dir = base_dir
        self.source = source
        self.role = role
        self._inherited = dict(inherited or {})
        self._ticket_keys = ticket_keys
        self._shared_state = shared_state
        self._verdicts = list(verdicts)
        self.shared = Shared()
        self.access_log = AccessLog(_resolved_log_config(config, base_dir=base_dir))
        if config.tls_engine == "full" and any(lc.tls for lc in config.listeners):
            run_self_test()
        self._runtime: Runtime | None = None
        self.addresses: dict[str, tuple[str, int]] = {}
        self.admin_address: tuple[str, int] | None = None
        self._stop = trio.Event()
        self._skip_delay = trio.Event()
        self._delay_over = False
        self._drain_requested = False
        self._drain_started = False
        self._cut_short = False
        self._connections: trio.Nursery | None = None
        self.stopped_accepting = trio.Event()
        self.stopped = trio.Event()

    @property
    def runtime(self) -> Runtime:
        """The live config generation (built inside ``serve``: it reads the trio clock)."""
        if self._runtime is None:
            raise RuntimeError("the daemon is not serving yet")
        return self._runtime

    def request_stop(self, *, at_once: bool = False) -> None:
        """Begin a graceful stop: the lame-duck delay, then the drain (again: no-op);
        ``at_once`` skips the delay and cancels what is left."""
        self._cut_short = self._cut_short or at_once
        if at_once:
            self._skip_delay.set()
        self._drain_requested = True
        self._stop.set()
        if self.stopped_accepting.is_set() and self._connections is not None:
            self._drain(self._connections)  # retiring, or a second signal: act now

    def hurry(self) -> None:
        """A further stop signal: end the lame-duck delay now, or (already draining, or no
        delay) cancel what is left."""
        if self._drain_requested and not self._delay_over and self._delay() > 0:
            self._skip_delay.set()
        else:
            self.request_stop(at_once=True)

    def retire(self) -> None:
        """Stop accepting; let established connections finish (see the module docstring)."""
        if not self._stop.is_set():
            self.shared.retiring = True
            self._stop.set()

    def reopen_logs(self) -> None:
        """Reopen the access log file (after logrotate moved it away)."""
        self.access_log.reopen()
        event("logs_reopened", path=self.config.access_log.path)

    async def serve(
        self,
        *,
        task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
        handle_signals: bool = True,
    ) -> None:
        """Run until stopped; ``task_status.started(self)`` once every socket is listening."""
        self.shared.started_at = trio.current_time()
        self.shared.refresh_date(wall_time=time.time())
        self._runtime = build_runtime(
            self.config,
            base_dir=self.base_dir,
            shared=self.shared,
            access_log=self.access_log,
            source=self.source,
            ticket_keys=self._ticket_keys,
            shared_state=self._shared_state,
        )
        for verdict in self._verdicts:
            self.apply_verdict(verdict)
        try:
            async with trio.open_nursery() as outer:
                if handle_signals:
                    outer.start_soon(self._watch_signals)
                async with trio.open_nursery() as connections:
                    async with trio.open_nursery() as services:
                        await self._start_services(services, connections)
                        name = "worker_started" if self.role == "worker" else "started"
                        event(name, listeners=self.addresses, admin=self.admin_address)
                        task_status.started(self)
                        await self._stop.wait()
                        await self._lame_duck()
                        services.cancel_scope.cancel()
                    self._connections = connections
                    self.stopped_accepting.set()
                    if self.shared.retiring and not self._drain_requested:
                        self._retire(connections)
                    else:
                        self._drain(connections)
                outer.cancel_scope.cancel()  # the signal watcher
        finally:
            with trio.CancelScope(shield=True):
                await self._close_upstreams()
            self.access_log.close()
            event("stopped")
            self.stopped.set()

    async def _start_services(self, services: trio.Nursery, connections: trio.Nursery) -> None:
        for listener in self.runtime.listeners:
            sockets = self._listen(listener)
            self.addresses[listener.name] = bound_address(sockets)
            services.start_soon(
                partial(serve_listener, listener, sockets, handler_nursery=connections)
            )
        if self.config.admin is not None and self.role != "worker":
            admin_sockets = await open_admin_listeners(self.config.admin.bind)
            self.admin_address = bound_address(admin_sockets)
            guard = AdminGuard(AccessList(self.config.admin.access))
            await services.start(_serve_admin_task, admin_sockets, self.stats, guard)
        services.start_soon(self._timers)
        for listener in self.runtime.listeners:
            if listener.shared_sessions is not None:
                services.start_soon(listener.shared_sessions.run)
        if self.role != "worker":  # workers get the supervisor's verdicts: one checker per daemon
            services.start_soon(
                partial(
                    run_health_checks,
                    self.config.upstreams,
                    board=HealthBoard(),
                    on_change=self.apply_verdict,
                    guard=self.runtime.guard,
                )
            )

    def apply_verdict(self, verdict: Verdict) -> None:
        """An active check's verdict on one server (ours, or the supervisor's)."""
        apply_verdict(self.runtime.upstreams, verdict)

    def _listen(self, listener: ListenerRuntime) -> list[trio.SocketListener]:
        inherited = self._inherited.get(listener.name)
        if inherited is None:
            return open_listeners(listener.config.bind)
        return [trio_listener(inherited)]

    def _delay(self) -> float:
        return 0.0 if self._cut_short else self.config.shutdown_delay

    async def _lame_duck(self) -> None:
        """Stopping (not retiring): answer health 503 and close each connection after its next
        response, but go on accepting for ``shutdown_delay`` (or until :meth:`hurry`)."""
        try:
            if not self._drain_requested or self.shared.retiring:
                return  # retiring: a new generation accepts on the same sockets already
            self.shared.draining = True
            delay = self._delay()
            if delay > 0 and not self._skip_delay.is_set():
                event("lame_duck", delay_s=delay)
                with trio.move_on_after(delay):
                    await self._skip_delay.wait()
        finally:
            self._delay_over = True

    def _drain(self, connections: trio.Nursery) -> None:
        if not self._drain_started:
            self._drain_started = True
            self.shared.draining = True
            event("draining", timeout_s=self.config.shutdown_timeout)
            self._set_deadline(connections)
        for scope in list(self.shared.idle_scopes):
            scope.cancel()
        if self._cut_short:
            connections.cancel_scope.cancel()

    def _retire(self, connections: trio.Nursery) -> None:
        event("retiring", timeout_s=self.config.shutdown_timeout)
        self._set_deadline(connections)

    def _set_deadline(self, connections: trio.Nursery) -> None:
        deadline = trio.current_time() + self.config.shutdown_timeout
        connections.cancel_scope.deadline = min(connections.cancel_scope.deadline, deadline)

    async def _watch_signals(self) -> None:
        watched = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)
        with trio.open_signal_receiver(*watched) as signals:
            async for signum in signals:
                self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        event("signal", signal=signal.Signals(signum).name)
        if signum == signal.SIGHUP:
            self.reload_ticket_keys()
        elif signum == signal.SIGUSR1:
            self.reopen_logs()
        elif signum == signal.SIGQUIT:
            self.retire()
        elif self._drain_requested and self.role != "worker":
            self.hurry()  # a further signal; in a worker only the supervisor hurries (under
            # systemd both the signal and the supervisor's stop may arrive)
        else:
            self.request_stop()

    def install_ticket_keys(self, keys: Mapping[str, Sequence[TicketKey]]) -> None:
        """Swap in keys handed down by the supervisor (listener name -> keys, encrypting first)."""
        for listener in self.runtime.listeners:
            handed, engine = keys.get(listener.name), listener.engine
            if handed and engine is not None and engine.keyring is not None:
                engine.replace_keys(keep_known(engine.keyring.keys(), list(handed)))

    def reload_ticket_keys(self) -> dict[str, bool]:
        """Re-read every listener's ticket key files and swap the keys in (what SIGHUP does).

        Returns ``{listener: reloaded}`` for the listeners with key files. A listener whose files
        cannot be read or parsed keeps its old keys and logs ``reload_failed``. Keys that did not
        change keep their age.
        """
        results: dict[str, bool] = {}
        if self.config.tls_engine == "stdlib_only":
            return results  # degraded mode has no ticket-key control: key files are unused
        for index, listener in enumerate(self.runtime.listeners):
            tls, engine = listener.config.tls, listener.engine
            if tls is None or engine is None or not tls.tickets.key_files:
                continue
            if engine.keyring is None:
                continue  # tickets disabled: nothing to swap
            keys, problems = read_ticket_keys(
                tls, base_dir=self.base_dir, now=trio.current_time(), path=f"listeners[{index}].tls"
            )
            current = engine.keyring.keys()
            if problems:
                event(
                    "reload_failed",
                    what="ticket_keys",
                    listener=listener.name,
                    errors=[p.render(self.source) for p in problems],
                    kept=[k.name_prefix() for k in current],
                )
                results[listener.name] = False
                continue
            keys = keep_known(current, keys)
            engine.replace_keys(keys)
            event(
                "ticket_keys_reloaded",
                listener=listener.name,
                keys=[k.name_prefix() for k in keys],
            )
            results[listener.name] = True
        return results

    async def _timers(self) -> None:
        next_sweep: dict[str, float] = {}
        while True:
            await trio.sleep(TIMER_PERIOD)
            now = trio.current_time()
            for listener in self.runtime.listeners:
                self._tick_listener(listener, now=now, next_sweep=next_sweep)
            self.shared.refresh_date(wall_time=time.time())
            for group in self.runtime.upstreams.values():
                group.close_expired(now=now)

    def _tick_listener(
        self, listener: ListenerRuntime, *, now: float, next_sweep: dict[str, float]
    ) -> None:
        engine, tls = listener.engine, listener.config.tls
        if engine is None or tls is None:
            return
        if engine.rotate_if_due(now=now):
            event("ticket_key_rotated", listener=listener.name)
        if now >= next_sweep.get(listener.name, -math.inf):
            engine.sweep(now=now)
            next_sweep[listener.name] = now + tls.session_cache.sweep_interval

    def stats(self) -> dict[str, object]:
        now = trio.current_time()
        return build_stats(
            metrics=self.shared.metrics,
            tls={lr.name: _tls_stats(lr, now=now) for lr in self.runtime.listeners if lr.engine},
            upstream_servers={
                n: g.servers_view(now=now) for n, g in self.runtime.upstreams.items()
            },
            guard_tables=self.runtime.guard.tables() if self.runtime.guard else None,
            process=process_info(started_at_monotonic=self.shared.started_at, now=now),
        )

    async def _close_upstreams(self) -> None:
        for group in self.runtime.upstreams.values():
            group.close_idle()


def _tls_stats(listener: ListenerRuntime, *, now: float) -> dict[str, object]:
    """The engine's stats, with ``session_cache.shared`` when the listener shares sessions."""
    assert listener.engine is not None
    stats = listener.engine.stats(now=now)
    cache = stats.get("session_cache")
    if listener.shared_sessions is not None and isinstance(cache, dict):
        cache["shared"] = listener.shared_sessions.stats()
    return stats


def _resolved_log_config(config: Config, *, base_dir: Path) -> AccessLogConfig:
    """``access_log`` with a relative file path made relative to the config's folder."""
    log = config.access_log
    if log.path in ("-", "off") or Path(log.path).expanduser().is_absolute():
        return log
    return log.model_copy(update={"path": str(base_dir / log.path)})


async def _serve_admin_task(
    sockets: list[trio.SocketListener],
    stats: Callable[[], dict[str, object]],
    guard: AdminGuard,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve_admin(sockets, stats=stats, guard=guard, task_status=task_status)
