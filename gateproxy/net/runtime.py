"""Runtime state built from one config generation: listeners, upstream groups, counters.

The daemon builds a :class:`Runtime` from a validated config; connections hold a reference to
the :class:`ListenerRuntime` they were accepted on, so a reload can build a new generation while
established connections finish under the old one.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from gateproxy.core.config import Config, LimitsConfig, ListenerConfig, TLSConfig
from gateproxy.core.headers import http_date
from gateproxy.core.key_files import parse_key_files
from gateproxy.core.limits import Admission, RejectionLog, StormDetector
from gateproxy.core.metrics import ListenerCounters, Metrics
from gateproxy.core.policy import ListenerPolicy, ServiceState, build_policy
from gateproxy.core.probes import ProbeClassifier
from gateproxy.core.session_guard import SessionGuard
from gateproxy.core.session_ids import SessionIds
from gateproxy.core.ticket_keys import KeyRing, TicketKey
from gateproxy.errors import ConfigError, ConfigProblem, KeyFileError
from gateproxy.logs import AccessLog, event
from gateproxy.net.health_pass import PassThroughCache
from gateproxy.net.shared import SharedState
from gateproxy.net.shared_sessions import SharedSessions, shared_secret_for
from gateproxy.net.upstream_group import UpstreamGroup
from gateproxy.tls.contexts import build_listener_contexts
from gateproxy.tls.engine import ListenerTLSEngine


@dataclass
class Shared:
    """State that outlives a config generation: counters and the service flags.

    ``draining``: the process is stopping (health answers 503, idle connections closed).
    ``retiring``: a reload replaced this worker; it serves the connections it has, each closed
    after its next response (``Connection: close``), while health answers stay as they are.
    Both live in ``service`` (``core.policy.ServiceState``), where the connection machines read
    them, with the current ``Date`` header value.
    """

    metrics: Metrics = field(default_factory=Metrics)
    service: ServiceState = field(default_factory=ServiceState)
    idle_scopes: set[trio.CancelScope] = field(default_factory=set)
    started_at: float = 0.0

    @property
    def draining(self) -> bool:
        return self.service.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.service.draining = value

    @property
    def retiring(self) -> bool:
        return self.service.retiring

    @retiring.setter
    def retiring(self, value: bool) -> None:
        self.service.retiring = value

    def refresh_date(self, *, wall_time: float) -> None:
        """Set the ``Date`` header value for the current second (RFC 9110 IMF-fixdate)."""
        self.service.date = http_date(wall_time)


@dataclass
class ListenerRuntime:
    config: ListenerConfig
    counters: ListenerCounters
    admission: Admission
    policy: ListenerPolicy
    upstreams: dict[str, UpstreamGroup]
    access_log: AccessLog
    shared: Shared
    main_context: ssl.SSLContext | None = None
    probe_context: ssl.SSLContext | None = None
    engine: ListenerTLSEngine | None = None
    pass_through: PassThroughCache | None = None
    shared_sessions: SharedSessions | None = None  # tls.session_cache.shared (net/shared_sessions)
    rejections: RejectionLog = field(default_factory=RejectionLog)
    storms: StormDetector = field(default_factory=StormDetector)

    @property
    def name(self) -> str:
        return self.config.name

    def enforced(self, reason: str, *, client: str) -> None:
        """Count an enforced limit; log it, at most once per client and reason per interval,
        and log a ``limit_storm`` once per window when the listener enforces limits in bulk."""
        self.counters.limit_enforced(reason)
        now = trio.current_time()
        suppressed = self.rejections.note(client, reason, now=now)
        if suppressed is not None:
            event(
                "limit_enforced",
                listener=self.name,
                client=client,
                reason=reason,
                suppressed_since_last=suppressed,
            )
        storm = self.storms.note(reason, now=now)
        if storm is not None:
            event(
                "limit_storm",
                listener=self.name,
                count=storm.count,
                window_s=storm.window,
                by_reason=storm.by_reason,
            )

    def denied(self, *, client: str) -> None:
        """Count a connection the access rules closed; one ``access_denied`` line per interval
        for the whole listener (whichever clients), with the number left unlogged since."""
        self.counters.connections_denied += 1
        suppressed = self.rejections.note("*", "access", now=trio.current_time())
        if suppressed is not None:
            event(
                "access_denied", listener=self.name, client=client, suppressed_since_last=suppressed
            )

    def limits_for(self, *, probe: bool) -> LimitsConfig:
        return self.policy.limits_for(probe=probe)

    @property
    def probes(self) -> ProbeClassifier:
        return self.policy.probes

    @property
    def guard(self) -> SessionGuard | None:
        return self.policy.guard


@dataclass
class Runtime:
    config: Config
    listeners: list[ListenerRuntime]
    upstreams: dict[str, UpstreamGroup]
    shared: Shared
    access_log: AccessLog
    guard: SessionGuard | None = None


def build_runtime(
    config: Config,
    *,
    base_dir: Path,
    shared: Shared,
    access_log: AccessLog,
    clock: Callable[[], float] = trio.current_time,
    source: str = "<config>",
    ticket_keys: Mapping[str, Sequence[TicketKey]] | None = None,
    shared_state: SharedState | None = None,
) -> Runtime:
    """Build every listener's contexts and engine and every upstream group (no sockets yet).

    ``ticket_keys`` (listener name -> keys, encryption key first) are keys handed down by a
    supervisor (its rotating ring, or the key files it read): a listener found there uses them
    as a fixed ring instead of rotating its own or reading its key files. ``shared_state`` is
    the memory the daemon's workers share (session-guard pins, pass-through answers); without it
    this process gets its own.
    """
    upstreams = {
        name: UpstreamGroup(name, cfg, counters=shared.metrics.upstream(name))
        for name, cfg in config.upstreams.items()
    }
    # (the trio clock has a random offset per process; the workers' shared tables take
    # CLOCK_MONOTONIC, which time.monotonic reads in every process alike)
    shared.service.shared_clock_offset = trio.current_time() - time.monotonic()
    state = shared_state if shared_state is not None else SharedState.anonymous(config)
    guard = SessionGuard(
        config.session_guard,
        counters=shared.metrics.guard,
        pins=state.pins(idle_timeout=config.session_guard.pin_idle_timeout),
    )
    listeners = [
        _build_listener(
            config,
            lc,
            index=i,
            base_dir=base_dir,
            shared=shared,
            upstreams=upstreams,
            access_log=access_log,
            clock=clock,
            source=source,
            handed_keys=(ticket_keys or {}).get(lc.name),
            guard=guard,
        )
        for i, lc in enumerate(config.listeners)
    ]
    pass_through = PassThroughCache(state.answers, guard=guard)
    for listener in listeners:
        listener.pass_through = pass_through
    return Runtime(config, listeners, upstreams, shared, access_log, guard=guard)


def _build_listener(
    config: Config,
    lc: ListenerConfig,
    *,
    index: int,
    base_dir: Path,
    shared: Shared,
    upstreams: dict[str, UpstreamGroup],
    access_log: AccessLog,
    clock: Callable[[], float],
    source: str,
    handed_keys: Sequence[TicketKey] | None,
    guard: SessionGuard,
) -> ListenerRuntime:
    counters = shared.metrics.listener(lc.name)
    policy = build_policy(
        config,
        lc,
        counters=counters,
        upstreams={name: group.state for name, group in upstreams.items()},
        service=shared.service,
        guard=guard,
    )
    runtime = ListenerRuntime(
        config=lc,
        counters=counters,
        admission=Admission(
            max_connections=lc.limits.max_connections,
            max_per_client=lc.limits.max_connections_per_client,
        ),
        policy=policy,
        upstreams=upstreams,
        access_log=access_log,
        shared=shared,
    )
    if lc.tls is not None:
        contexts = build_listener_contexts(
            lc.tls,
            base_dir=base_dir,
            source=source,
            path=f"listeners[{index}].tls",
            degraded=config.tls_engine == "stdlib_only",
        )
        keys = list(handed_keys or ()) or _own_ticket_keys(
            lc.tls, base_dir=base_dir, now=clock(), path=f"listeners[{index}].tls", source=source
        )
        runtime.main_context = contexts.main
        runtime.probe_context = contexts.probe
        secret = shared_secret_for(config, lc, base_dir=base_dir, source=source)
        ids = SessionIds(secret, listener=lc.name) if secret is not None else None
        runtime.engine = ListenerTLSEngine(
            main=contexts.main,
            probe=contexts.probe,
            tls=lc.tls,
            keyring=KeyRing.from_keys(keys) if keys else None,
            defer_tickets=bool(lc.health_checks),
            clock=clock,
            degraded=config.tls_engine == "stdlib_only",
            session_ids=ids,
        )
        if secret is not None and ids is not None and config.fleet is not None:
            runtime.shared_sessions = SharedSessions(
                listener=lc, fleet=config.fleet, secret=secret, ids=ids, engine=runtime.engine
            )
    return runtime


def _own_ticket_keys(
    tls: TLSConfig, *, base_dir: Path, now: float, path: str, source: str
) -> list[TicketKey]:
    keys, problems = read_ticket_keys(tls, base_dir=base_dir, now=now, path=path)
    if problems:
        raise ConfigError(source, problems)
    return keys


def read_ticket_keys(
    tls: TLSConfig, *, base_dir: Path, now: float, path: str
) -> tuple[list[TicketKey], list[ConfigProblem]]:
    """Read and parse ``tls.tickets.key_files`` (relative to ``base_dir``); encryption key first.

    Returns ``(keys, problems)``: no keys and no problems when no key files are configured;
    otherwise either the keys or every problem found, each at
    ``<path>.tickets.key_files[j]`` (``path`` is the dotted prefix of ``tls``). A key is as old
    as its file: ``created`` is ``now`` (this process's clock) minus the file's age by its
    modification time.
    """
    names = tls.tickets.key_files
    problems: list[ConfigProblem] = []
    files: list[tuple[str, bytes]] = []
    created: list[float] = []
    fmt = tls.tickets.key_format
    for j, name in enumerate(names):
        where = f"{path}.tickets.key_files[{j}]"
        file = Path(name).expanduser()
        file = file if file.is_absolute() else base_dir / file
        try:
            data, mtime = _read_with_mtime(file)
        except OSError as exc:
            message = f"cannot read ticket key file {file}: {exc.strerror or exc}"
            problems.append(ConfigProblem(where, message))
            continue
        files.append((str(file), data))
        created.append(now - max(0.0, time.time() - mtime))
        if fmt == "nginx":  # one key per file: report every bad file, not just the first
            try:
                parse_key_files([(str(file), data)], fmt=fmt, now=now)
            except KeyFileError as exc:
                problems.append(ConfigProblem(where, str(exc)))
    if problems or not files:
        return [], problems
    try:
        return parse_key_files(files, fmt=fmt, now=now, created=created), []
    except KeyFileError as exc:
        paths = [p for p, _ in files]
        j = paths.index(exc.path) if exc.path in paths else 0
        return [], [ConfigProblem(f"{path}.tickets.key_files[{j}]", str(exc))]


def _read_with_mtime(file: Path) -> tuple[bytes, float]:
    """The file's bytes and the modification time (wall clock) of the file that was read."""
    with file.open("rb") as handle:
        return handle.read(), os.fstat(handle.fileno()).st_mtime


def urandom(n: int) -> bytes:
    return os.urandom(n)
