"""Config of ``listeners[].rate_limit``: request rates per client address (nginx ``limit_req``).

``rate`` is nginx's ``"10r/s"`` / ``"600r/m"`` or a plain number of requests per second;
``burst`` how many requests above the rate a client may send at once (nginx ``burst=``, always
``nodelay``: over the limit is answered at once, never queued); ``max_clients`` caps the table
of per-address buckets (least recently used evicted); ``status`` the answer when over the limit.
``probes`` is the class of ``probe_clients``: None leaves them unlimited, else their own rate and
burst in their own table. What the numbers do is ``core.rate_limit``.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

_RATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*r/([sm])\s*$")
_RATE_HELP = "expected a rate such as '10r/s', '600r/m' or a number of requests per second"


def parse_rate(value: object) -> float:
    """Requests per second of ``"10r/s"``, ``"600r/m"`` or a number (> 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{_RATE_HELP}, got {value!r}")
    if isinstance(value, str):
        match = _RATE.match(value)
        if match is None:
            raise ValueError(f"{_RATE_HELP}, got {value!r}")
        rate = float(match.group(1)) / (60.0 if match.group(2) == "m" else 1.0)
    else:
        rate = float(value)
    if not rate > 0:
        raise ValueError(f"a rate must be above 0 requests per second, got {value!r}")
    return rate


Rate = Annotated[float, BeforeValidator(parse_rate)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class ProbeRateConfig(_Frozen):
    rate: Rate
    burst: Annotated[int, Field(ge=0)] = 0


class RateLimitConfig(_Frozen):
    rate: Rate
    burst: Annotated[int, Field(ge=0)] = 0
    max_clients: Annotated[int, Field(ge=1)] = 100_000
    status: Annotated[int, Field(ge=400, le=599)] = 429
    probes: ProbeRateConfig | None = None  # None: probe_clients are not rate-limited
