"""Config of the client-address features: ``listeners[].proxy_protocol``, ``trusted_forwarded``.

Kept apart from ``core.config`` (which imports it) so those keys read as one block; the
decisions are ``core.client_address``, the parser ``core.proxy_protocol``.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from gateproxy.core.units import parse_duration

DEFAULT_PROXY_PROTOCOL_TIMEOUT = 5.0


def _cidr_list(value: Any) -> tuple[str, ...]:
    """A YAML list of CIDRs (a bare address is a /32 or /128) -> a tuple, each checked."""
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list of CIDRs such as ['10.0.0.0/8'], got {value!r}")
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"expected a CIDR such as '10.0.0.0/8', got {item!r}")
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError as exc:
            raise ValueError(f"expected a CIDR such as '10.0.0.0/8', got {item!r}") from exc
    return tuple(value)


CidrList = Annotated[tuple[str, ...], BeforeValidator(_cidr_list)]


class ProxyProtocolConfig(BaseModel):
    """``listeners[].proxy_protocol``: HAProxy's ``accept-proxy`` for the ``trusted`` sources."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    trusted: Annotated[CidrList, Field(min_length=1)]
    # Whole header within this after the accept (and, from other sources, the first bytes).
    timeout: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = (
        DEFAULT_PROXY_PROTOCOL_TIMEOUT
    )
