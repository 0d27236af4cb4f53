"""core.access: nginx allow/deny rules, first match wins, IPv4/IPv6 and IPv4-mapped addresses."""

from __future__ import annotations

import ipaddress

import pytest

from gateproxy.core.access import AccessList, client_ip, parse_rule
from gateproxy.core.config import load_config_data
from gateproxy.errors import ConfigError


def test_the_first_matching_rule_decides() -> None:
    rules = AccessList(["deny 192.0.2.7", "allow 192.0.2.0/24", "allow 2001:db8::/32", "deny all"])
    assert not rules.allows("192.0.2.7")  # denied before the wider allow
    assert rules.allows("192.0.2.8")
    assert rules.allows("2001:db8::1")
    assert not rules.allows("198.51.100.1")
    assert not rules.allows("2001:db9::1")


def test_no_match_allows_and_an_empty_list_allows_everyone() -> None:
    assert AccessList(["deny 10.0.0.0/8"]).allows("192.0.2.1")  # nginx: no rule matched
    empty = AccessList([])
    assert not empty and empty.allows("192.0.2.1") and empty.allows("unknown")


def test_an_ipv4_client_on_a_dual_stack_socket_matches_ipv4_rules() -> None:
    rules = AccessList(["allow 10.0.0.0/8", "deny all"])
    assert rules.allows("::ffff:10.1.2.3")
    assert not rules.allows("::ffff:11.1.2.3")
    assert rules.allows("10.1.2.3")


def test_a_rule_in_the_ipv4_mapped_form_is_the_ipv4_rule() -> None:
    rule = parse_rule("deny ::ffff:10.0.0.0/104")
    assert rule.network == ipaddress.IPv4Network("10.0.0.0/8")
    assert not AccessList(["deny ::ffff:10.0.0.0/104"]).allows("10.9.9.9")


def test_zones_and_non_addresses() -> None:
    assert client_ip("fe80::1%eth0") == ipaddress.IPv6Address("fe80::1")
    assert client_ip("unknown") is None
    rules = AccessList(["deny 0.0.0.0/0", "deny ::/0"])
    assert rules.allows("unknown")  # only "all" matches what is not an address
    assert not AccessList(["deny all"]).allows("unknown")


def test_ipv4_rules_never_match_ipv6_clients() -> None:
    rules = AccessList(["deny 0.0.0.0/0"])
    assert rules.allows("2001:db8::1") and not rules.allows("192.0.2.1")


@pytest.mark.parametrize(
    "rule", ["permit 10.0.0.0/8", "allow", "allow 10.0.0.0/33", "deny 10.0.0.0/8 extra", "allow x"]
)
def test_a_bad_rule_names_itself_and_the_rule(rule: str) -> None:
    with pytest.raises(ValueError, match="expected 'allow CIDR'") as info:
        parse_rule(rule)
    assert repr(rule) in str(info.value)


def test_config_errors_give_the_key_path_of_the_bad_rule() -> None:
    raw = {
        "listeners": [
            {
                "name": "public",
                "bind": "127.0.0.1:0",
                "routes": [{"upstream": "app"}],
                "access": ["allow 10.0.0.0/8", "deny everyone"],
            }
        ],
        "upstreams": {"app": {"servers": ["127.0.0.1:9"]}},
        "admin": {"access": [7]},
    }
    with pytest.raises(ConfigError) as info:
        load_config_data(raw, source="gp.yaml")
    text = str(info.value)
    assert "listeners[0].access[1]" in text and "'deny everyone'" in text
    assert "admin.access[0]" in text


def test_rules_are_kept_as_normalised_text() -> None:
    raw = {
        "listeners": [
            {
                "name": "public",
                "bind": "127.0.0.1:0",
                "routes": [{"upstream": "app"}],
                "access": ["allow   10.0.0.0/8", "deny all"],
            }
        ],
        "upstreams": {"app": {"servers": ["127.0.0.1:9"]}},
    }
    config = load_config_data(raw)
    assert config.listeners[0].access == ("allow 10.0.0.0/8", "deny all")
