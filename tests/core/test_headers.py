"""Header rewriting: tables for the rules, hypothesis against a slow reference model."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateproxy.core.headers import (
    HOP_BY_HOP,
    connection_tokens,
    cookie_names_in_request,
    has_token,
    http_date,
    prepare_request_headers,
    prepare_response_headers,
    set_cookie_names,
)

H = list[tuple[bytes, bytes]]


def req(headers: H, *, host: bytes | None = b"app.example", client_ip: str = "203.0.113.7") -> H:
    return prepare_request_headers(headers, client_ip=client_ip, host=host)


def resp(headers: H, *, via: bytes = b"1.1 gateproxy") -> H:
    """The response rewrite without a Date of ours (see the Date tests)."""
    return prepare_response_headers(headers, date=None, via=via)


# --- hop-by-hop and Connection tokens ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
@pytest.mark.parametrize("direction", ["request", "response"])
def test_hop_by_hop_headers_are_removed(name: bytes, direction: str) -> None:
    headers = [(b"accept", b"*/*"), (name, b"x"), (b"user-agent", b"t")]
    out = req(headers) if direction == "request" else resp(headers)
    assert name not in [n for n, _ in out]
    assert out[:2] == [(b"accept", b"*/*"), (b"user-agent", b"t")]


@pytest.mark.parametrize(
    ("connection", "removed", "kept"),
    [
        (b"x-a", [b"x-a"], [b"x-b"]),
        (b"X-A , x-B", [b"x-a", b"x-b"], []),
        (b" ,x-b,, ", [b"x-b"], [b"x-a"]),
        (b"close", [], [b"x-a", b"x-b"]),
        # protected: a Connection token must not strip framing or Host
        (b"content-length, host, x-a", [b"x-a"], [b"content-length", b"host", b"x-b"]),
    ],
)
def test_connection_tokens_remove_named_headers(
    connection: bytes, removed: list[bytes], kept: list[bytes]
) -> None:
    headers = [
        (b"host", b"app.example"),
        (b"connection", connection),
        (b"x-a", b"1"),
        (b"content-length", b"3"),
        (b"x-b", b"2"),
    ]
    for out in (req(headers), resp(headers)):
        names = [n for n, _ in out]
        assert b"connection" not in names
        for name in removed:
            assert name not in names
        for name in kept:
            assert name in names


def test_tokens_from_several_connection_headers_all_count() -> None:
    headers = [(b"connection", b"x-a"), (b"x-a", b"1"), (b"x-b", b"2"), (b"connection", b"x-b")]
    assert resp(headers) == [(b"via", b"1.1 gateproxy")]


# --- framing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "framing"),
    [
        ([(b"content-length", b"5")], [(b"content-length", b"5")]),
        ([(b"transfer-encoding", b"chunked")], []),  # the caller re-adds chunked framing
        # both: Content-Length must go (RFC 9112 6.3)
        ([(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], []),
        ([(b"transfer-encoding", b"chunked"), (b"connection", b"content-length, te")], []),
        # a Connection token cannot strip the real framing
        (
            [(b"connection", b"content-length"), (b"content-length", b"5")],
            [(b"content-length", b"5")],
        ),
        ([], []),
    ],
)
def test_request_framing(headers: H, framing: H) -> None:
    out = req(headers)
    assert [h for h in out if h[0] in (b"content-length", b"transfer-encoding")] == framing


@pytest.mark.parametrize(
    ("headers", "framing"),
    [
        ([(b"content-length", b"5")], [(b"content-length", b"5")]),
        ([(b"transfer-encoding", b"chunked")], []),  # h11's server side picks the framing
        ([(b"transfer-encoding", b"chunked"), (b"content-length", b"5")], []),
        (
            [(b"connection", b"content-length"), (b"content-length", b"5")],
            [(b"content-length", b"5")],
        ),
    ],
)
def test_response_framing(headers: H, framing: H) -> None:
    out = resp(headers)
    assert [h for h in out if h[0] in (b"content-length", b"transfer-encoding")] == framing


def test_chunked_request_goes_out_chunked_through_h11() -> None:
    server = h11.Connection(h11.SERVER)
    server.receive_data(
        b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n"
    )
    event = server.next_event()
    assert isinstance(event, h11.Request)
    out = req(list(event.headers))
    assert b"content-length" not in dict(out)
    client = h11.Connection(h11.CLIENT)
    framing = [(b"transfer-encoding", b"chunked")]  # what the shell appends for a chunked body
    client.send(h11.Request(method=b"POST", target=b"/u", headers=[*out, *framing]))
    assert client.send(h11.Data(data=b"abc")) == b"3\r\nabc\r\n"


# --- X-Forwarded-*, Via, Host --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "xff"),
    [
        ([], b"203.0.113.7"),
        ([(b"x-forwarded-for", b"10.0.0.1")], b"10.0.0.1, 203.0.113.7"),
        (
            [(b"x-forwarded-for", b"10.0.0.1, 10.0.0.2"), (b"x-forwarded-for", b" 10.0.0.3 ")],
            b"10.0.0.1, 10.0.0.2, 10.0.0.3, 203.0.113.7",
        ),
        ([(b"x-forwarded-for", b"")], b"203.0.113.7"),
        # a client can only remove its own claim, never the address we add
        ([(b"connection", b"x-forwarded-for"), (b"x-forwarded-for", b"1.2.3.4")], b"203.0.113.7"),
    ],
)
def test_x_forwarded_for(sent: H, xff: bytes) -> None:
    out = req(sent)
    assert [v for n, v in out if n == b"x-forwarded-for"] == [xff]


def test_forwarded_proto_and_host_replace_client_values() -> None:
    sent = [
        (b"host", b"App.Example:8443"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"evil.example"),
    ]
    out = prepare_request_headers(sent, client_ip="::1", scheme="http", host=b"App.Example:8443")
    assert out == [
        (b"host", b"App.Example:8443"),
        (b"x-forwarded-for", b"::1"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"App.Example:8443"),
        (b"via", b"1.1 gateproxy"),
    ]


def test_no_host_sends_no_forwarded_host() -> None:
    out = req([(b"x-forwarded-host", b"evil.example")], host=None)
    assert b"x-forwarded-host" not in [n for n, _ in out]


@pytest.mark.parametrize(
    ("sent", "via"),
    [
        ([], b"1.1 gateproxy"),
        ([(b"via", b"1.0 fred")], b"1.0 fred, 1.1 gateproxy"),
        ([(b"via", b"1.0 a"), (b"via", b"1.1 b")], b"1.0 a, 1.1 b, 1.1 gateproxy"),
    ],
)
def test_via_is_appended_both_directions(sent: H, via: bytes) -> None:
    assert [v for n, v in req(sent) if n == b"via"] == [via]
    assert [v for n, v in resp(sent) if n == b"via"] == [via]


def test_custom_via() -> None:
    out = resp([(b"via", b"1.0 a")], via=b"1.1 edge")
    assert out == [(b"via", b"1.0 a, 1.1 edge")]


def test_response_keeps_x_forwarded_headers_and_order() -> None:
    sent = [(b"x-forwarded-for", b"1"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]
    assert resp(sent) == [*sent, (b"via", b"1.1 gateproxy")]


# --- Date ----------------------------------------------------------------------------------------

NOW = b"Sun, 06 Nov 1994 08:49:37 GMT"


def test_a_response_without_date_gets_ours() -> None:
    out = prepare_response_headers([(b"content-length", b"0")], date=NOW)
    assert out == [(b"content-length", b"0"), (b"date", NOW), (b"via", b"1.1 gateproxy")]


def test_the_upstreams_date_is_kept() -> None:
    theirs = (b"date", b"Sat, 05 Nov 1994 08:49:37 GMT")
    out = prepare_response_headers([theirs, (b"x-a", b"1")], date=NOW)
    assert [h for h in out if h[0] == b"date"] == [theirs]


def test_a_date_named_by_connection_is_replaced_by_ours() -> None:
    sent = [(b"connection", b"date"), (b"date", b"Sat, 05 Nov 1994 08:49:37 GMT")]
    assert [h for h in prepare_response_headers(sent, date=NOW) if h[0] == b"date"] == [
        (b"date", NOW)
    ]


@pytest.mark.parametrize(
    ("epoch", "text"),
    [
        (784111777, NOW),  # RFC 9110's example
        (0, b"Thu, 01 Jan 1970 00:00:00 GMT"),
        (1709251199.9, b"Thu, 29 Feb 2024 23:59:59 GMT"),  # fractions are cut, never rounded up
    ],
)
def test_http_date_is_an_imf_fixdate(epoch: float, text: bytes) -> None:
    assert http_date(epoch) == text


# --- helpers -------------------------------------------------------------------------------------


def test_connection_tokens_and_has_token() -> None:
    headers = [(b"connection", b"Keep-Alive, Upgrade"), (b"connection", b" , close ")]
    assert connection_tokens(headers) == {b"keep-alive", b"upgrade", b"close"}
    assert has_token(headers, b"connection", b"CLOSE")
    assert not has_token(headers, b"connection", b"clo")
    assert not has_token(headers, b"upgrade", b"close")


@pytest.mark.parametrize(
    ("headers", "names"),
    [
        ([(b"cookie", b"a=1; b=2")], {b"a", b"b"}),
        ([(b"cookie", b"a=1;b=2"), (b"cookie", b" JSESSIONID=x=y ")], {b"a", b"b", b"JSESSIONID"}),
        ([(b"cookie", b"flag; =v; ;c=")], {b"c"}),
        ([(b"set-cookie", b"a=1")], set()),
        ([], set()),
    ],
)
def test_cookie_names_in_request(headers: H, names: set[bytes]) -> None:
    assert cookie_names_in_request(headers) == names


@pytest.mark.parametrize(
    ("headers", "names"),
    [
        ([(b"set-cookie", b"SID=abc; Path=/; HttpOnly")], [b"SID"]),
        ([(b"set-cookie", b"a=1"), (b"set-cookie", b" a =2; Max-Age=0")], [b"a", b"a"]),
        ([(b"set-cookie", b"novalue; Path=/"), (b"set-cookie", b"=x")], []),
        ([(b"set-cookie", b"b=; Expires=Thu, 01 Jan 1970 00:00:00 GMT")], [b"b"]),
        ([(b"cookie", b"a=1")], []),
    ],
)
def test_set_cookie_names(headers: H, names: list[bytes]) -> None:
    assert set_cookie_names(headers) == names


# --- hypothesis: the one-pass implementation equals a slow, obvious model ------------------------

_NAMES = st.sampled_from(
    [
        *sorted(HOP_BY_HOP),
        b"host",
        b"content-length",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"via",
        b"x-a",
        b"x-b",
        b"close",
        b"accept",
        b"cookie",
    ]
)
_VALUES = st.one_of(
    st.binary(max_size=8).map(lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E)),
    st.lists(_NAMES, max_size=3).map(b" , ".join),
    st.sampled_from([b"X-A", b"Content-Length, X-B", b"chunked", b"VIA"]),
)
_HEADERS = st.lists(st.tuples(_NAMES, _VALUES), max_size=12)


def _model(headers: H, *, request: bool) -> H:
    tokens = {
        t.strip().lower()
        for n, v in headers
        if n == b"connection"
        for t in v.split(b",")
        if t.strip()
    } - {b"content-length", b"host"}
    chunked = any(n == b"transfer-encoding" for n, _ in headers)
    drop = set(HOP_BY_HOP) | tokens | ({b"content-length"} if chunked else set())
    special = {b"via"} | (
        {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"} if request else set()
    )
    out = [(n, v) for n, v in headers if n not in drop and n not in special]
    survivors = [(n, v) for n, v in headers if n not in drop]

    def joined(name: bytes, last: bytes) -> bytes:
        return b", ".join([v.strip() for n, v in survivors if n == name and v.strip()] + [last])

    if request:
        out.append((b"x-forwarded-for", joined(b"x-forwarded-for", b"198.51.100.1")))
        out.append((b"x-forwarded-proto", b"https"))
        out.append((b"x-forwarded-host", b"h.example"))
    out.append((b"via", joined(b"via", b"1.1 gateproxy")))
    return out


@given(_HEADERS)
def test_request_rewrite_matches_model(headers: H) -> None:
    out = prepare_request_headers(headers, client_ip="198.51.100.1", host=b"h.example")
    assert out == _model(headers, request=True)


@given(_HEADERS)
def test_response_rewrite_matches_model(headers: H) -> None:
    assert resp(headers) == _model(headers, request=False)


@given(_HEADERS)
def test_rewrite_invariants(headers: H) -> None:
    out = prepare_request_headers(headers, client_ip="198.51.100.1", host=b"h.example")
    names = [n for n, _ in out]
    assert not (set(names) & HOP_BY_HOP)
    if any(n == b"transfer-encoding" for n, _ in headers):
        assert b"content-length" not in names
    for name in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via"):
        assert names.count(name) == 1
    assert dict(out)[b"x-forwarded-for"].endswith(b"198.51.100.1")
    assert [h for h in out if h[0] == b"host"] == [h for h in headers if h[0] == b"host"]


@given(st.lists(st.tuples(st.from_regex(rb"\A[A-Za-z0-9_.-]{1,8}\Z"), st.binary(max_size=6))))
def test_cookie_names_round_trip(pairs: list[tuple[bytes, bytes]]) -> None:
    values = [v.replace(b";", b"").replace(b"=", b"") for _, v in pairs]
    cookie = b"; ".join(n + b"=" + v for (n, _), v in zip(pairs, values, strict=True))
    assert cookie_names_in_request([(b"cookie", cookie)]) == {n for n, _ in pairs}
    set_cookies = [
        (b"set-cookie", n + b"=" + v + b"; Path=/") for (n, _), v in zip(pairs, values, strict=True)
    ]
    assert set_cookie_names(set_cookies) == [n for n, _ in pairs]
