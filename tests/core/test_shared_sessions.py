"""The shared cache's lookup decision, negative cache, store keys and TTLs."""

from __future__ import annotations

import pytest

from gateproxy.core.breaker import Breaker
from gateproxy.core.client_hello import NEED_MORE, ClientHello, NotAHello
from gateproxy.core.session_ids import SessionIds
from gateproxy.core.shared_sessions import (
    SKIP_REASONS,
    Lookup,
    NegativeCache,
    SharedStats,
    Skip,
    decide_lookup,
    session_store_key,
    write_ttl,
)

IDS = SessionIds(b"k" * 32, listener="public")
OURS = IDS.issue(b"a" * 16)
OTHER = IDS.issue(b"b" * 16)


def hello(
    session_id: bytes = OURS, *, tls13: bool = False, ticket: bool = False, psk: bytes = b""
) -> ClientHello:
    return ClientHello(
        legacy_version=0x0303,
        session_id=session_id,
        offers_tls13=tls13,
        offers_ticket=ticket,
        psk_identities=(psk,) if psk else (),
    )


def decide(
    result: object,
    *,
    allows_tls13: bool = True,
    accepts_tickets: bool = True,
    stateful_tls13: bool = False,
    local: frozenset[bytes] = frozenset(),
    negative: NegativeCache | None = None,
    breaker: Breaker | None = None,
) -> Lookup | Skip:
    return decide_lookup(
        result,  # type: ignore[arg-type]  # the table also feeds non-hellos
        ids=IDS,
        allows_tls13=allows_tls13,
        accepts_tickets=accepts_tickets,
        stateful_tls13=stateful_tls13,
        local=local,
        negative=negative or NegativeCache(max_entries=4, ttl=10),
        breaker=breaker or Breaker(failures=1, cooldown=5),
        now=100.0,
    )


def _open_breaker() -> Breaker:
    b = Breaker(failures=1, cooldown=5)
    b.failure(now=99.0)
    return b


def _negative() -> NegativeCache:
    n = NegativeCache(max_entries=4, ttl=10)
    n.add(OURS, now=95.0)
    return n


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (lambda: decide(hello()), Lookup(OURS)),
        (lambda: decide(NEED_MORE), Skip("no_hello")),
        (lambda: decide(NotAHello("x")), Skip("no_hello")),
        (lambda: decide(hello(tls13=True)), Skip("tls13")),
        (lambda: decide(hello(tls13=True), allows_tls13=False), Lookup(OURS)),
        (lambda: decide(hello(tls13=True, psk=OTHER)), Skip("tls13")),  # stateless tickets
        (lambda: decide(hello(tls13=True, psk=OTHER), stateful_tls13=True), Lookup(OTHER)),
        (lambda: decide(hello(tls13=True), stateful_tls13=True), Skip("no_session_id")),
        (lambda: decide(hello(tls13=True, psk=b"t" * 32), stateful_tls13=True), Skip("forged")),
        (lambda: decide(hello(b"")), Skip("no_session_id")),
        (lambda: decide(hello(ticket=True)), Skip("ticket")),
        (lambda: decide(hello(ticket=True), accepts_tickets=False), Lookup(OURS)),
        (lambda: decide(hello(b"f" * 32)), Skip("forged")),
        (lambda: decide(hello(), local=frozenset({OURS})), Skip("local")),
        (lambda: decide(hello(), negative=_negative()), Skip("negative")),
        (lambda: decide(hello(OTHER), negative=_negative()), Lookup(OTHER)),
        (lambda: decide(hello(), breaker=_open_breaker()), Skip("breaker_open")),
    ],
)
def test_lookup_decision(case: object, expected: object) -> None:
    assert callable(case)
    got = case()
    assert got == expected
    if isinstance(got, Skip):
        assert got.reason in SKIP_REASONS


def test_a_forged_id_does_not_spend_the_half_open_trial() -> None:
    breaker = Breaker(failures=1, cooldown=1)
    breaker.failure(now=98.0)
    assert decide(hello(b"f" * 32), breaker=breaker) == Skip("forged")
    assert decide(hello(), breaker=breaker) == Lookup(OURS)  # the trial
    assert decide(hello(OTHER), breaker=breaker) == Skip("breaker_open")


def test_negative_cache_expires_and_stays_bounded() -> None:
    n = NegativeCache(max_entries=3, ttl=10)
    for i in range(5):
        n.add(bytes([i]), now=float(i))
    assert len(n) == 3
    assert not n.holds(b"\x00", now=5) and not n.holds(b"\x01", now=5)
    assert n.holds(b"\x04", now=13.9)
    assert not n.holds(b"\x04", now=14.0)
    n.add(b"z", now=100)  # everything older has expired by now and goes
    assert len(n) == 1


def test_store_key_and_ttl() -> None:
    assert session_store_key(prefix="gp", listener="public", session_id=b"\x01\xff") == (
        "gp:sessions:public:01ff"
    )
    assert write_ttl(timeout=300, age=0.2) == 299
    assert write_ttl(timeout=300, age=400) == 1


def test_stats_tree_shows_the_breaker() -> None:
    tree = SharedStats(lookups=2).tree(skipped_by_reason={"tls13": 1}, breaker=_open_breaker())
    assert tree["lookups"] == 2
    assert tree["breaker_open"] == 1 and tree["breaker_opens"] == 1
    assert tree["skipped_by_reason"] == {"tls13": 1}
