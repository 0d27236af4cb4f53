"""core.forwarding: framing re-derived for the upstream, headers assembled in order."""

from __future__ import annotations

import pytest

from gateproxy.core.forwarding import header, request_framing, upstream_headers


@pytest.mark.parametrize(
    ("fields", "framing", "has_body"),
    [
        ([(b"host", b"a")], [], False),
        ([(b"content-length", b"0")], [(b"content-length", b"0")], False),
        ([(b"content-length", b"007")], [(b"content-length", b"7")], True),
        (
            [(b"content-length", b"3"), (b"transfer-encoding", b"chunked")],
            [(b"transfer-encoding", b"chunked")],
            True,
        ),
    ],
)
def test_request_framing(
    fields: list[tuple[bytes, bytes]], framing: list[tuple[bytes, bytes]], has_body: bool
) -> None:
    assert request_framing(fields) == (framing, has_body)


def test_upstream_headers_drop_expect_and_client_framing_and_add_ours() -> None:
    fields = [
        (b"host", b"app.test"),
        (b"expect", b"100-continue"),
        (b"content-length", b"5"),
        (b"connection", b"x-secret"),
        (b"x-secret", b"1"),
    ]
    headers = upstream_headers(
        fields,
        client_ip="10.0.0.1",
        scheme="https",
        host=b"app.test",
        framing=[(b"content-length", b"5")],
        default_host=b"app",
    )
    names = [name for name, _ in headers]
    assert names.count(b"content-length") == 1
    assert b"expect" not in names and b"x-secret" not in names
    assert header(headers, b"x-forwarded-for") == b"10.0.0.1"
    assert header(headers, b"host") == b"app.test"


def test_a_request_without_host_gets_the_upstream_name() -> None:
    headers = upstream_headers(
        [], client_ip="10.0.0.1", scheme="http", host=None, framing=[], default_host=b"app"
    )
    assert header(headers, b"host") == b"app"
    assert header(headers, b"x-forwarded-host") is None
