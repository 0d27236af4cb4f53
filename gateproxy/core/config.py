"""The config: YAML text -> one frozen, typed tree, validated once.

``load_config_text(text, source=...)`` parses with ``yaml.safe_load``, validates every key with
pydantic (unknown keys and wrong types are errors), runs the cross-checks (unique names, routes to
known upstreams, ...) and raises one :class:`ConfigError` listing *every* problem, each with the
file and the dotted key path (a YAML syntax error: the file, line and column). The cross-checks
run even when the schema fails, over the parts that validated on their own (``ListenerParts``),
so one run reports every problem; ``check_config_text`` returns that outcome without raising.
Checks that need the file system (certificate files exist and match their keys) live in
``gateproxy.tls.contexts`` so this module stays free of I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from gateproxy.core.config_access import AccessRules
from gateproxy.core.config_fleet import FleetConfig, fleet_problems
from gateproxy.core.config_proxy_protocol import CidrList, ProxyProtocolConfig
from gateproxy.core.config_rate_limit import RateLimitConfig
from gateproxy.core.config_shared_sessions import shared_session_problems
from gateproxy.core.units import parse_duration, parse_size
from gateproxy.errors import ConfigError, ConfigProblem

Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Size = Annotated[int, BeforeValidator(parse_size)]
PositiveSize = Annotated[int, BeforeValidator(parse_size), Field(ge=1)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
ListenerName = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
_T = TypeVar("_T")


def _parse_hostport(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected 'host:port' (IPv6 as '[::1]:8443'), got {value!r}")
    split_hostport(value)
    return value


def split_hostport(value: str) -> tuple[str, int]:
    """Split ``"127.0.0.1:8443"`` or ``"[::1]:8443"`` into host and port."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected 'host:port' (IPv6 as '[::1]:8443'), got {value!r}")
    return host, int(port)


def _parse_cidr(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR such as '10.0.0.0/8', got {value!r}")
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError(f"expected a CIDR such as '10.0.0.0/8', got {value!r}") from exc
    return value


def _parse_regex(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a regular expression, got {value!r}")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
    return value


def _parse_path(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"expected a path starting with '/', got {value!r}")
    return value


def _yaml_off(value: object) -> object:
    # YAML 1.1 reads an unquoted `off` as the boolean false: take it as the word it was.
    return "off" if value is False else value


def _yaml_on_off(value: object) -> object:
    # ... and an unquoted `on` as true (nginx-style switches such as lingering_close).
    return "on" if value is True else _yaml_off(value)


HostPort = Annotated[str, BeforeValidator(_parse_hostport)]
Cidr = Annotated[str, BeforeValidator(_parse_cidr)]
Regex = Annotated[str, BeforeValidator(_parse_regex)]
UrlPath = Annotated[str, BeforeValidator(_parse_path)]
TLSVersion = Literal["1.2", "1.3"]
LingeringMode = Annotated[Literal["off", "on", "always"], BeforeValidator(_yaml_on_off)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _yaml_lists_as_tuples(cls, data: Any) -> Any:
        # Strict mode keeps "5" from becoming 5; YAML sequences still fill tuple fields.
        if isinstance(data, dict):
            return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return data


# --- TLS ----------------------------------------------------------------------------------------

# Mozilla "intermediate" (v5.7) TLS 1.2 suites; TLS 1.3 suites are OpenSSL's defaults.
MOZILLA_INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    ]
)


# Mozilla "intermediate" key-exchange groups, in nginx's ``ssl_ecdh_curve`` syntax. OpenSSL's own
# default list also offers X448, P-521 and FFDHE 2048-8192.
DEFAULT_CURVES = "X25519:prime256v1:secp384r1"

_HEX = re.compile(r"^(?:[0-9a-fA-F]{2}){1,32}$")


def _parse_curves(value: object) -> str:
    # nginx/HAProxy write "X25519:prime256v1"; a YAML list (Envoy's ecdh_curves) is accepted too.
    # Whether OpenSSL knows each name is checked by `gateproxy check` (tls/contexts.py).
    names = value.split(":") if isinstance(value, str) else value
    if not isinstance(names, tuple | list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"expected group names such as 'X25519:prime256v1', got {value!r}")
    cleaned = [n.strip() for n in names]
    if not cleaned or any(not n or " " in n for n in cleaned):
        raise ValueError(
            f"expected colon-separated group names such as 'X25519:prime256v1', got {value!r}"
        )
    return ":".join(cleaned)


def _parse_session_id_context(value: object) -> str:
    if value in ("nginx", "python") or (isinstance(value, str) and _HEX.match(value)):
        return str(value).lower()
    raise ValueError(f"expected nginx, python or 1-32 bytes as hex, got {value!r}")


Curves = Annotated[str, BeforeValidator(_parse_curves)]
SessionIdContext = Annotated[str, BeforeValidator(_parse_session_id_context)]


class CertificateConfig(_Model):
    cert: str
    key: str


class SessionCacheConfig(_Model):
    mode: Annotated[Literal["off", "openssl", "lru"], BeforeValidator(_yaml_off)] = "lru"
    max_entries: PositiveInt = 20000
    timeout: Duration = 300.0
    sweep_interval: Duration = 10.0
    max_per_client: NonNegativeInt = 100  # 0 = no per-client budget
    shared: bool = False  # TLS 1.2 sessions shared via fleet.redis (core/config_shared_sessions)
    shared_timeout: PositiveDuration = 0.02  # the most a handshake waits for the shared store


class TicketsConfig(_Model):
    enabled: bool = True
    # false: TLS 1.3 tickets are session IDs held in the (capped) session cache, OpenSSL's
    # "stateful tickets" (what HAProxy's no-tls-tickets gives on TLS 1.3); no ticket keys then.
    stateless: bool = True
    per_handshake: NonNegativeInt = 1
    rotate_every: Duration = 3600.0
    keep: NonNegativeInt = 2
    key_files: tuple[str, ...] = ()
    key_format: Literal["nginx", "haproxy"] = "nginx"
    source: Literal["local", "fleet"] = "local"  # fleet: keys shared through fleet.redis


class TLSConfig(_Model):
    certificates: Annotated[tuple[CertificateConfig, ...], Field(min_length=1)]
    min_version: TLSVersion = "1.2"
    max_version: TLSVersion = "1.3"
    ciphers: str = MOZILLA_INTERMEDIATE_CIPHERS
    curves: Curves = DEFAULT_CURVES
    prefer_server_ciphers: bool = False  # Mozilla intermediate: the client's order
    # The SSL_CTX session id context every session is bound to (see tls/contexts.py).
    session_id_context: SessionIdContext = "nginx"
    handshake_timeout: Duration = 10.0
    session_cache: SessionCacheConfig = SessionCacheConfig()
    tickets: TicketsConfig = TicketsConfig()


# --- limits -------------------------------------------------------------------------------------


class LimitsConfig(_Model):
    max_requests_per_connection: NonNegativeInt = 1000  # 0 = unlimited
    max_connection_age: Duration = 3600.0  # 0 = unlimited
    keepalive_timeout: Duration = 75.0
    request_header_timeout: Duration = 10.0
    body_timeout: Duration = 60.0
    max_header_bytes: Size = 16 * 1024
    max_headers: PositiveInt = 100
    max_body_bytes: Size = 10 * 1024 * 1024
    max_connections: PositiveInt = 10000
    max_connections_per_client: PositiveInt = 256
    # After the last response, read and discard what the client still sends (core.lingering).
    lingering_close: LingeringMode = "on"
    lingering_time: PositiveDuration = 30.0
    lingering_timeout: PositiveDuration = 5.0
    lingering_max_bytes: PositiveSize = 16 * 1024 * 1024
    # Upgraded (WebSocket) connections: core.upgrade.
    websocket_idle_timeout: PositiveDuration = 3600.0
    max_upgraded_connections: PositiveInt = 1000


class ProbeLimitsConfig(_Model):
    """Overrides of ``limits`` for ``probe_clients``; a key left out keeps the listener's value."""

    max_requests_per_connection: NonNegativeInt | None = None
    max_connection_age: Duration | None = None
    keepalive_timeout: Duration | None = None
    request_header_timeout: Duration | None = None
    body_timeout: Duration | None = None
    max_header_bytes: Size | None = None
    max_headers: PositiveInt | None = None
    max_body_bytes: Size | None = None
    max_connections_per_client: PositiveInt | None = None
    lingering_close: LingeringMode | None = None
    lingering_time: PositiveDuration | None = None
    lingering_timeout: PositiveDuration | None = None
    lingering_max_bytes: PositiveSize | None = None

    def apply_to(self, base: LimitsConfig) -> LimitsConfig:
        overrides = {k: v for k, v in self.model_dump().items() if v is not None}
        return base.model_copy(update=overrides)


# --- listeners ----------------------------------------------------------------------------------


class HealthCheckConfig(_Model):
    path: UrlPath
    methods: Annotated[tuple[str, ...], Field(min_length=1)] = ("GET", "HEAD")
    upstream: str | None = None
    min_healthy: PositiveInt = 1
    mode: Literal["local", "pass_through"] = "local"
    upstream_path: UrlPath | None = None  # pass_through: defaults to the upstream's health path
    cache_time: Duration = 1.0


class RouteConfig(_Model):
    path_prefix: UrlPath = "/"
    host: str | None = None  # exact host, or "*.example.com"
    upstream: str
    websocket: bool = True  # forward Upgrade requests (core.upgrade); False: 403


class ListenerConfig(_Model):
    name: ListenerName
    bind: HostPort
    tls: TLSConfig | None = None  # None = plain HTTP (for local testing and benchmarks)
    probe_clients: tuple[Cidr, ...] = ()
    health_checks: tuple[HealthCheckConfig, ...] = ()
    limits: LimitsConfig = LimitsConfig()
    probe_limits: ProbeLimitsConfig = ProbeLimitsConfig()
    routes: Annotated[tuple[RouteConfig, ...], Field(min_length=1)]
    access: AccessRules = ()  # nginx allow/deny, in order, first match wins (core.access)
    rate_limit: RateLimitConfig | None = None  # nginx limit_req per client (core.rate_limit)
    proxy_protocol: ProxyProtocolConfig | None = None  # PROXY v1/v2 headers (core.client_address)
    trusted_forwarded: CidrList = ()  # L7 hops whose X-Forwarded-For names the client


# --- upstreams ----------------------------------------------------------------------------------


class UpstreamHealthConfig(_Model):
    path: UrlPath = "/health"
    interval: Duration = 5.0
    timeout: Duration = 2.0
    rise: PositiveInt = 2
    fall: PositiveInt = 3
    expected_statuses: tuple[Annotated[int, Field(ge=100, le=599)], ...] = tuple(range(200, 400))
    host: str | None = None  # Host header sent with probes (default: the server address)


class UpstreamConfig(_Model):
    servers: Annotated[tuple[HostPort, ...], Field(min_length=1)]
    connect_timeout: Duration = 5.0
    read_timeout: Duration = 60.0
    send_timeout: Duration = 60.0
    keepalive: NonNegativeInt = 32  # idle connections kept per server (0 = no reuse)
    keepalive_timeout: Duration = 60.0
    keepalive_requests: NonNegativeInt = 1000  # 0 = unlimited
    max_fails: NonNegativeInt = 1  # passive checks; 0 = off
    fail_timeout: Duration = 10.0
    health: UpstreamHealthConfig | None = None


# --- session guard, admin, logging --------------------------------------------------------------


class SessionGuardConfig(_Model):
    cookies: tuple[str, ...] = ("JSESSIONID", "PHPSESSID", "connect.sid", "SESSION")
    stateless_paths: tuple[UrlPath, ...] = ()
    pin_probes: bool = False
    probe_user_agents: tuple[Regex, ...] = ()
    pin_idle_timeout: Duration = 600.0
    max_pinned: PositiveInt = 10000
    top_n: PositiveInt = 100  # size of the per-path and per-client tables


class AdminConfig(_Model):
    bind: HostPort = "127.0.0.1:9901"
    access: AccessRules = ()  # as listeners[].access


class AccessLogConfig(_Model):
    path: Annotated[str, BeforeValidator(_yaml_off)] = "-"  # "-" = stdout; "off" = no log
    format: Literal["json", "combined"] = "json"
    health_sample_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0


class Config(_Model):
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = 1
    shutdown_timeout: Duration = 30.0
    shutdown_delay: Duration = 0.0  # lame duck before the drain: health 503, still accepting
    pid_file: str | None = None  # written by the supervisor; `gateproxy reload` signals it
    tls_engine: Literal["full", "stdlib_only"] = "full"
    listeners: Annotated[tuple[ListenerConfig, ...], Field(min_length=1)]
    upstreams: dict[str, UpstreamConfig] = {}
    session_guard: SessionGuardConfig = SessionGuardConfig()
    admin: AdminConfig | None = AdminConfig()
    access_log: AccessLogConfig = AccessLogConfig()
    fleet: FleetConfig | None = None  # core/config_fleet.py

    def worker_count(self, *, cpus: int) -> int:
        """How many workers to run: ``workers``, or ``cpus`` for ``auto``."""
        return max(1, cpus) if self.workers == "auto" else self.workers


# --- loading ------------------------------------------------------------------------------------

_LISTENER_NAME = TypeAdapter(ListenerName, config=ConfigDict(strict=True))
_BIND = TypeAdapter(HostPort, config=ConfigDict(strict=True))
_TLS = TypeAdapter(TLSConfig)
_ROUTE = TypeAdapter(RouteConfig)
_HEALTH_CHECK = TypeAdapter(HealthCheckConfig)
_ADMIN = TypeAdapter(AdminConfig)


@dataclass(frozen=True)
class ListenerParts:
    """What validated of one listener: all of it in a valid config, else the parts that did.

    The cross-checks (and the file checks of ``gateproxy.config_files``) run over these, so a
    config with schema errors still gets every problem that its valid parts show."""

    path: str  # "listeners[0]"
    name: str | None = None
    bind: str | None = None
    tls: TLSConfig | None = None
    routes: tuple[tuple[int, RouteConfig], ...] = ()
    health_checks: tuple[tuple[int, HealthCheckConfig], ...] = ()

    @classmethod
    def of(cls, index: int, listener: ListenerConfig) -> ListenerParts:
        return cls(
            path=f"listeners[{index}]",
            name=listener.name,
            bind=listener.bind,
            tls=listener.tls,
            routes=tuple(enumerate(listener.routes)),
            health_checks=tuple(enumerate(listener.health_checks)),
        )

    @classmethod
    def salvage(cls, index: int, raw: object) -> ListenerParts:
        """The parts of a listener that failed validation which are valid on their own."""
        part = raw if isinstance(raw, dict) else {}
        tls = part.get("tls")
        return cls(
            path=f"listeners[{index}]",
            name=_valid(_LISTENER_NAME, part.get("name")),
            bind=_valid(_BIND, part.get("bind")),
            tls=_valid(_TLS, tls) if tls is not None else None,
            routes=_valid_items(_ROUTE, part.get("routes")),
            health_checks=_valid_items(_HEALTH_CHECK, part.get("health_checks")),
        )


@dataclass(frozen=True)
class CheckedConfig:
    """The outcome of validating a config document: every problem found, the tree (``None``
    when there is any problem) and the parts that validated (for the checks that follow)."""

    config: Config | None
    problems: tuple[ConfigProblem, ...] = ()
    listeners: tuple[ListenerParts, ...] = ()
    upstreams: frozenset[str] | None = None  # None: the upstreams mapping itself is unusable
    admin_bind: str | None = None
    degraded_tls: bool = False  # tls_engine: stdlib_only

    def tls_sections(self) -> Iterator[tuple[str, TLSConfig]]:
        """``("listeners[i].tls", tls)`` for every listener whose ``tls`` validated."""
        for parts in self.listeners:
            if parts.tls is not None:
                yield f"{parts.path}.tls", parts.tls

    def binds(self) -> Iterator[tuple[str, str]]:
        """``(key path, "host:port")`` of every listening address that validated."""
        for parts in self.listeners:
            if parts.bind is not None:
                yield f"{parts.path}.bind", parts.bind
        if self.admin_bind is not None:
            yield "admin.bind", self.admin_bind

    def with_problems(self, extra: Iterable[ConfigProblem]) -> CheckedConfig:
        """This outcome plus ``extra`` problems (each listed once); no tree if there are any."""
        problems = tuple(dict.fromkeys((*self.problems, *extra)))
        return replace(self, problems=problems, config=None if problems else self.config)


def load_config_text(text: str, *, source: str = "<config>") -> Config:
    """Parse and validate config text; raise :class:`ConfigError` listing every problem."""
    return _config_or_raise(check_config_text(text), source=source)


def load_config_data(raw: object, *, source: str = "<config>") -> Config:
    """Validate an already-parsed YAML document."""
    return _config_or_raise(check_config_data(raw), source=source)


def check_config_text(text: str) -> CheckedConfig:
    """Parse and validate config text; never raises for a bad config."""
    try:
        raw = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: a bad date
        return CheckedConfig(None, (_yaml_problem(exc),))
    return check_config_data(raw)


def check_config_data(raw: object) -> CheckedConfig:
    """Validate a parsed document: the schema, then the cross-checks over what validated."""
    if not isinstance(raw, dict):
        problem = ConfigProblem("", f"expected a mapping at the top, got {raw!r}")
        return CheckedConfig(None, (problem,))
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        checked = _salvage(raw, list(_problems_from(exc)))
    else:
        checked = CheckedConfig(
            config,
            listeners=tuple(ListenerParts.of(i, lc) for i, lc in enumerate(config.listeners)),
            upstreams=frozenset(config.upstreams),
            admin_bind=config.admin.bind if config.admin is not None else None,
            degraded_tls=config.tls_engine == "stdlib_only",
        )
    return checked.with_problems(_cross_check(checked))


def _config_or_raise(checked: CheckedConfig, *, source: str) -> Config:
    if checked.config is None:
        raise ConfigError(source, checked.problems)
    return checked.config


def _yaml_problem(exc: BaseException) -> ConfigProblem:
    mark = getattr(exc, "problem_mark", None)
    if not isinstance(exc, yaml.MarkedYAMLError) or mark is None:
        return ConfigProblem("", f"not valid YAML: {' '.join(str(exc).split())}")
    message = exc.problem or "syntax error"
    context = exc.context_mark
    if (
        exc.context
        and context is not None
        and (context.line, context.column)
        != (
            mark.line,
            mark.column,
        )
    ):
        message += f" ({exc.context} at {context.line + 1}:{context.column + 1})"
    elif exc.context:
        message += f" ({exc.context})"
    return ConfigProblem("", f"not valid YAML: {message}", mark.line + 1, mark.column + 1)


def _salvage(raw: dict[Any, Any], problems: list[ConfigProblem]) -> CheckedConfig:
    """What the cross-checks can still use of a document that failed validation."""
    listeners = raw.get("listeners")
    upstreams = raw.get("upstreams", {})
    admin = raw.get("admin", {})  # absent: the default admin section
    admin_config = _valid(_ADMIN, admin) if admin is not None else None
    return CheckedConfig(
        None,
        tuple(problems),
        listeners=tuple(
            ListenerParts.salvage(i, item)
            for i, item in enumerate(listeners if isinstance(listeners, list | tuple) else ())
        ),
        upstreams=frozenset(k for k in upstreams if isinstance(k, str))
        if isinstance(upstreams, dict)
        else None,
        admin_bind=admin_config.bind if admin_config is not None else None,
        degraded_tls=raw.get("tls_engine") == "stdlib_only",
    )


def _valid(adapter: TypeAdapter[_T], raw: object) -> _T | None:
    try:
        return adapter.validate_python(raw)
    except ValidationError:
        return None


def _valid_items(adapter: TypeAdapter[_T], raw: object) -> tuple[tuple[int, _T], ...]:
    items = raw if isinstance(raw, list | tuple) else ()
    valid = ((j, _valid(adapter, item)) for j, item in enumerate(items))
    return tuple((j, item) for j, item in valid if item is not None)


def _problems_from(exc: ValidationError) -> Iterator[ConfigProblem]:
    errors = exc.errors(include_url=False)
    deeper = [tuple(e["loc"]) for e in errors]
    for err in errors:
        loc = tuple(err["loc"])
        if err["type"] == "too_short" and any(d[: len(loc)] == loc and d != loc for d in deeper):
            continue  # a length check on a sequence whose items already failed: noise
        yield ConfigProblem(_dotted(loc), _message(err))


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "literal[", "int", "constrained")):
            continue  # pydantic's union-branch labels are noise to a user
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see config/gateproxy.example.yaml)"
    if kind == "missing":
        return "required key is missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    got = err.get("input")
    if kind != "value_error" and not isinstance(got, dict | list):
        msg = f"{msg}, got {got!r}"
    return msg


def _cross_check(checked: CheckedConfig) -> Iterator[ConfigProblem]:
    seen_names: dict[str, str] = {}
    seen_binds: dict[str, str] = {}
    for parts in checked.listeners:
        if parts.name is not None:
            if parts.name in seen_names:
                yield ConfigProblem(
                    f"{parts.path}.name",
                    f"duplicate listener name {parts.name!r} (also {seen_names[parts.name]})",
                )
            seen_names.setdefault(parts.name, parts.path)
        if parts.bind is not None:
            if parts.bind in seen_binds and not parts.bind.endswith(":0"):
                yield ConfigProblem(
                    f"{parts.path}.bind",
                    f"bind {parts.bind!r} is already used by {seen_binds[parts.bind]}",
                )
            seen_binds.setdefault(parts.bind, parts.path)
        yield from _check_listener(parts, upstreams=checked.upstreams)
    admin_bind = checked.admin_bind
    if admin_bind in seen_binds and admin_bind is not None and not admin_bind.endswith(":0"):
        yield ConfigProblem("admin.bind", f"bind {admin_bind!r} is also a listener's bind")
    if checked.config is not None:
        yield from fleet_problems(checked.config)
        yield from shared_session_problems(checked.config)


def _check_listener(
    parts: ListenerParts, *, upstreams: frozenset[str] | None
) -> Iterator[ConfigProblem]:
    where = parts.path
    known = sorted(upstreams) if upstreams is not None else []
    for j, route in parts.routes:
        if upstreams is not None and route.upstream not in upstreams:
            yield ConfigProblem(
                f"{where}.routes[{j}].upstream",
                f"unknown upstream {route.upstream!r} (known: {known})",
            )
    paths: set[str] = set()
    for j, check in parts.health_checks:
        if check.upstream is not None and upstreams is not None and check.upstream not in upstreams:
            yield ConfigProblem(
                f"{where}.health_checks[{j}].upstream",
                f"unknown upstream {check.upstream!r} (known: {known})",
            )
        if check.mode == "pass_through" and check.upstream is None:
            yield ConfigProblem(
                f"{where}.health_checks[{j}].upstream", "pass_through mode needs an upstream"
            )
        if check.path in paths:
            yield ConfigProblem(
                f"{where}.health_checks[{j}].path", f"duplicate path {check.path!r}"
            )
        paths.add(check.path)
    tls = parts.tls
    if tls is not None and tls.min_version > tls.max_version:
        yield ConfigProblem(
            f"{where}.tls.min_version",
            f"min_version {tls.min_version!r} is above max_version {tls.max_version!r}",
        )
    tickets = tls.tickets if tls is not None else None
    if tickets is not None and tickets.key_format == "haproxy" and len(tickets.key_files) > 1:
        yield ConfigProblem(
            f"{where}.tls.tickets.key_files",
            "the haproxy format takes exactly one file (base64 lines, penultimate encrypts)",
        )
