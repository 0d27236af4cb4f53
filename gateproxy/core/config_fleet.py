"""The ``fleet`` config block: the store several gateproxy hosts share ticket keys through.

::

    fleet:
      redis: {url: "redis://127.0.0.1:6379/0", key_prefix: gateproxy, timeout: 500ms}
      secret_file: fleet.secret      # >= 32 bytes, the same file on every host

A listener takes its ticket keys from the fleet with ``tls.tickets.source: fleet`` (its
``rotate_every`` is the slot length, ``keep`` the previous slots still accepted). The cross-checks
here need the whole tree; the secret file itself is read by ``gateproxy.config_files``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from gateproxy.core.units import parse_duration
from gateproxy.errors import ConfigProblem

if TYPE_CHECKING:
    from gateproxy.core.config import Config

__all__ = [
    "FleetConfig",
    "FleetRedisConfig",
    "fleet_listeners",
    "fleet_problems",
    "parse_redis_url",
]

_URL_HELP = "expected redis://HOST:PORT/DB, rediss://HOST:PORT/DB or unix:///PATH"


def parse_redis_url(value: object) -> str:
    """``value`` if it is a Redis URL coredis can open (scheme, host, port 1-65535, db >= 0)."""
    if not isinstance(value, str):
        raise ValueError(f"{_URL_HELP}, got {value!r}")
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError:
        raise ValueError(f"{_URL_HELP}, got {value!r} (bad port)") from None
    if url.scheme == "unix" and url.path:
        return value
    if url.scheme not in ("redis", "rediss") or not url.hostname:
        raise ValueError(f"{_URL_HELP}, got {value!r}")
    if port == 0:
        raise ValueError(f"{_URL_HELP}, got {value!r} (port 0)")
    db = url.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError(f"{_URL_HELP}, got {value!r} (the db is a number)")
    return value


class _Block(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class FleetRedisConfig(_Block):
    url: Annotated[str, BeforeValidator(parse_redis_url)] = "redis://127.0.0.1:6379/0"
    key_prefix: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")] = "gateproxy"
    # one store round trip (connect included); a slower store counts as unreachable
    timeout: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = 0.5


class FleetConfig(_Block):
    redis: FleetRedisConfig = FleetRedisConfig()
    secret_file: Annotated[str, Field(min_length=1)]


def fleet_listeners(config: Config) -> list[str]:
    """Names of the listeners whose ticket keys come from the fleet."""
    return [
        lc.name
        for lc in config.listeners
        if lc.tls is not None and lc.tls.tickets.source == "fleet"
    ]


def fleet_problems(config: Config) -> Iterator[ConfigProblem]:
    """Listeners asking for fleet keys that the rest of the config cannot give them."""
    for index, lc in enumerate(config.listeners):
        tickets = lc.tls.tickets if lc.tls is not None else None
        if tickets is None or tickets.source != "fleet":
            continue
        where = f"listeners[{index}].tls.tickets.source"
        if config.fleet is None:
            yield ConfigProblem(where, "source: fleet needs a top-level fleet: block (redis, ...)")
        if tickets.key_files:
            yield ConfigProblem(where, "source: fleet and key_files exclude each other")
        if not tickets.enabled or not tickets.stateless:
            yield ConfigProblem(where, "source: fleet needs enabled: true and stateless: true")
        if config.tls_engine != "full":
            yield ConfigProblem(where, "source: fleet needs tls_engine: full (ticket keys)")
