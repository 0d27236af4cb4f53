"""Routing: host and path tables, first match wins."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateproxy.core.config import RouteConfig
from gateproxy.core.routing import Router, normalize_host, request_path


def route(upstream: str, *, path_prefix: str = "/", host: str | None = None) -> RouteConfig:
    return RouteConfig(upstream=upstream, path_prefix=path_prefix, host=host)


ROUTES = [
    route("api", path_prefix="/api", host="example.com"),
    route("wild", host="*.example.com"),
    route("exact", host="Example.COM"),
    route("idn", host="bücher.de"),
    route("static", path_prefix="/static/"),
    route("default"),
]


@pytest.mark.parametrize(
    ("host", "path", "upstream"),
    [
        (b"example.com", b"/api", "api"),
        (b"example.com", b"/api/v1?x=1", "api"),
        (b"example.com", b"/apix", "api"),  # plain string prefix, like nginx `location /api`
        (b"example.com", b"/ap", "exact"),
        (b"example.com", b"/x?/api", "exact"),  # the query is not part of the path
        (b"EXAMPLE.com:8443", b"/api", "api"),
        (b"example.com.", b"/api", "api"),
        (b"a.example.com", b"/api", "wild"),
        (b"a.b.example.com", b"/", "wild"),
        (b"A.Example.Com:80", b"/", "wild"),
        (b".example.com", b"/", "default"),
        (b"badexample.com", b"/", "default"),
        (b"example.com.evil", b"/", "default"),
        (b"xn--bcher-kva.de", b"/", "idn"),
        (b"other", b"/static/a.css", "static"),
        (b"other", b"/static", "default"),
        (None, b"/static/a.css", "static"),
        (None, b"/api", "default"),
        (b"[::1]:8443", b"/", "default"),
        (b"example.com", b"http://example.com/api/x?y", "api"),
        (b"example.com", b"https://other.example", "exact"),
    ],
)
def test_match_table(host: bytes | None, path: bytes, upstream: str) -> None:
    matched = Router(ROUTES).match(host=host, path=path)
    assert matched is not None
    assert matched.upstream == upstream


@pytest.mark.parametrize(
    ("host", "path"),
    [(None, b"/"), (b"example.com", b"/"), (b"a.example.com", b"/api"), (b"x", b"*")],
)
def test_no_match(host: bytes | None, path: bytes) -> None:
    router = Router([route("only", path_prefix="/only", host="x"), route("a", host="y")])
    assert router.match(host=host, path=path) is None


def test_first_match_wins_over_longer_prefix() -> None:
    router = Router([route("short", path_prefix="/a"), route("long", path_prefix="/a/b")])
    matched = router.match(host=b"h", path=b"/a/b/c")
    assert matched is not None and matched.upstream == "short"


def test_ipv6_host_route() -> None:
    router = Router([route("v6", host="[::1]")])
    matched = router.match(host=b"[::1]:8443", path=b"/")
    assert matched is not None and matched.upstream == "v6"


@pytest.mark.parametrize("bad", ["*", "*.", "a.*.com", "www.example.*", "**.example.com"])
def test_bad_wildcards_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="only allowed as"):
        Router([route("u", host=bad)])


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (b"Example.COM", b"example.com"),
        (b"example.com:443", b"example.com"),
        (b"example.com.", b"example.com"),
        (b"[::1]:8443", b"[::1]"),
        (b"[::1", b"[::1"),
        (b" a ", b"a"),
    ],
)
def test_normalize_host(raw: bytes, normal: bytes) -> None:
    assert normalize_host(raw) == normal


@pytest.mark.parametrize(
    ("target", "path"),
    [
        (b"/a?b", b"/a"),
        (b"/a", b"/a"),
        (b"http://h/a/b?c", b"/a/b"),
        (b"HTTPS://h", b"/"),
        (b"*", b"*"),
    ],
)
def test_request_path(target: bytes, path: bytes) -> None:
    assert request_path(target) == path


_LABEL = st.from_regex(rb"\A[a-z0-9]{1,6}\Z")


@given(st.lists(_LABEL, min_size=1, max_size=4), st.sampled_from([b"", b":1", b":65535"]))
def test_wildcard_matches_any_subdomain_never_the_apex(labels: list[bytes], port: bytes) -> None:
    router = Router([route("wild", host="*.example.com")])
    sub = b".".join(labels) + b".example.com" + port
    assert router.match(host=sub, path=b"/") is not None
    assert router.match(host=sub.upper(), path=b"/") is not None
    assert router.match(host=b"example.com" + port, path=b"/") is None
    assert router.match(host=b".".join(labels) + b"example.com", path=b"/") is None
