"""Runtime state built from one config generation: listeners, upstream groups, counters.

The daemon builds a :class:`Runtime` from a validated config; connections hold a reference to
the :class:`ListenerRuntime` they were accepted on, so a reload can build a new generation while
established connections finish under the old one.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from gateproxy.core.config import Config, LimitsConfig, ListenerConfig, TLSConfig
from gateproxy.core.health import HealthMatcher
from gateproxy.core.key_files import parse_key_files
from gateproxy.core.limits import Admission, RejectionLog, StormDetector
from gateproxy.core.metrics import ListenerCounters, Metrics
from gateproxy.core.probes import ProbeClassifier
from gateproxy.core.routing import Router
from gateproxy.core.session_guard import SessionGuard
from gateproxy.core.ticket_keys import KeyRing, TicketKey
from gateproxy.errors import ConfigError, ConfigProblem, KeyFileError
from gateproxy.logs import AccessLog, event
from gateproxy.net.health_pass import PassThroughCache
from gateproxy.net.shared import SharedState
from gateproxy.net.upstream_group import UpstreamGroup
from gateproxy.tls.contexts import build_listener_contexts
from gateproxy.tls.engine import ListenerTLSEngine


@dataclass
class Shared:
    """State that outlives a config generation: counters and the drain flags.

    ``draining``: the process is stopping (health answers 503, idle connections closed).
    ``retiring``: a reload replaced this worker; it serves the connections it has, each closed
    after its next response (``Connection: close``), while health answers stay as they are.
    """

    metrics: Metrics = field(default_factory=Metrics)
    draining: bool = False
    retiring: bool = False
    idle_scopes: set[trio.CancelScope] = field(default_factory=set)
    started_at: float = 0.0


@dataclass
class ListenerRuntime:
    config: ListenerConfig
    counters: ListenerCounters
    admission: Admission
    router: Router
    health: HealthMatcher
    probes: ProbeClassifier
    probe_limits: LimitsConfig
    upstreams: dict[str, UpstreamGroup]
    access_log: AccessLog
    shared: Shared
    main_context: ssl.SSLContext | None = None
    probe_context: ssl.SSLContext | None = None
    engine: ListenerTLSEngine | None = None
    guard: SessionGuard | None = None
    pass_through: PassThroughCache | None = None
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

    def limits_for(self, *, probe: bool) -> LimitsConfig:
        return self.probe_limits if probe else self.config.limits


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
    supervisor: a listener found there uses them as a fixed ring instead of rotating its own.
    ``shared_state`` is the memory the daemon's workers share (session-guard pins, pass-through
    answers); without it this process gets its own.
    """
    upstreams = {
        name: UpstreamGroup(name, cfg, counters=shared.metrics.upstream(name))
        for name, cfg in config.upstreams.items()
    }
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
        )
        for i, lc in enumerate(config.listeners)
    ]
    state = shared_state if shared_state is not None else SharedState.anonymous(config)
    guard = SessionGuard(
        config.session_guard,
        counters=shared.metrics.guard,
        pins=state.pins(idle_timeout=config.session_guard.pin_idle_timeout),
    )
    pass_through = PassThroughCache(state.answers, guard=guard)
    for listener in listeners:
        listener.guard = guard
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
) -> ListenerRuntime:
    runtime = ListenerRuntime(
        config=lc,
        counters=shared.metrics.listener(lc.name),
        admission=Admission(
            max_connections=lc.limits.max_connections,
            max_per_client=lc.limits.max_connections_per_client,
        ),
        router=Router(lc.routes),
        health=HealthMatcher(lc.health_checks),
        probes=ProbeClassifier(
            cidrs=lc.probe_clients, user_agents=config.session_guard.probe_user_agents
        ),
        probe_limits=lc.probe_limits.apply_to(lc.limits),
        upstreams=upstreams,
        access_log=access_log,
        shared=shared,
    )
    if lc.tls is not None:
        contexts = build_listener_contexts(
            lc.tls, base_dir=base_dir, source=source, path=f"listeners[{index}].tls"
        )
        keys, problems = read_ticket_keys(
            lc.tls, base_dir=base_dir, now=clock(), path=f"listeners[{index}].tls"
        )
        if problems:
            raise ConfigError(source, problems)
        if not keys and handed_keys:
            keys = list(handed_keys)
        runtime.main_context = contexts.main
        runtime.probe_context = contexts.probe
        runtime.engine = ListenerTLSEngine(
            main=contexts.main,
            probe=contexts.probe,
            tls=lc.tls,
            keyring=KeyRing.from_keys(keys) if keys else None,
            defer_tickets=bool(lc.health_checks),
            clock=clock,
            degraded=config.tls_engine == "stdlib_only",
        )
    return runtime


def read_ticket_keys(
    tls: TLSConfig, *, base_dir: Path, now: float, path: str
) -> tuple[list[TicketKey], list[ConfigProblem]]:
    """Read and parse ``tls.tickets.key_files`` (relative to ``base_dir``); encryption key first.

    Returns ``(keys, problems)``: no keys and no problems when no key files are configured;
    otherwise either the keys or every problem found, each at
    ``<path>.tickets.key_files[j]`` (``path`` is the dotted prefix of ``tls``).
    """
    names = tls.tickets.key_files
    problems: list[ConfigProblem] = []
    files: list[tuple[str, bytes]] = []
    fmt = tls.tickets.key_format
    for j, name in enumerate(names):
        where = f"{path}.tickets.key_files[{j}]"
        file = Path(name).expanduser()
        file = file if file.is_absolute() else base_dir / file
        try:
            data = file.read_bytes()
        except OSError as exc:
            message = f"cannot read ticket key file {file}: {exc.strerror or exc}"
            problems.append(ConfigProblem(where, message))
            continue
        files.append((str(file), data))
        if fmt == "nginx":  # one key per file: report every bad file, not just the first
            try:
                parse_key_files([(str(file), data)], fmt=fmt, now=now)
            except KeyFileError as exc:
                problems.append(ConfigProblem(where, str(exc)))
    if problems or not files:
        return [], problems
    try:
        return parse_key_files(files, fmt=fmt, now=now), []
    except KeyFileError as exc:
        paths = [p for p, _ in files]
        j = paths.index(exc.path) if exc.path in paths else 0
        return [], [ConfigProblem(f"{path}.tickets.key_files[{j}]", str(exc))]


def urandom(n: int) -> bytes:
    return os.urandom(n)
