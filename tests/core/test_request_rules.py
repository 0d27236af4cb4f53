"""Request rules: tables of hostile heads, parsed by h11 exactly as the shell parses them."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateproxy.core.request_rules import chunked_body_problem, raw_head_problem, reject_reason


def parse(head: bytes) -> h11.Request | h11.RemoteProtocolError:
    """What the shell's h11 server connection makes of ``head``: the Request or h11's error."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        return exc
    assert isinstance(event, h11.Request), event
    return event


def rejected(head: bytes) -> tuple[int, str] | None:
    request = parse(head)
    assert isinstance(request, h11.Request), request
    return reject_reason(request)


def get(*lines: bytes, method: bytes = b"GET", target: bytes = b"/") -> bytes:
    return (
        b"%s %s HTTP/1.1\r\nHost: app.test\r\n" % (method, target)
        + b"".join(line + b"\r\n" for line in lines)
        + b"\r\n"
    )


# --- reject_reason: what h11 accepts but must not be forwarded ----------------------------------

REJECTED = [
    (
        "cl_and_te",
        get(b"Content-Length: 5", b"Transfer-Encoding: chunked", method=b"POST"),
        (400, "content_length_with_transfer_encoding"),
    ),
    (
        "te_and_cl",
        get(b"Transfer-Encoding: chunked", b"Content-Length: 0", method=b"POST"),
        (400, "content_length_with_transfer_encoding"),
    ),
    ("absolute_form", get(target=b"http://evil.test/admin"), (400, "absolute_form_target")),
    ("absolute_form_https", get(target=b"HTTPS://app.test/"), (400, "absolute_form_target")),
    ("asterisk_form", get(method=b"OPTIONS", target=b"*"), (400, "asterisk_form_target")),
    ("relative_target", get(target=b"admin"), (400, "invalid_target")),
    ("fragment", get(target=b"/public#/../admin"), (400, "fragment_in_target")),
    (
        "connect",
        b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n",
        (405, "connect_method"),
    ),
    ("trace", get(method=b"TRACE"), (405, "trace_method")),
    ("trace_with_body", get(b"Content-Length: 3", method=b"TRACE"), (400, "body_not_allowed")),
    ("get_with_body", get(b"Content-Length: 3"), (400, "body_not_allowed")),
    ("head_with_body", get(b"Content-Length: 3", method=b"HEAD"), (400, "body_not_allowed")),
    ("get_chunked", get(b"Transfer-Encoding: chunked"), (400, "body_not_allowed")),
    ("lowercase_method", get(method=b"get"), (400, "invalid_method")),
    ("http_2_0", b"GET / HTTP/2.0\r\nHost: app.test\r\n\r\n", (505, "http_version")),
    ("soh_in_value", get(b"X-A: a\x01b"), (400, "control_character")),
    ("esc_in_value", get(b"X-A: \x1b[31m"), (400, "control_character")),
    ("del_in_value", get(b"X-A: a\x7f"), (400, "control_character")),
    ("host_with_slash", b"GET / HTTP/1.1\r\nHost: app.test/x\r\n\r\n", (400, "invalid_host")),
    ("host_with_at", b"GET / HTTP/1.1\r\nHost: user@app.test\r\n\r\n", (400, "invalid_host")),
]

ACCEPTED = [
    ("plain_get", get()),
    ("get_content_length_0", get(b"Content-Length: 0")),
    ("post_length", get(b"Content-Length: 3", method=b"POST")),
    ("post_chunked", get(b"Transfer-Encoding: chunked", method=b"POST")),
    ("delete_with_body", get(b"Content-Length: 3", method=b"DELETE")),
    ("options_path", get(method=b"OPTIONS")),
    ("webdav_method", get(method=b"PROPFIND")),
    ("dash_method", get(method=b"M-SEARCH")),
    ("tab_and_obs_text", get(b"X-A: a\tb\xe9")),
    ("query", get(target=b"/a/b?x=http://y")),
    ("host_port", b"GET / HTTP/1.1\r\nHost: app.test:8443\r\n\r\n"),
    ("host_ipv6", b"GET / HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n"),
    ("http_1_0_no_host", b"GET / HTTP/1.0\r\n\r\n"),
]


@pytest.mark.parametrize(
    ("head", "expected"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED]
)
def test_rejected_requests(head: bytes, expected: tuple[int, str]) -> None:
    assert rejected(head) == expected


@pytest.mark.parametrize("head", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_accepted_requests(head: bytes) -> None:
    assert rejected(head) is None
    assert raw_head_problem(head) is None


# --- what h11 rejects itself (the rules need not): pinned so an h11 upgrade cannot slip by -------

H11_REJECTS = [
    ("differing_content_length", get(b"Content-Length: 5", b"Content-Length: 6"), 400),
    ("signed_content_length", get(b"Content-Length: +5"), 400),
    ("hex_content_length", get(b"Content-Length: 0x5"), 400),
    ("te_gzip", get(b"Transfer-Encoding: gzip", method=b"POST"), 501),
    ("te_twice", get(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), 501),
    ("nul_in_value", get(b"X-A: a\x00b"), 400),
    ("cr_in_value", get(b"X-A: a\rb"), 400),
    ("nul_in_name", get(b"X-\x00A: b"), 400),
    ("space_before_colon", get(b"X-A : b"), 400),
    ("space_in_name", get(b"X A: b"), 400),
    ("fold_at_start", b"GET / HTTP/1.1\r\n Host: app.test\r\n\r\n", 400),
    ("space_in_target", get(target=b"/a b"), 400),
    ("nul_in_target", get(target=b"/a\x00"), 400),
    ("no_host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two_hosts", get(b"Host: other.test"), 400),
    ("http_0_9", b"GET /\r\n\r\n", 400),
]


@pytest.mark.parametrize(
    ("head", "status"), [c[1:] for c in H11_REJECTS], ids=[c[0] for c in H11_REJECTS]
)
def test_h11_rejects_these_itself(head: bytes, status: int) -> None:
    error = parse(head)
    assert isinstance(error, h11.RemoteProtocolError)
    assert error.error_status_hint == status


# --- raw_head_problem: what h11 accepts and then hides ------------------------------------------

RAW = [
    ("bare_lf_everywhere", b"GET / HTTP/1.1\nHost: app.test\n\n", (400, "bare_lf")),
    ("bare_lf_one_line", b"GET / HTTP/1.1\r\nHost: app.test\nX-A: b\r\n\r\n", (400, "bare_lf")),
    ("bare_lf_terminator", b"GET / HTTP/1.1\r\nHost: app.test\r\n\n", (400, "bare_lf")),
    ("bare_cr", b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", (400, "bare_cr")),
    ("obs_fold_space", get(b"X-A: a", b" b"), (400, "obs_fold")),
    ("obs_fold_tab", get(b"X-A: a", b"\tb"), (400, "obs_fold")),
    (
        "duplicate_content_length",
        get(b"Content-Length: 5", b"content-length: 5", method=b"PUT"),
        (400, "duplicate_content_length"),
    ),
    (
        "content_length_list",
        get(b"Content-Length: 5, 5", method=b"PUT"),
        (400, "duplicate_content_length"),
    ),
    (
        "cl_and_te",
        get(b"Content-Length: 5", b"Transfer-Encoding: chunked"),
        (400, "content_length_with_transfer_encoding"),
    ),
    ("chunked_not_final", get(b"Transfer-Encoding: chunked, gzip"), (400, "chunked_not_final")),
    (
        "chunked_then_gzip_lines",
        get(b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"),
        (400, "chunked_not_final"),
    ),
    ("chunked_twice", get(b"Transfer-Encoding: chunked, chunked"), (400, "chunked_not_final")),
    ("gzip_only", get(b"Transfer-Encoding: gzip"), (501, "unsupported_transfer_coding")),
    (
        "gzip_then_chunked",
        get(b"Transfer-Encoding: gzip, chunked"),
        (501, "unsupported_transfer_coding"),
    ),
    ("nul", get(b"X-A: a\x00b"), (400, "control_character")),
    ("space_before_colon", get(b"Content-Length : 5"), (400, "space_before_colon")),
]


@pytest.mark.parametrize(("head", "expected"), [c[1:] for c in RAW], ids=[c[0] for c in RAW])
def test_raw_head_problems(head: bytes, expected: tuple[int, str]) -> None:
    assert raw_head_problem(head) == expected


def test_h11_accepts_what_only_the_raw_check_sees() -> None:
    """The reason raw_head_problem exists: h11 parses these, and the Request hides the problem."""
    for name in (
        "bare_lf_everywhere",
        "bare_lf_one_line",
        "obs_fold_space",
        "duplicate_content_length",
        "content_length_list",
    ):
        head = dict((c[0], c[1]) for c in RAW)[name]
        request = parse(head)
        assert isinstance(request, h11.Request), name
        assert reject_reason(request) is None, name


def test_raw_check_ignores_what_follows_the_head() -> None:
    body = b"line one\nline two\n\n\x00 Content-Length: 9\r\n"
    assert raw_head_problem(get(b"Content-Length: %d" % len(body), method=b"POST") + body) is None
    pipelined = get() + b"GET / HTTP/1.1\nHost: x\n\n"
    assert raw_head_problem(pipelined) is None


def test_raw_check_of_an_incomplete_head() -> None:
    assert raw_head_problem(b"GET / HTTP/1.1\r\nHost: app.test\r") is None
    assert raw_head_problem(b"GET / HTTP/1.1\r\nHost: app.test\r\n X") == (400, "obs_fold")
    assert raw_head_problem(b"GET / HTTP/1.1\nHost") == (400, "bare_lf")


# --- invariant: what gateproxy forwards (h11's canonical form) passes its own rules --------------

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda s: s.strip("-") and s not in ("content-length", "transfer-encoding", "host")
)
_value = st.binary(max_size=30).map(
    lambda b: bytes(c for c in b if c == 9 or 0x20 <= c < 0x7F or c >= 0x80).strip(b" \t")
)


@given(
    method=st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]),
    path=st.text(alphabet="abc/%?=&.-_~", max_size=20),
    headers=st.lists(st.tuples(_token, _value), max_size=8),
    body=st.sampled_from(["none", "length", "chunked"]),
)
def test_forwarded_form_passes_the_rules(
    method: bytes, path: str, headers: list[tuple[str, bytes]], body: str
) -> None:
    if method in (b"GET", b"HEAD") and body != "none":
        body = "none"
    framing = {
        "none": [],
        "length": [(b"content-length", b"3")],
        "chunked": [(b"transfer-encoding", b"chunked")],
    }[body]
    request = h11.Request(
        method=method,
        target=b"/" + path.encode(),
        headers=[(b"host", b"app.test"), *[(n.encode(), v) for n, v in headers], *framing],
    )
    assert reject_reason(request) is None
    client = h11.Connection(h11.CLIENT)
    wire = client.send(request)
    assert wire is not None
    assert raw_head_problem(wire) is None
    reparsed = parse(wire)
    assert isinstance(reparsed, h11.Request)
    assert list(reparsed.headers) == list(request.headers)


# --- chunked_body_problem: the body bytes that arrived with the head ----------------------------

CHUNKS_REFUSED = [
    ("not_hex", b"zz\r\nhello\r\n0\r\n\r\n"),
    ("negative", b"-5\r\nhello\r\n"),
    ("0x_prefix", b"0x5\r\nhello\r\n"),
    ("over_20_digits", b"f" * 21 + b"\r\n"),
    ("bare_lf_in_extension", b"5;ext=1\nhello\r\n0\r\n\r\n"),
    ("bare_lf_size_line", b"5\nhello\r\n"),
    ("data_longer_than_size", b"5\r\nhelloXX0\r\n\r\n"),
    ("lf_after_data", b"5\r\nhello\n0\r\n\r\n"),
    ("second_chunk_bad", b"5\r\nhello\r\nzz\r\n"),
    ("garbage_start", b"z"),
    ("unterminated_long_line", b"5;" + b"e" * 2000),
]
CHUNKS_ACCEPTED = [
    ("empty", b""),
    ("complete", b"5\r\nhello\r\n0\r\n\r\n"),
    ("extensions", b"5;a=b;c\r\nhello\r\n0;last\r\n\r\n"),
    ("leading_zeros", b"00005\r\nhello\r\n"),
    ("trailing_space", b"5 \r\nhello\r\n"),
    ("partial_line", b"5;a"),
    ("partial_data", b"5\r\nhel"),
    ("partial_footer", b"5\r\nhello\r"),
    ("trailers_left_to_h11", b"0\r\nX-T: 1\r\n\r\n"),
]


@pytest.mark.parametrize("data", [c[1] for c in CHUNKS_REFUSED], ids=[c[0] for c in CHUNKS_REFUSED])
def test_chunked_body_refused(data: bytes) -> None:
    assert chunked_body_problem(data) == (400, "invalid_chunk")


@pytest.mark.parametrize(
    "data", [c[1] for c in CHUNKS_ACCEPTED], ids=[c[0] for c in CHUNKS_ACCEPTED]
)
def test_chunked_body_accepted(data: bytes) -> None:
    assert chunked_body_problem(data) is None


def _h11_verdict(body: bytes) -> bool:
    """True if h11 reads ``body`` (a complete chunked body) without a protocol error."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    try:
        event = conn.next_event()
        while event is not h11.NEED_DATA and not isinstance(event, h11.EndOfMessage):
            event = conn.next_event()
    except h11.RemoteProtocolError:
        return False
    return True


_chunk_parts = st.lists(
    st.one_of(
        st.binary(max_size=6).map(lambda d: b"%x\r\n%s\r\n" % (len(d), d)),
        st.sampled_from([b"5;x=y\r\nhello\r\n", b"zz\r\n", b"3\nabc\r\n", b"2\r\nabc\r\n"]),
        st.binary(max_size=4),
    ),
    max_size=5,
)


@given(parts=_chunk_parts)
def test_chunked_body_problem_never_refuses_what_h11_reads(parts: list[bytes]) -> None:
    body = b"".join(parts) + b"0\r\n\r\n"
    if chunked_body_problem(body) is not None:
        assert not _h11_verdict(body)
