"""Which address is the client's: the TCP peer, a PROXY header's source, or X-Forwarded-For.

Behind an L4 balancer every connection comes from the balancer; behind an L7 hop every request
does. :class:`ClientTrust` holds the two trust lists of a listener and makes the decisions:

* ``proxy_protocol.trusted``: a connection from one of these addresses MUST start with a PROXY
  header (:func:`decide_proxy`), whose source then is the client address everywhere (per-client
  limits, probe_clients, the session cache's per-client budget, X-Forwarded-For, logs). A
  connection from any other address that starts with one is refused (a client must not choose
  its own address), as is a trusted one without a header.
* ``trusted_forwarded``: when the peer is one of these, a request's client address is taken from
  its ``X-Forwarded-For`` (:meth:`ClientTrust.forwarded_client`), nginx ``real_ip_recursive on``
  semantics: walk the list from the right, skip trusted addresses, and the first untrusted one is
  the client (if every entry is trusted, the leftmost). Entries that are not IP addresses end the
  walk (the last good address is used; a garbled rightmost entry leaves the peer's address).
  This is per request, after the connection was admitted: connection limits and probe_clients
  still see the connection's address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateproxy.core.access import IPNetwork, client_ip
from gateproxy.core.proxy_protocol import ProxyHeader, ProxyHeaderInvalid

#: The shell's client address when the socket's peer is gone before it was asked (a reset).
UNKNOWN_PEER = "unknown"

#: Why a connection was refused over its PROXY header (the stats keys, also in interfaces.md).
PROXY_REJECT_REASONS = ("missing", "untrusted", "invalid", "timeout")


@dataclass(frozen=True, slots=True)
class ProxyAccepted:
    """Serve the connection as coming from ``client`` (the header's source, or the peer)."""

    client: str
    local: bool  # LOCAL / UNKNOWN / no address in the header: the peer's own address is kept


@dataclass(frozen=True, slots=True)
class ProxyRejected:
    """Close the connection; ``reason`` is one of :data:`PROXY_REJECT_REASONS`."""

    reason: str
    detail: str


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``["10.0.0.0/8", "::1"]`` -> networks (a bare address is a /32 or /128)."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def in_networks(address: str, networks: Sequence[IPNetwork]) -> bool:
    """True when the IP literal ``address`` (IPv4-mapped IPv6 counts as IPv4) is in one."""
    if not networks:
        return False
    ip = client_ip(address)
    return ip is not None and any(ip in net for net in networks)


class ClientTrust:
    """The trust lists of one listener (``proxy_protocol.trusted``, ``trusted_forwarded``)."""

    __slots__ = ("_forwarded", "_proxy", "proxy_protocol")

    def __init__(
        self, *, proxy_trusted: Sequence[str] | None, forwarded_trusted: Sequence[str] = ()
    ) -> None:
        self.proxy_protocol = proxy_trusted is not None  # the listener reads PROXY headers
        self._proxy = parse_networks(proxy_trusted or ())
        self._forwarded = parse_networks(forwarded_trusted)

    @property
    def forwarded(self) -> bool:
        return bool(self._forwarded)

    def proxy_trusted(self, peer: str) -> bool:
        """True when ``peer`` must (and may) send a PROXY header."""
        return in_networks(peer, self._proxy)

    def forwarded_client(self, peer: str, forwarded_for: Sequence[bytes]) -> str:
        """The request's client address: ``peer``, or from X-Forwarded-For when ``peer`` is a
        trusted L7 hop (the module docstring gives the rule)."""
        if not forwarded_for or not in_networks(peer, self._forwarded):
            return peer
        client = peer
        for entry in reversed(_xff_entries(forwarded_for)):
            address = _ip_literal(entry)
            if address is None:
                break
            client = address
            if not in_networks(address, self._forwarded):
                break
        return client


def untrusted_header(peer: str) -> ProxyRejected:
    """A connection from an untrusted address that starts with a PROXY signature."""
    return ProxyRejected("untrusted", f"PROXY header from untrusted address {peer}")


def decide_proxy(
    *, peer: str, outcome: ProxyHeader | ProxyHeaderInvalid | None
) -> ProxyAccepted | ProxyRejected:
    """The decision for a trusted peer's header (``outcome``; None: it did not arrive in time)."""
    if outcome is None:
        return ProxyRejected("timeout", "no complete PROXY header within proxy_protocol.timeout")
    if isinstance(outcome, ProxyHeaderInvalid):
        missing = outcome.reason == "not a PROXY protocol header"
        return ProxyRejected("missing" if missing else "invalid", outcome.reason)
    if outcome.command == "local" or outcome.source is None:
        return ProxyAccepted(peer, local=True)
    return ProxyAccepted(outcome.source[0], local=False)


def _xff_entries(values: Sequence[bytes]) -> list[bytes]:
    return [part.strip() for value in values for part in value.split(b",") if part.strip()]


def _ip_literal(entry: bytes) -> str | None:
    text = entry.decode("latin-1")
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "192.0.2.1:443"
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None
