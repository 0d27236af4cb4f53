"""Which address is the client's: PROXY decisions and X-Forwarded-For from trusted hops."""

from __future__ import annotations

import pytest

from gateproxy.core.client_address import (
    ClientTrust,
    ProxyAccepted,
    ProxyRejected,
    decide_proxy,
    in_networks,
    untrusted_header,
)
from gateproxy.core.proxy_protocol import ProxyHeader, ProxyHeaderInvalid

HEADER = ProxyHeader(2, "proxy", ("203.0.113.7", 5000), ("10.0.0.1", 443), 28)


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (HEADER, ProxyAccepted("203.0.113.7", local=False)),
        (ProxyHeader(2, "local", None, None, 16), ProxyAccepted("10.0.0.2", local=True)),
        (ProxyHeader(1, "local", None, None, 15), ProxyAccepted("10.0.0.2", local=True)),
        (ProxyHeader(2, "proxy", None, None, 16), ProxyAccepted("10.0.0.2", local=True)),
        (ProxyHeaderInvalid("not a PROXY protocol header"), "missing"),
        (ProxyHeaderInvalid("PROXY v1 header does not end with CRLF"), "invalid"),
        (None, "timeout"),
    ],
)
def test_decide_proxy(
    outcome: ProxyHeader | ProxyHeaderInvalid | None, expected: ProxyAccepted | str
) -> None:
    decision = decide_proxy(peer="10.0.0.2", outcome=outcome)
    if isinstance(expected, str):
        assert isinstance(decision, ProxyRejected) and decision.reason == expected
        assert decision.detail
    else:
        assert decision == expected


def test_untrusted_header_names_the_address() -> None:
    assert untrusted_header("198.51.100.9") == ProxyRejected(
        "untrusted", "PROXY header from untrusted address 198.51.100.9"
    )


def test_proxy_trust_by_cidr_including_mapped_ipv4() -> None:
    trust = ClientTrust(proxy_trusted=["10.0.0.0/8", "::1"])
    assert trust.proxy_protocol
    assert trust.proxy_trusted("10.1.2.3")
    assert trust.proxy_trusted("::ffff:10.1.2.3")
    assert trust.proxy_trusted("::1")
    assert not trust.proxy_trusted("11.0.0.1")
    assert not trust.proxy_trusted("unknown")
    assert not ClientTrust(proxy_trusted=None).proxy_protocol


def test_in_networks_without_networks_is_false() -> None:
    assert not in_networks("10.0.0.1", ())


TRUSTED_HOPS = ["10.0.0.0/8", "192.168.1.1"]


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        # nginx real_ip_recursive on: the rightmost address that is not a trusted hop
        ("10.0.0.5", [b"203.0.113.7"], "203.0.113.7"),
        ("10.0.0.5", [b"198.51.100.1, 203.0.113.7, 10.9.9.9"], "203.0.113.7"),
        ("10.0.0.5", [b"198.51.100.1", b"203.0.113.7, 192.168.1.1"], "203.0.113.7"),
        ("10.0.0.5", [b"10.1.1.1, 10.2.2.2"], "10.1.1.1"),  # all trusted: the leftmost
        ("10.0.0.5", [b"[2001:db8::7]:443"], "2001:db8::7"),
        ("10.0.0.5", [b"203.0.113.7:5555"], "203.0.113.7"),
        ("10.0.0.5", [b"garbage"], "10.0.0.5"),  # nothing usable: the peer
        ("10.0.0.5", [b"203.0.113.7, unknown, 10.1.1.1"], "10.1.1.1"),  # walk ends at garbage
        ("10.0.0.5", [], "10.0.0.5"),
        ("10.0.0.5", [b" , "], "10.0.0.5"),
        ("203.0.113.9", [b"198.51.100.1"], "203.0.113.9"),  # an untrusted peer is not believed
    ],
)
def test_forwarded_client(peer: str, xff: list[bytes], client: str) -> None:
    trust = ClientTrust(proxy_trusted=None, forwarded_trusted=TRUSTED_HOPS)
    assert trust.forwarded
    assert trust.forwarded_client(peer, xff) == client


def test_forwarded_off_by_default() -> None:
    trust = ClientTrust(proxy_trusted=None)
    assert not trust.forwarded
    assert trust.forwarded_client("10.0.0.5", [b"203.0.113.7"]) == "10.0.0.5"
