"""Who may connect: an ordered list of ``allow`` / ``deny`` rules, nginx's access module.

A rule is the text nginx writes: ``"allow 10.0.0.0/8"``, ``"deny 2001:db8::/32"``,
``"allow 192.0.2.7"`` (one address), ``"deny all"``. The rules are checked in order and the first
one that matches the client address decides; an address that no rule matches is allowed (as in
nginx, so a list that should let only some clients in ends with ``"deny all"``). An empty list
allows everyone.

Addresses are compared as addresses, not text: an IPv4 client seen on a dual-stack (``[::]``)
socket as ``::ffff:192.0.2.7`` matches IPv4 rules, a rule written in that IPv4-mapped form
(``::ffff:10.0.0.0/104``) is the IPv4 rule it stands for, and a zone index (``fe80::1%eth0``) is
ignored. An address that is not an IP literal (``unknown``) matches only ``all``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
RULE_HELP = "expected 'allow CIDR', 'deny CIDR', 'allow all' or 'deny all'"


@dataclass(frozen=True, slots=True)
class AccessRule:
    """One rule: ``allow`` or deny, for ``network`` (None: every address)."""

    allow: bool
    network: IPNetwork | None

    def matches(self, ip: IPAddress | None) -> bool:
        network = self.network
        if network is None:
            return True
        return ip is not None and ip.version == network.version and ip in network


def client_ip(address: str) -> IPAddress | None:
    """The address of ``address`` (an IP literal, maybe with a zone), IPv4-mapped IPv6 as IPv4;
    None when it is not an IP literal."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _network(text: str) -> IPNetwork | None:
    if text == "all":
        return None
    network = ipaddress.ip_network(text, strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def parse_rule(text: str) -> AccessRule:
    """``"allow 10.0.0.0/8"`` -> an :class:`AccessRule`; a ValueError names the bad rule."""
    words = text.split()
    if len(words) != 2 or words[0] not in ("allow", "deny"):
        raise ValueError(f"{RULE_HELP}, got {text!r}")
    try:
        network = _network(words[1])
    except ValueError as exc:
        raise ValueError(f"{RULE_HELP} (CIDR such as '10.0.0.0/8'), got {text!r}") from exc
    return AccessRule(allow=words[0] == "allow", network=network)


class AccessList:
    """The rules of one listener (or of the admin API), first match wins."""

    __slots__ = ("rules",)

    def __init__(self, rules: Sequence[str]) -> None:
        self.rules = tuple(parse_rule(rule) for rule in rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def allows(self, address: str) -> bool:
        """Whether a client at ``address`` may connect."""
        rules = self.rules
        if not rules:
            return True
        ip = client_ip(address)
        for rule in rules:
            if rule.matches(ip):
                return rule.allow
        return True
