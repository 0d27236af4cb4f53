"""The config: YAML text -> one frozen, typed tree, validated once.

``load_config_text(text, source=...)`` parses with ``yaml.safe_load``, validates every key with
pydantic (unknown keys and wrong types are errors), runs the cross-checks (unique names, routes to
known upstreams, ...) and raises one :class:`ConfigError` listing *every* problem, each with the
file and the dotted key path. Checks that need the file system (certificate files exist and match
their keys) live in ``gateproxy.tls.contexts`` so this module stays free of I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from gateproxy.core.units import parse_duration, parse_size
from gateproxy.errors import ConfigError, ConfigProblem

Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Size = Annotated[int, BeforeValidator(parse_size)]
PositiveSize = Annotated[int, BeforeValidator(parse_size), Field(ge=1)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]


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


class CertificateConfig(_Model):
    cert: str
    key: str


class SessionCacheConfig(_Model):
    mode: Annotated[Literal["off", "openssl", "lru"], BeforeValidator(_yaml_off)] = "lru"
    max_entries: PositiveInt = 20000
    timeout: Duration = 300.0
    sweep_interval: Duration = 10.0
    max_per_client: NonNegativeInt = 100  # 0 = no per-client budget


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


class TLSConfig(_Model):
    certificates: Annotated[tuple[CertificateConfig, ...], Field(min_length=1)]
    min_version: TLSVersion = "1.2"
    max_version: TLSVersion = "1.3"
    ciphers: str = MOZILLA_INTERMEDIATE_CIPHERS
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


class ListenerConfig(_Model):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    bind: HostPort
    tls: TLSConfig | None = None  # None = plain HTTP (for local testing and benchmarks)
    probe_clients: tuple[Cidr, ...] = ()
    health_checks: tuple[HealthCheckConfig, ...] = ()
    limits: LimitsConfig = LimitsConfig()
    probe_limits: ProbeLimitsConfig = ProbeLimitsConfig()
    routes: Annotated[tuple[RouteConfig, ...], Field(min_length=1)]


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


class AccessLogConfig(_Model):
    path: Annotated[str, BeforeValidator(_yaml_off)] = "-"  # "-" = stdout; "off" = no log
    format: Literal["json", "combined"] = "json"
    health_sample_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0


class Config(_Model):
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = 1
    shutdown_timeout: Duration = 30.0
    pid_file: str | None = None  # written by the supervisor; `gateproxy reload` signals it
    tls_engine: Literal["full", "stdlib_only"] = "full"
    listeners: Annotated[tuple[ListenerConfig, ...], Field(min_length=1)]
    upstreams: dict[str, UpstreamConfig] = {}
    session_guard: SessionGuardConfig = SessionGuardConfig()
    admin: AdminConfig | None = AdminConfig()
    access_log: AccessLogConfig = AccessLogConfig()

    def worker_count(self, *, cpus: int) -> int:
        """How many workers to run: ``workers``, or ``cpus`` for ``auto``."""
        return max(1, cpus) if self.workers == "auto" else self.workers


# --- loading ------------------------------------------------------------------------------------


def load_config_text(text: str, *, source: str = "<config>") -> Config:
    """Parse and validate config text; raise :class:`ConfigError` listing every problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError.single(source, "", f"not valid YAML: {exc}") from exc
    return load_config_data(raw, source=source)


def load_config_data(raw: object, *, source: str = "<config>") -> Config:
    """Validate an already-parsed YAML document."""
    if not isinstance(raw, dict):
        raise ConfigError.single(source, "", f"expected a mapping at the top, got {raw!r}")
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, list(_problems_from(exc))) from None
    problems = list(_cross_check(config))
    if problems:
        raise ConfigError(source, problems)
    return config


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


def _cross_check(config: Config) -> Iterator[ConfigProblem]:
    seen_names: dict[str, int] = {}
    seen_binds: dict[str, int] = {}
    for i, listener in enumerate(config.listeners):
        where = f"listeners[{i}]"
        if listener.name in seen_names:
            yield ConfigProblem(
                f"{where}.name",
                f"duplicate listener name {listener.name!r} "
                f"(also listeners[{seen_names[listener.name]}])",
            )
        seen_names.setdefault(listener.name, i)
        if listener.bind in seen_binds and not listener.bind.endswith(":0"):
            yield ConfigProblem(
                f"{where}.bind",
                f"bind {listener.bind!r} is already used by listeners[{seen_binds[listener.bind]}]",
            )
        seen_binds.setdefault(listener.bind, i)
        yield from _check_listener(config, listener, where)
    admin_bind = config.admin.bind if config.admin is not None else None
    if admin_bind in seen_binds and admin_bind is not None and not admin_bind.endswith(":0"):
        yield ConfigProblem("admin.bind", f"bind {admin_bind!r} is also a listener's bind")


def _check_listener(
    config: Config, listener: ListenerConfig, where: str
) -> Iterator[ConfigProblem]:
    for j, route in enumerate(listener.routes):
        if route.upstream not in config.upstreams:
            yield ConfigProblem(
                f"{where}.routes[{j}].upstream",
                f"unknown upstream {route.upstream!r} (known: {sorted(config.upstreams)})",
            )
    paths: set[str] = set()
    for j, check in enumerate(listener.health_checks):
        if check.upstream is not None and check.upstream not in config.upstreams:
            yield ConfigProblem(
                f"{where}.health_checks[{j}].upstream",
                f"unknown upstream {check.upstream!r} (known: {sorted(config.upstreams)})",
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
    tls = listener.tls
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
