"""core.session_guard: counting minted sessions, stripping, pinning, and bounded tables."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateproxy.core.config import SessionGuardConfig
from gateproxy.core.metrics import GuardCounters
from gateproxy.core.session_guard import (
    MAX_PIN_BYTES,
    NO_ACTION,
    GuardAction,
    SessionGuard,
    TopTable,
    add_cookie,
    normalise_path,
)

H = list[tuple[bytes, bytes]]
NO_COOKIE: H = [(b"host", b"app")]
MINT: H = [(b"set-cookie", b"JSESSIONID=S1; Path=/; HttpOnly"), (b"content-type", b"text/plain")]


def guard(**kw: Any) -> SessionGuard:
    return SessionGuard(SessionGuardConfig.model_validate(kw))


def respond(
    g: SessionGuard,
    response: H,
    *,
    request: H = NO_COOKIE,
    path: bytes = b"/",
    client: str = "10.0.0.1",
    probe: bool = False,
    method: bytes = b"GET",
    now: float = 0.0,
    scope: str = "",
) -> GuardAction:
    return g.on_response(
        request_headers=request,
        response_headers=response,
        path=path,
        client=client,
        is_probe=probe,
        method=method,
        now=now,
        listener="public",
        scope=scope,
    )


def pinned(
    g: SessionGuard,
    *,
    client: str = "10.0.0.1",
    request: H = NO_COOKIE,
    probe: bool = True,
    method: bytes = b"GET",
    now: float = 0.0,
    scope: str = "",
) -> bytes | None:
    return g.request_cookie_for(
        client=client,
        request_headers=request,
        is_probe=probe,
        method=method,
        now=now,
        scope=scope,
    )


# --- path normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "key"),
    [
        (b"/", "/"),
        (b"/healthz?x=1", "/healthz"),
        (b"/users/123/orders", "/users/{n}/orders"),
        (b"/users/123/orders/456?page=2", "/users/{n}/orders/{n}"),
        (b"/items/3f2504e0-4f89-11d3-9a0c-0305e82c3301", "/items/{id}"),
        (b"/blob/deadbeef00", "/blob/{id}"),
        (b"/t/AbCdEfGh12345678xyz", "/t/{id}"),
        (b"/login;jsessionid=ABC123", "/login"),
        (b"/static/app.js", "/static/app.js"),
        (b"/a/b/c/d/e/f/g/h/i/j", "/a/b/c/d/e/f/g/h/..."),
        (b"/" + b"x" * 300, "/" + "x" * 48),
        (b"*", "*"),
    ],
)
def test_normalise_path(target: bytes, key: str) -> None:
    assert normalise_path(target) == key


@given(st.binary(max_size=400))
def test_normalised_paths_are_bounded(target: bytes) -> None:
    key = normalise_path(target)
    assert len(key) <= 1 + 8 * 49 + 4


# --- observe ------------------------------------------------------------------------------------


def test_counts_sessions_minted_for_cookieless_requests() -> None:
    counters = GuardCounters()
    g = SessionGuard(SessionGuardConfig(), counters=counters)
    action = respond(g, MINT, path=b"/users/7?x=1", client="10.0.0.1")
    assert action.minted == (b"JSESSIONID",) and not action.strip and not action.pinned
    respond(g, MINT, path=b"/users/8", client="10.0.0.2", probe=True)
    # a request that carried the session cookie: the app rotated it, not minted for nobody
    respond(g, MINT, request=[(b"cookie", b"JSESSIONID=old")], client="10.0.0.3")
    # other cookies do not count as a session cookie; unconfigured Set-Cookie names do not mint
    respond(g, MINT, request=[(b"cookie", b"theme=dark")], path=b"/x", client="10.0.0.1")
    assert respond(g, [(b"set-cookie", b"theme=dark")]) is NO_ACTION
    assert respond(g, [(b"content-type", b"text/plain")]) is NO_ACTION
    assert (counters.minted, counters.minted_for_probes, counters.stripped) == (3, 1, 0)
    tables = g.tables()
    assert tables["top_paths"] == [
        {"path": "/users/{n}", "minted": 2},
        {"path": "/x", "minted": 1},
    ]
    assert tables["top_clients"] == [
        {"client": "10.0.0.1", "minted": 2},
        {"client": "10.0.0.2", "minted": 1},
    ]
    assert tables["by_listener"] == {"public": 3}
    assert tables["pinned"] == {"entries": 0, "max_entries": 10000}


def test_one_count_per_response_even_with_several_session_cookies() -> None:
    g = guard()
    action = respond(
        g,
        [
            (b"set-cookie", b"JSESSIONID=a"),
            (b"set-cookie", b"SESSION=b"),
            (b"set-cookie", b"JSESSIONID=c"),
        ],
    )
    assert action.minted == (b"JSESSIONID", b"SESSION")
    assert g.counters.minted == 1


# --- strip --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "stripped"),
    [(b"/static/app.js", True), (b"/static?x", False), (b"/api/static/x", False), (b"/img/", True)],
)
def test_stateless_paths_strip_only_session_cookies(path: bytes, stripped: bool) -> None:
    g = guard(stateless_paths=["/static/", "/img/"])
    response = [*MINT, (b"set-cookie", b"theme=dark; Path=/"), (b"set-cookie", b"SESSION=x")]
    action = respond(g, response, path=path)
    kept = action.apply(response)
    names = [v.split(b"=")[0] for n, v in kept if n == b"set-cookie"]
    if stripped:
        assert names == [b"theme"]
        assert g.counters.stripped == 2
    else:
        assert names == [b"JSESSIONID", b"theme", b"SESSION"]
        assert g.counters.stripped == 0
    assert (b"content-type", b"text/plain") in kept
    assert g.counters.minted == 1  # the app minted either way


def test_stripping_also_applies_to_requests_with_cookies() -> None:
    g = guard(stateless_paths=["/"])
    action = respond(g, MINT, request=[(b"cookie", b"JSESSIONID=old")])
    assert action.strip == frozenset({b"JSESSIONID"}) and action.minted == ()
    assert action.apply(MINT) == [(b"content-type", b"text/plain")]
    assert (g.counters.stripped, g.counters.minted) == (1, 0)


# --- pin ----------------------------------------------------------------------------------------


def test_pinning_gives_a_probe_its_first_session_back() -> None:
    g = guard(pin_probes=True)
    assert pinned(g) is None
    action = respond(g, MINT, probe=True, now=1.0)
    assert action.pinned
    assert pinned(g, now=2.0) == b"JSESSIONID=S1"
    assert g.counters.pinned_reused == 1
    # the app accepted it: no new Set-Cookie, the pin stays
    assert respond(g, [(b"content-type", b"text/plain")], probe=True, now=2.0) is NO_ACTION
    assert pinned(g, now=3.0) == b"JSESSIONID=S1"
    assert g.tables()["pinned"] == {"entries": 1, "max_entries": 10000}


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"probe": False}, "not a probe"),
        ({"method": b"POST"}, "unsafe method"),
        ({"request": [(b"cookie", b"JSESSIONID=mine")]}, "carries its own session"),
        ({"client": "10.0.0.9"}, "another client"),
        ({"scope": "other-upstream"}, "another upstream"),
    ],
)
def test_pins_are_only_given_to_the_same_cookieless_probe(kwargs: dict[str, Any], why: str) -> None:
    g = guard(pin_probes=True)
    respond(g, MINT, probe=True)
    assert pinned(g, **kwargs) is None, why


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"probe": False}, "not a probe"),
        ({"method": b"POST"}, "a POST may log in: never share that session"),
        ({"request": [(b"cookie", b"SESSION=x")]}, "the request had a session"),
    ],
)
def test_pins_are_only_learnt_from_cookieless_probe_gets(kwargs: dict[str, Any], why: str) -> None:
    g = guard(pin_probes=True)
    assert not respond(g, MINT, **kwargs).pinned, why
    assert pinned(g) is None


def test_pinning_off_by_default() -> None:
    g = guard()
    assert not respond(g, MINT, probe=True).pinned
    assert pinned(g) is None


def test_pin_is_replaced_when_the_app_forgot_it_and_dropped_when_deleted() -> None:
    g = guard(pin_probes=True)
    respond(g, MINT, probe=True)
    respond(g, [(b"set-cookie", b"JSESSIONID=S2; Path=/")], probe=True)
    assert pinned(g) == b"JSESSIONID=S2"
    respond(g, [(b"set-cookie", b"SESSION=T; Path=/")], probe=True)
    assert pinned(g) == b"JSESSIONID=S2; SESSION=T"
    respond(g, [(b"set-cookie", b"JSESSIONID=; Max-Age=0; Path=/")], probe=True)
    assert pinned(g) == b"SESSION=T"
    respond(g, [(b"set-cookie", b"SESSION=; max-age=0")], probe=True)
    assert pinned(g) is None
    assert g.tables()["pinned"] == {"entries": 0, "max_entries": 10000}


def test_pins_expire_when_idle_and_use_keeps_them() -> None:
    g = guard(pin_probes=True, pin_idle_timeout="10s")
    respond(g, MINT, probe=True, now=0.0)
    assert pinned(g, now=9.0) is not None  # use refreshes
    assert pinned(g, now=18.0) is not None
    assert pinned(g, now=28.0) is None  # 10 s idle
    respond(g, MINT, probe=True, client="a", now=30.0)
    g.expire(now=40.0)
    assert g.tables()["pinned"] == {"entries": 0, "max_entries": 10000}


def test_pins_are_capped_lru() -> None:
    g = guard(pin_probes=True, max_pinned=3)
    for i in range(3):
        respond(g, MINT, probe=True, client=f"c{i}", now=float(i))
    assert pinned(g, client="c0", now=3.0) is not None  # c0 is now the most recent
    respond(g, MINT, probe=True, client="c3", now=4.0)
    assert pinned(g, client="c1", now=5.0) is None  # evicted
    assert all(pinned(g, client=c, now=5.0) for c in ("c0", "c2", "c3"))


def test_oversized_pins_are_not_kept() -> None:
    g = guard(pin_probes=True)
    huge = b"JSESSIONID=" + b"x" * MAX_PIN_BYTES
    assert not respond(g, [(b"set-cookie", huge)], probe=True).pinned
    assert pinned(g) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"host", b"a")], [(b"host", b"a"), (b"cookie", b"JSESSIONID=S")]),
        ([(b"cookie", b"theme=dark")], [(b"cookie", b"theme=dark; JSESSIONID=S")]),
        ([(b"cookie", b"theme=dark; ")], [(b"cookie", b"theme=dark; JSESSIONID=S")]),
        ([(b"cookie", b"")], [(b"cookie", b"JSESSIONID=S")]),
    ],
)
def test_add_cookie(headers: H, expected: H) -> None:
    assert add_cookie(headers, b"JSESSIONID=S") == expected


# --- bounded tables -----------------------------------------------------------------------------


def test_top_table_keeps_a_steady_offender_through_a_flood() -> None:
    table = TopTable(10)
    for _ in range(5):
        table.add("prober")
    for i in range(10_000):
        table.add(f"once-{i}")
        assert len(table) <= 10
    assert table.get("prober") == 5
    assert table.top(1) == [("prober", 5)]
    assert table.evictions == 10_000 - 9


def test_top_table_capacity_one_and_lru_order() -> None:
    one = TopTable(1)
    one.add("a")
    one.add("a")
    one.add("b")
    assert one.top() == [("b", 1)]
    table = TopTable(3)
    for key in ("a", "b", "c"):
        table.add(key)
    table.add("a")  # a is protected now
    table.add("d")  # evicts the least recently used probation key: b
    assert "b" not in table and {"a", "c", "d"} <= {k for k, _ in table.top()}
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        TopTable(0)


@given(
    capacity=st.integers(1, 12),
    keys=st.lists(st.integers(0, 40).map(str), max_size=300),
)
def test_top_table_invariants(capacity: int, keys: list[str]) -> None:
    table = TopTable(capacity)
    exact: dict[str, int] = {}
    for key in keys:
        table.add(key)
        exact[key] = exact.get(key, 0) + 1
        assert len(table) <= capacity
        assert key in table  # the key just counted is always held
        assert 1 <= table.get(key) <= exact[key]  # counts never over-estimate
    assert len({k for k, _ in table.top()}) == len(table)


def test_tables_stay_within_caps_under_100k_distinct_clients_and_paths() -> None:
    config = SessionGuardConfig(pin_probes=True, top_n=50, max_pinned=200)
    g = SessionGuard(config)
    for i in range(100_000):
        client = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        path = f"/p{i}/x{i % 7}".encode()  # "p<i>" has a digit but is short: stays distinct
        now = i / 1000  # 100 s in all: nothing idles out
        set_cookie = [(b"set-cookie", b"JSESSIONID=%d" % i)]
        respond(g, set_cookie, path=path, client=client, probe=True, now=now)
        if i % 10 == 0:  # a steady offender among the flood
            respond(g, MINT, path=b"/healthz", client="192.0.2.1", probe=True, now=now)
    tables = g.tables()
    assert len(tables["top_paths"]) == 50  # type: ignore[arg-type]
    assert len(tables["top_clients"]) == 50  # type: ignore[arg-type]
    assert tables["pinned"] == {"entries": 200, "max_entries": 200}
    assert tables["top_paths"][0] == {"path": "/healthz", "minted": 10_000}  # type: ignore[index]
    assert tables["top_clients"][0] == {"client": "192.0.2.1", "minted": 10_000}  # type: ignore[index]
    assert g.counters.minted == 110_000


# --- gateproxy's own health requests ------------------------------------------------------------


def own(
    g: SessionGuard, response: H, *, sent: bytes | None, server: str = "s:1"
) -> tuple[bytes, ...]:
    return g.on_own_response(
        sent=sent, response_headers=response, path=b"/h", upstream="app", server=server, now=1.0
    )


def test_own_requests_send_back_their_session_per_server_and_count_new_ones() -> None:
    g = guard()  # pin_probes off: gateproxy's own requests are not a prober's
    assert g.own_request_cookie(upstream="app", server="s:1", now=0.0) is None
    assert own(g, MINT, sent=None) == (b"JSESSIONID",)
    assert g.own_request_cookie(upstream="app", server="s:1", now=2.0) == b"JSESSIONID=S1"
    assert g.own_request_cookie(upstream="app", server="s:2", now=2.0) is None  # per server
    assert own(g, MINT, sent=b"JSESSIONID=S1") == ()  # the same session set again: not new
    assert own(g, [(b"set-cookie", b"JSESSIONID=S2")], sent=b"JSESSIONID=S1") == (b"JSESSIONID",)
    assert g.own_request_cookie(upstream="app", server="s:1", now=3.0) == b"JSESSIONID=S2"
    assert own(g, [(b"set-cookie", b"JSESSIONID=; Max-Age=0")], sent=b"JSESSIONID=S2") == ()
    assert g.own_request_cookie(upstream="app", server="s:1", now=4.0) is None
    c = g.counters
    assert (c.minted, c.minted_for_probes, c.minted_by_health_checks) == (2, 2, 2)
    tables = g.tables()
    assert tables["top_clients"] == [{"client": "gateproxy-health-check", "minted": 2}]
    assert tables["by_listener"] == {}  # no listener involved
    assert own(g, [(b"content-type", b"text/plain")], sent=None) == ()


def test_own_pins_never_reach_a_prober_with_the_same_scope() -> None:
    g = guard(pin_probes=True)
    own(g, MINT, sent=None, server="s:1")
    assert pinned(g, client="gateproxy-health-check", scope="app") is None
    assert pinned(g, scope="app s:1") is None
