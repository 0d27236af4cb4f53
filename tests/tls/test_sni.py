"""gateproxy.tls.sni: server name -> the certificates (one per key type) that serve it."""

from __future__ import annotations

import pytest

from gateproxy.tls.sni import SniTable

NAMES = [["default.test"], ["b.example.com", "*.wild.example.com"], ["exact.wild.example.com"]]


@pytest.mark.parametrize(
    ("server_name", "chosen"),
    [
        ("default.test", (0,)),
        ("b.example.com", (1,)),
        ("B.Example.COM", (1,)),
        ("b.example.com.", (1,)),
        ("x.wild.example.com", (1,)),
        ("exact.wild.example.com", (2,)),  # exact beats an earlier certificate's wildcard
        ("EXACT.wild.example.com", (2,)),
        ("wild.example.com", ()),  # a wildcard needs exactly one label
        ("a.b.wild.example.com", ()),
        (".wild.example.com", ()),
        ("unknown.test", ()),  # () = the caller's default
        ("", ()),
        (None, ()),
    ],
)
def test_sni_table(server_name: str | None, chosen: tuple[int, ...]) -> None:
    assert SniTable(NAMES).choose(server_name) == chosen


@pytest.mark.parametrize(
    ("names", "server_name", "chosen"),
    [
        ([["a.test"], ["*.com"]], "example.com", ()),  # no wildcard over a single label
        ([["a.test"], ["w*.example.com"]], "www.example.com", ()),  # partial labels never match
        ([["a.test"], ["x.test"], ["x.test"]], "x.test", (1,)),  # first configured wins
        ([["a.test"], ["*.Example.ORG"]], "mail.example.org", (1,)),
    ],
)
def test_sni_table_rules(names: list[list[str]], server_name: str, chosen: tuple[int, ...]) -> None:
    assert SniTable(names).choose(server_name) == chosen


# certificate 0: EC a.test + b.test; 1: RSA a.test; 2: EC *.w.test; 3: RSA x.w.test; 4: RSA a.test
KEYED = SniTable(
    [["a.test", "b.test"], ["a.test"], ["*.w.test"], ["x.w.test"], ["a.test"]],
    key_types=["EC", "RSA", "EC", "RSA", "RSA"],
)


@pytest.mark.parametrize(
    ("server_name", "chosen"),
    [
        ("a.test", (0, 1)),  # one per key type; the first RSA one (1, not 4)
        ("b.test", (0,)),  # only the EC certificate carries it
        ("x.w.test", (2, 3)),  # RSA exact + EC wildcard: both valid for the name
        ("y.w.test", (2,)),
        ("c.test", ()),
    ],
)
def test_one_certificate_per_key_type(server_name: str, chosen: tuple[int, ...]) -> None:
    assert KEYED.choose(server_name) == chosen


def test_groups_lists_every_answer() -> None:
    assert KEYED.groups() == {(0, 1), (0,), (2, 3), (2,)}
    assert SniTable(NAMES).groups() == {(0,), (1,), (2,)}


def test_key_types_must_match_the_certificates() -> None:
    with pytest.raises(ValueError):
        SniTable([["a.test"], ["b.test"]], key_types=["EC"])
