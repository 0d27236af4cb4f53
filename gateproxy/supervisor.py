"""The supervisor: what ``gateproxy run`` runs. Holds the sockets and keys, runs the workers.

Theory of operation
-------------------
The supervisor validates the config (schema, certificates, key files, the TLS engine self-test),
binds every listener (one ``SO_REUSEPORT`` socket per worker, ``net.listen_slots``) and starts
``workers`` worker processes (``gateproxy.worker``), each a ``Daemon`` accepting on the sockets
of its slot. It never accepts a client connection itself. It also:

* **holds the ticket keys** (``net.key_rings``): it makes and rotates them on its own clock for
  every listener without ``key_files`` and reads the key files of the others (again on each
  reload, logging ``ticket_keys_reloaded`` once per listener), handing each key list to every
  worker with the keys' ages, so a client resumes on whichever worker it lands and a key's age
  does not restart with a new worker;
* **restarts a worker that dies**, in the same slot, with back-off (``core.restarts``);
* **runs the active health checks** once for the whole daemon and tells every worker the
  verdicts, and makes the shared memory of each generation (session-guard pins, pass-through
  answers) that its workers map (``net.fleet_health``);
* **reloads on SIGHUP**: re-read and validate everything; on any problem log each one with its
  key path and keep the running generation. Otherwise open the sockets of new listeners, start a
  new generation of workers with the new config, and once all of them are ready tell the old
  ones to *retire* (stop accepting; open connections finish under the old config, each closed
  after its next response) and close the sockets of removed listeners. The sockets of listeners
  that stay are the same sockets throughout, so no connection attempt is refused;
* **drains on SIGTERM/SIGINT**: tell every worker to stop: health answers 503 at once, and with
  ``shutdown_delay`` the workers go on accepting for that long (lame duck); then they stop
  accepting, close idle keep-alive connections and give in-flight requests
  ``shutdown_timeout``; exit 0 once all workers exited 0. Each further signal hurries the
  workers one step: the first ends the delay, the next cuts the drain short;
* **serves the admin listener**: ``/stats`` merges the workers' trees (``core.metrics
  .merge_stats``) and lists each worker; ``/metrics`` renders the merged tree;
* forwards SIGUSR1 (reopen the access log) to the workers.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import trio

from gateproxy.config_files import load_and_check
from gateproxy.core.access import AccessList
from gateproxy.core.config import Config
from gateproxy.core.metrics import add_fleet_key_stats, merge_stats
from gateproxy.core.restarts import RestartPolicy
from gateproxy.errors import ConfigError, GateproxyError, first_error
from gateproxy.logs import event
from gateproxy.net.admin import AdminGuard, open_admin_listeners, serve_admin
from gateproxy.net.fleet_health import FleetHealth
from gateproxy.net.fleet_keys import FleetKeys
from gateproxy.net.key_rings import SupervisorKeys
from gateproxy.net.listen_slots import ListenError, ListenSlots, slot_key
from gateproxy.net.procinfo import start_time
from gateproxy.net.sd_notify import notify, reloading_fields
from gateproxy.net.workers import (
    WorkerHandle,
    gather_stats,
    spawn_worker,
    stop_all,
    wait_ready,
)

STARTUP_TIMEOUT = 30.0
STATS_TIMEOUT = 2.0
TIMER_PERIOD = 1.0


class StartupError(GateproxyError):
    """The first generation of workers did not come up."""


@dataclass
class Generation:
    """One config generation and its workers (index -> handle)."""

    number: int
    config: Config
    text: str
    workers: dict[int, WorkerHandle] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.config.worker_count(cpus=_cpus())

    def wanted_sockets(self) -> dict[str, int]:
        return {slot_key(lc.name, lc.bind): self.size for lc in self.config.listeners}


class Supervisor:
    """Runs the workers of one config file (see the module docstring)."""

    def __init__(self, config: Config, text: str, *, path: Path) -> None:
        self.path = path
        self.base_dir = path.resolve().parent
        self.current = Generation(1, config, text)
        self.slots = ListenSlots()
        self.fleet_keys = FleetKeys(base_dir=self.base_dir)
        self.keys = SupervisorKeys(
            base_dir=self.base_dir, source=str(path), fleet=self.fleet_keys
        )
        self.fleet = FleetHealth()
        self.retiring: list[WorkerHandle] = []
        self.policies: dict[int, RestartPolicy] = {}
        self.counters = {"worker_restarts": 0, "reloads": 0, "reload_failures": 0}
        self.addresses: dict[str, tuple[str, int]] = {}
        self.admin_address: tuple[str, int] | None = None
        self.exit_status = 0
        self._stop = trio.Event()
        self._stop_count = 0
        self._further_stop = trio.Event()
        self._reload_lock = trio.Lock()
        self._admin_scope: trio.CancelScope | None = None
        self.admin_guard = AdminGuard()  # admin.access of the current generation
        self._stats_cache: dict[str, object] = merge_stats([])
        self._nursery: trio.Nursery | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
    ) -> int:
        """Serve until drained; returns the exit status (0: every worker exited cleanly)."""
        try:
            await self._serve(task_status)
        except BaseException as exc:
            self.exit_status = 1
            if isinstance(exc, BaseExceptionGroup):
                raise first_error(exc) from None
            raise
        finally:
            self.slots.close_all()
            self._remove_pid_file()
            event("stopped", exit_status=self.exit_status)
        return self.exit_status

    async def _serve(self, task_status: trio.TaskStatus[Supervisor]) -> None:
        self._open_sockets(self.current)  # a port in use: one clear error, no workers
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_signals)
            nursery.start_soon(self._timers)
            await self._prepare_fleet_keys(self.current.config)
            self.keys.prepare(self.current.config, now=trio.current_time())
            nursery.start_soon(self.fleet_keys.run, self._fleet_keys_changed)
            try:
                await self._start_admin(self.current.config)  # likewise before any worker
                if not await self._start_generation(self.current):
                    raise StartupError("the workers did not start (see the lines above)")
                self._commit(self.current)
                await self._start_checks(self.current)
            except BaseException:
                for handle in self._live_workers():
                    handle.kill()  # else reaping them would wait forever
                raise
            self._write_pid_file()
            event(
                "started",
                listeners=self.addresses,
                admin=self.admin_address,
                workers=self.current.size,
                pid=os.getpid(),
            )
            notify("READY=1", f"STATUS={self._status()}", f"MAINPID={os.getpid()}")
            task_status.started(self)
            await self._stop.wait()
            await self._drain()
            nursery.cancel_scope.cancel()

    def request_stop(self) -> None:
        """Stop every worker and exit; each further call hurries the workers one step."""
        self._stop_count += 1
        self._stop.set()
        if self._stop_count > 1:
            self._further_stop.set()

    def _status(self) -> str:
        """The ``STATUS=`` line for ``systemctl status``."""
        gen = self.current
        return f"serving: generation {gen.number}, {gen.size} worker(s)"

    async def _drain(self) -> None:
        notify("STOPPING=1", "STATUS=stopping: draining in-flight requests")
        self.slots.close_all()  # our copies; each worker closes its own when it stops accepting
        handles = self._live_workers()
        for handle in handles:
            handle.state = "stopping"
            await handle.send({"op": "stop"})
        config = self.current.config
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward_further_stops, handles)
            if config.shutdown_delay > 0:
                event("lame_duck", delay_s=config.shutdown_delay, workers=[h.pid for h in handles])
            with trio.move_on_after(config.shutdown_delay + 5.0):
                for handle in handles:
                    await handle.draining.wait()
            timeout = config.shutdown_timeout
            event("draining", timeout_s=timeout, workers=[h.pid for h in handles])
            with trio.move_on_after(timeout + 5.0):  # each worker enforces timeout itself
                for handle in handles:
                    await handle.exited.wait()
            nursery.cancel_scope.cancel()
        for handle in handles:
            handle.kill()
            await handle.exited.wait()
        self.exit_status = 0 if all(h.returncode == 0 for h in handles) else 1

    async def _forward_further_stops(self, handles: list[WorkerHandle]) -> None:
        while True:
            await self._further_stop.wait()
            self._further_stop = trio.Event()
            for handle in handles:
                await handle.send({"op": "stop", "hurry": True})

    # --- workers --------------------------------------------------------------------------------

    async def _start_generation(self, gen: Generation) -> bool:
        """Open the sockets ``gen`` needs, start its workers, wait until all are ready."""
        self._open_sockets(gen)
        for index in range(gen.size):
            await self._spawn(gen, index)
        ok = await wait_ready(list(gen.workers.values()), max_wait=STARTUP_TIMEOUT)
        if ok:
            self.addresses = {
                lc.name: self.slots.address(slot_key(lc.name, lc.bind))
                for lc in gen.config.listeners
            }
        return ok

    def _open_sockets(self, gen: Generation) -> None:
        """Every listener socket of ``gen``; a ListenError names the listener's key path."""
        for i, lc in enumerate(gen.config.listeners):
            key = slot_key(lc.name, lc.bind)
            self.slots.ensure(key, slots=gen.size, key_path=f"listeners[{i}].bind")

    async def _spawn(self, gen: Generation, index: int) -> WorkerHandle:
        assert self._nursery is not None
        fds = {
            lc.name: self.slots.fd(slot_key(lc.name, lc.bind), slot=index)
            for lc in gen.config.listeners
        }
        shared, shared_fds = self.fleet.setup(gen.number, gen.config)
        setup = {
            "config_text": gen.text,
            "source": str(self.path),
            "base_dir": str(self.base_dir),
            "listeners": fds,
            "ticket_keys": self.keys.wire(now=trio.current_time()),
            **shared,
        }
        handle = await spawn_worker(
            index=index, generation=gen.number, setup=setup, fds=[*fds.values(), *shared_fds]
        )
        gen.workers[index] = handle
        self._nursery.start_soon(self._supervise, gen, handle)
        return handle

    async def _supervise(self, gen: Generation, handle: WorkerHandle) -> None:
        """Wait for the worker to end; restart it if it died while it should be serving."""
        await handle.run()
        if handle in self.retiring:
            self.retiring.remove(handle)
        if self._stop.is_set() or gen is not self.current or not handle.restartable:
            return  # stopping, retired, or a start that its caller handles (startup, reload)
        uptime = trio.current_time() - handle.started_at
        delay = self.policies.setdefault(handle.index, RestartPolicy()).delay_after_exit(
            uptime=uptime
        )
        event(
            "worker_exited",
            index=handle.index,
            pid=handle.pid,
            returncode=handle.returncode,
            uptime_s=round(uptime, 3),
            restart_in_s=delay,
        )
        await trio.sleep(delay)
        if self._stop.is_set() or gen is not self.current:
            return
        new = await self._spawn(gen, handle.index)
        new.restartable = True  # a replacement that dies is replaced again, with more back-off
        self.counters["worker_restarts"] += 1
        if await wait_ready([new], max_wait=STARTUP_TIMEOUT):
            event("worker_restarted", index=new.index, pid=new.pid, old_pid=handle.pid)

    def _live_workers(self) -> list[WorkerHandle]:
        current = [h for h in self.current.workers.values() if not h.exited.is_set()]
        return current + [h for h in self.retiring if not h.exited.is_set()]

    # --- reload ---------------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the config file and switch to it (see the module docstring); True if done."""
        async with self._reload_lock:
            notify(*reloading_fields(status="reloading"))
            try:
                done = await self._reload()
            finally:  # applied or refused, the service runs (systemd waits for READY=1)
                notify("READY=1", f"STATUS={self._status()}")
            return done

    async def _reload(self) -> bool:
        """:meth:`reload` without telling systemd."""
        admin: list[trio.SocketListener] = []
        try:
            config, text = load_and_check(self.path)
            gen = Generation(self.current.number + 1, config, text)
            if config.admin is not None and _admin_bind(config) != _admin_bind(self.current.config):
                admin = await open_admin_listeners(config.admin.bind)  # busy: fail here
            await self._prepare_fleet_keys(config)
            from_files = self.keys.prepare(config, now=trio.current_time())
            started = await self._start_generation(gen)
        except (ConfigError, ListenError) as exc:
            _close(admin)
            return self._reload_failed(_problem_lines(exc))
        if not started:
            _close(admin)
            await stop_all(list(gen.workers.values()), grace=5.0)
            self.fleet.forget(gen.number)
            self.slots.keep_only(self.current.wanted_sockets())
            return self._reload_failed(["the new workers did not start (see above)"])
        await self._switch_to(gen, admin=admin)
        for name in from_files:  # once per listener, not once per worker
            event("ticket_keys_reloaded", listener=name, keys=self.keys.prefixes(name))
        return True

    def _commit(self, gen: Generation) -> None:
        """From now on a worker of ``gen`` that dies is restarted."""
        for handle in gen.workers.values():
            handle.restartable = True

    async def _switch_to(self, gen: Generation, *, admin: list[trio.SocketListener]) -> None:
        old = self.current
        self.current = gen
        self._commit(gen)
        await self._start_checks(gen)
        self.fleet.forget(old.number)  # its workers keep their own mappings until they exit
        keys = {"op": "keys", "ticket_keys": self.keys.wire(now=trio.current_time())}
        for handle in gen.workers.values():
            await handle.send(keys)  # a rotation may have happened while they started
        for handle in old.workers.values():
            if not handle.exited.is_set():
                handle.state = "retiring"
                self.retiring.append(handle)
                await handle.send({"op": "retire"})
        with trio.move_on_after(5.0):  # after "reloaded", only the new generation accepts
            for handle in self.retiring:
                await handle.draining.wait()
        self.slots.keep_only(gen.wanted_sockets())
        self.admin_guard.access = _admin_access(gen.config)  # the same socket, new rules
        if _admin_bind(old.config) != _admin_bind(gen.config):
            await self._start_admin(gen.config, sockets=admin)
        self.counters["reloads"] += 1
        event(
            "reloaded",
            generation=gen.number,
            workers=gen.size,
            listeners=self.addresses,
            retiring=[h.pid for h in self.retiring],
        )

    def _reload_failed(self, errors: list[str]) -> bool:
        self.counters["reload_failures"] += 1
        event("reload_failed", errors=errors, kept_generation=self.current.number)
        return False

    async def _start_checks(self, gen: Generation) -> None:
        assert self._nursery is not None
        await self.fleet.start_checks(self._nursery, gen.number, gen.config, self._live_workers)

    # --- admin, timers, signals -----------------------------------------------------------------

    async def _start_admin(
        self, config: Config, *, sockets: list[trio.SocketListener] | None = None
    ) -> None:
        """Serve ``config.admin`` (on ``sockets`` if already bound) instead of the old one."""
        assert self._nursery is not None
        if self._admin_scope is not None:
            self._admin_scope.cancel()
            self._admin_scope, self.admin_address = None, None
        if config.admin is None:
            return
        self.admin_guard.access = _admin_access(config)
        sockets = sockets or await open_admin_listeners(config.admin.bind)
        name = sockets[0].socket.getsockname()
        self.admin_address = (str(name[0]), int(name[1]))
        self._admin_scope = await self._nursery.start(self._serve_admin, sockets)

    async def _serve_admin(
        self,
        sockets: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await serve_admin(
                sockets,
                stats=lambda: self._stats_cache,
                refresh=self.refresh_stats,
                guard=self.admin_guard,
            )

    async def refresh_stats(self) -> None:
        """Ask every live worker for its tree and merge them (what /stats and /metrics show)."""
        handles = self._live_workers()
        trees = await gather_stats(handles, max_wait=STATS_TIMEOUT)
        answered = [h for h in handles if h in trees]
        merged = merge_stats([trees[h] for h in answered])
        process = merged.get("process")
        if isinstance(process, dict):  # the process systemd started: the service's start time
            process["start_time_s"] = start_time()
        self.fleet.add_stats(merged)
        add_fleet_key_stats(merged, self.fleet_keys.stats())
        merged["supervisor"] = {
            "pid": os.getpid(),
            "workers": self.current.size,
            "generation": self.current.number,
            **self.counters,
        }
        merged["workers"] = [
            {
                "index": h.index,
                "pid": h.pid,
                "generation": h.generation,
                "state": h.state,
                "stats": trees[h],
            }
            for h in answered
        ]
        self._stats_cache = merged

    async def _timers(self) -> None:
        while True:
            await trio.sleep(TIMER_PERIOD)
            rotated = self.keys.rotate_if_due(now=trio.current_time())
            if rotated:
                message = {"op": "keys", "ticket_keys": self.keys.wire(now=trio.current_time())}
                for handle in self._live_workers():
                    await handle.send(message)
                for name in rotated:
                    event("ticket_key_rotated", listener=name, keys=self.keys.prefixes(name))

    async def _prepare_fleet_keys(self, config: Config) -> None:
        """Before workers start: the fleet listeners' keys (fetched, or local if Redis is
        unreachable: one bounded round, never a wait for Redis)."""
        self.fleet_keys.configure(config)
        if self.fleet_keys.listeners:
            await self.fleet_keys.refresh()

    async def _fleet_keys_changed(self, names: list[str]) -> None:
        """A slot boundary, a fetched key, a fallback or a rejoin: hand the new keys over."""
        self.keys.take_fleet_keys(names, now=trio.current_time())
        message = {"op": "keys", "ticket_keys": self.keys.wire(now=trio.current_time())}
        for handle in self._live_workers():
            await handle.send(message)
        stats = self.fleet_keys.stats()
        for name in names:
            fleet = stats.get(name, {})
            event(
                "fleet_keys_changed",
                listener=name,
                mode=fleet.get("mode"),
                slot=fleet.get("slot"),
                keys=self.keys.prefixes(name),
            )

    async def _watch_signals(self) -> None:
        watched = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1)
        with trio.open_signal_receiver(*watched) as signals:
            async for signum in signals:
                event("signal", signal=signal.Signals(signum).name)
                if signum == signal.SIGHUP:
                    if not self._stop.is_set():
                        await self.reload()
                elif signum == signal.SIGUSR1:
                    for handle in self._live_workers():
                        await handle.send({"op": "reopen_logs"})
                else:
                    self.request_stop()

    def _write_pid_file(self) -> None:
        pid_file = self.current.config.pid_file
        if pid_file:
            path = self._resolve(pid_file)
            path.write_text(f"{os.getpid()}\n", encoding="ascii")

    def _remove_pid_file(self) -> None:
        pid_file = self.current.config.pid_file
        if pid_file:
            self._resolve(pid_file).unlink(missing_ok=True)

    def _resolve(self, name: str) -> Path:
        path = Path(name).expanduser()
        return path if path.is_absolute() else self.base_dir / path


def _close(sockets: list[trio.SocketListener]) -> None:
    for sock in sockets:
        sock.socket.close()


def _problem_lines(exc: GateproxyError) -> list[str]:
    return [line for line in str(exc).splitlines() if line.strip()]


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _admin_bind(config: Config) -> str | None:
    """What the admin socket is bound to (a reload that keeps it keeps the socket)."""
    return config.admin.bind if config.admin is not None else None


def _admin_access(config: Config) -> AccessList | None:
    return AccessList(config.admin.access) if config.admin is not None else None
