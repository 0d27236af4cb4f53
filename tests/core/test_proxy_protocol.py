"""The PROXY protocol header parser: v1 and v2, byte by byte, bounds, and fuzzing."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateproxy.core.proxy_protocol import (
    NEED_MORE,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    Fed,
    NeedMore,
    ProxyHeader,
    ProxyHeaderInvalid,
    ProxyHeaderParser,
    ProxyProtocolError,
    looks_like_header,
)

AFTER = b"\x16\x03\x01\x02\x00"  # what follows the header (a ClientHello's start): never taken


def v2(
    *,
    command: int = 0x1,
    family: int = 0x1,
    transport: int = 0x1,
    addresses: bytes | None = None,
    tlvs: bytes = b"",
    version: int = 2,
) -> bytes:
    """A v2 header built by hand from the spec (haproxy doc/proxy-protocol.txt, 2.2)."""
    if addresses is None:
        addresses = {
            0x0: b"",
            0x1: struct.pack("!4s4sHH", bytes([203, 0, 113, 7]), bytes([10, 0, 0, 1]), 51000, 443),
            0x2: struct.pack(
                "!16s16sHH",
                ipaddress.IPv6Address("2001:db8::7").packed,
                ipaddress.IPv6Address("2001:db8::1").packed,
                51000,
                443,
            ),
            0x3: b"/tmp/a".ljust(108, b"\0") + b"/tmp/b".ljust(108, b"\0"),
        }[family]
    body = addresses + tlvs
    return (
        V2_SIGNATURE
        + bytes([version << 4 | command, family << 4 | transport])
        + struct.pack("!H", len(body))
        + body
    )


def parse_all(data: bytes) -> Fed:
    return ProxyHeaderParser().feed(data)


def parse_bytewise(data: bytes) -> tuple[int, ProxyHeader | ProxyHeaderInvalid | NeedMore]:
    """Feed one byte at a time, as a slow balancer would; (bytes taken, outcome)."""
    parser = ProxyHeaderParser()
    taken = 0
    outcome: ProxyHeader | ProxyHeaderInvalid | NeedMore = NEED_MORE
    for i in range(len(data)):
        fed = parser.feed(data[i : i + 1])
        taken += fed.consumed
        outcome = fed.outcome
        if not isinstance(outcome, NeedMore):
            break
    return taken, outcome


V1_GOOD = [
    (
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n",
        ProxyHeader(1, "proxy", ("203.0.113.7", 51000), ("10.0.0.1", 443), 43),
    ),
    (
        b"PROXY TCP6 2001:db8::7 2001:db8::1 0 65535\r\n",
        ProxyHeader(1, "proxy", ("2001:db8::7", 0), ("2001:db8::1", 65535), 44),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, "local", None, None, 15)),
    (
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        ProxyHeader(1, "local", None, None, 59),
    ),
]


@pytest.mark.parametrize(("wire", "expected"), V1_GOOD)
def test_v1_headers_parse_whole_and_byte_by_byte(wire: bytes, expected: ProxyHeader) -> None:
    fed = parse_all(wire + AFTER)
    assert fed == Fed(len(wire), expected)
    assert parse_bytewise(wire + AFTER) == (len(wire), expected)


def test_v1_longest_headers_fit_107_bytes() -> None:
    full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    tcp6 = f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    fed = parse_all(tcp6 + AFTER)
    assert fed.consumed == len(tcp6) == 104
    assert isinstance(fed.outcome, ProxyHeader)
    assert fed.outcome.source == (full, 65535)
    unknown = f"PROXY UNKNOWN {full} {full} 65535 65535\r\n".encode()  # the spec's worst case
    assert len(unknown) == V1_MAX_LENGTH
    expected = ProxyHeader(1, "local", None, None, V1_MAX_LENGTH)
    assert parse_all(unknown + AFTER) == Fed(V1_MAX_LENGTH, expected)


V1_BAD = [
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\n", "does not end with CRLF"),
    (b"PROXY TCP5 203.0.113.7 10.0.0.1 51000 443\r\n", "'TCP5' is not TCP4, TCP6, UNKNOWN"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 51000\r\n", "needs 5 fields"),
    (b"PROXY TCP4  203.0.113.7 10.0.0.1 51000 443\r\n", "needs 5 fields"),
    (b"PROXY TCP4 2001:db8::7 10.0.0.1 51000 443\r\n", "'2001:db8::7' is not an IPv4 address"),
    (b"PROXY TCP6 203.0.113.7 2001:db8::1 1 2\r\n", "'203.0.113.7' is not an IPv6 address"),
    (b"PROXY TCP6 fe80::1%eth0 2001:db8::1 1 2\r\n", "without a scope"),
    (b"PROXY TCP4 203.0.113.007 10.0.0.1 1 2\r\n", "is not an IPv4 address"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 443\r\n", "port '65536' is above 65535"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 0443 443\r\n", "without leading zeros"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 -1 443\r\n", "port '-1'"),
    (b"PROXY TCP4 203.0.113.\xff 10.0.0.1 1 2\r\n", "is not an IPv4 address"),
    (b"PROXY \r\n", "'' is not TCP4"),
    (b"PROXz TCP4\r\n", "not a PROXY protocol header"),
    (b"PROPFIND / HTTP/1.1\r\n", "not a PROXY protocol header"),
    (b"GET / HTTP/1.1\r\n\r\n", "not a PROXY protocol header"),
    (b"\x16\x03\x01\x02\x00\x01", "not a PROXY protocol header"),
]


@pytest.mark.parametrize(("wire", "reason"), V1_BAD)
def test_v1_bad_headers_name_the_rule(wire: bytes, reason: str) -> None:
    for _taken, outcome in (
        (parse_all(wire).consumed, parse_all(wire).outcome),
        parse_bytewise(wire),
    ):
        assert isinstance(outcome, ProxyHeaderInvalid), wire
        assert reason in outcome.reason


def test_v1_without_crlf_within_107_bytes_is_refused_at_107() -> None:
    wire = b"PROXY TCP4 " + b"1" * 200
    fed = parse_all(wire)
    assert fed.consumed == V1_MAX_LENGTH  # never more than the format allows
    assert isinstance(fed.outcome, ProxyHeaderInvalid)
    assert "no CRLF within 107 bytes" in fed.outcome.reason
    assert parse_bytewise(wire)[0] == V1_MAX_LENGTH


def test_v1_incomplete_needs_more_and_says_how_much_at_most() -> None:
    parser = ProxyHeaderParser()
    assert parser.wanted == 16  # before the first byte: a v2 fixed part at most
    fed = parser.feed(b"PROXY TCP4 1.2.3.4")
    assert fed == Fed(18, NEED_MORE)
    assert parser.wanted == V1_MAX_LENGTH - 18


V2_GOOD = [
    (v2(), ProxyHeader(2, "proxy", ("203.0.113.7", 51000), ("10.0.0.1", 443), 28)),
    (
        v2(family=0x2),
        ProxyHeader(2, "proxy", ("2001:db8::7", 51000), ("2001:db8::1", 443), 52),
    ),
    (v2(command=0x0, family=0x0, transport=0x0), ProxyHeader(2, "local", None, None, 16)),
    # LOCAL with addresses anyway (HAProxy's health checks): the addresses are ignored
    (v2(command=0x0), ProxyHeader(2, "local", None, None, 28)),
    (v2(family=0x0, transport=0x0), ProxyHeader(2, "proxy", None, None, 16)),
    (v2(family=0x3), ProxyHeader(2, "proxy", None, None, 232)),
    (
        v2(tlvs=b"\x01\x00\x02h2" + b"\x04\x00\x00" + b"\x20\x00\x05\x01\x00\x00\x00\x00"),
        ProxyHeader(2, "proxy", ("203.0.113.7", 51000), ("10.0.0.1", 443), 28 + 16),
    ),
    (  # the largest length the field can state
        v2(tlvs=b"\xee" * (65535 - 12)),
        ProxyHeader(2, "proxy", ("203.0.113.7", 51000), ("10.0.0.1", 443), 16 + 65535),
    ),
]


@pytest.mark.parametrize(("wire", "expected"), V2_GOOD)
def test_v2_headers_parse_whole_and_byte_by_byte(wire: bytes, expected: ProxyHeader) -> None:
    assert parse_all(wire + AFTER) == Fed(len(wire), expected)
    if len(wire) < 1000:
        assert parse_bytewise(wire + AFTER) == (len(wire), expected)


def test_v2_consumes_only_what_the_length_says_in_pieces() -> None:
    wire = v2(family=0x2, tlvs=b"\x03\x00\x04abcd")
    parser = ProxyHeaderParser()
    first = parser.feed(wire[:5])
    assert first == Fed(5, NEED_MORE) and parser.wanted == 11
    second = parser.feed(wire[5:20])
    assert second == Fed(15, NEED_MORE) and parser.wanted == len(wire) - 20
    third = parser.feed(wire[20:] + AFTER)
    assert third.consumed == len(wire) - 20
    assert isinstance(third.outcome, ProxyHeader)


V2_BAD = [
    (v2(version=1), "version 1 (expected 2)"),
    (v2(command=0x2), "command 0x2"),
    (v2(family=0x4, addresses=b""), "family/transport 0x41"),
    (v2(transport=0x3), "family/transport 0x13"),
    (v2(addresses=b"\x01" * 11), "length 11 is shorter than its addresses (12 bytes)"),
    (v2(family=0x2, addresses=b"\x01" * 12), "length 12 is shorter than its addresses (36"),
    (V2_SIGNATURE[:6] + b"X" * 10, "not a PROXY protocol header"),
]


@pytest.mark.parametrize(("wire", "reason"), V2_BAD)
def test_v2_bad_headers_name_the_rule(wire: bytes, reason: str) -> None:
    for outcome in (parse_all(wire).outcome, parse_bytewise(wire)[1]):
        assert isinstance(outcome, ProxyHeaderInvalid)
        assert reason in outcome.reason


def test_v2_bad_fixed_part_is_refused_before_the_body_arrives() -> None:
    fed = ProxyHeaderParser().feed(v2(version=3)[:16])
    assert isinstance(fed.outcome, ProxyHeaderInvalid) and fed.consumed == 16


def test_feeding_a_finished_parser_is_our_error() -> None:
    parser = ProxyHeaderParser()
    parser.feed(b"PROXY UNKNOWN\r\n")
    with pytest.raises(ProxyProtocolError, match="after the PROXY header"):
        parser.feed(b"x")


def test_empty_feed_needs_more() -> None:
    assert ProxyHeaderParser().feed(b"") == Fed(0, NEED_MORE)


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (b"PROXY TCP4", True),
        (V2_SIGNATURE, True),
        (b"PROXY", False),  # too short to tell from PROPFIND
        (b"PROPFIND /", False),
        (b"\x16\x03\x01", False),
        (b"", False),
    ],
)
def test_looks_like_header(first: bytes, expected: bool) -> None:
    assert looks_like_header(first) is expected


def _run(chunks: list[bytes]) -> None:
    parser = ProxyHeaderParser()
    total = 0
    for chunk in chunks:
        wanted = parser.wanted
        fed = parser.feed(chunk)
        assert 0 <= fed.consumed <= len(chunk)
        if len(chunk) <= wanted:  # what the shell feeds (it peeks ``wanted``): all of it, or
            assert fed.consumed <= wanted  # up to the header's end (checked below)
        total += fed.consumed
        if isinstance(fed.outcome, ProxyHeader):
            assert fed.outcome.length == total
            assert total <= 16 + 65535
            return
        if isinstance(fed.outcome, ProxyHeaderInvalid):
            assert fed.outcome.reason
            return
        assert fed.consumed == len(chunk)  # incomplete: everything seen belongs to the header
        assert parser.wanted >= 1


_PREFIXES = st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", V2_SIGNATURE])


@settings(max_examples=400, deadline=None)
@given(prefix=_PREFIXES, chunks=st.lists(st.binary(max_size=40), max_size=8))
def test_fuzz_never_raises_and_never_takes_past_the_header(
    prefix: bytes, chunks: list[bytes]
) -> None:
    _run([prefix, *chunks])


@settings(max_examples=200, deadline=None)
@given(
    ver_cmd=st.integers(0, 255),
    fam=st.integers(0, 255),
    body=st.binary(max_size=300),
    cut=st.integers(1, 40),
)
def test_fuzz_v2_fields_never_raise(ver_cmd: int, fam: int, body: bytes, cut: int) -> None:
    wire = V2_SIGNATURE + bytes([ver_cmd, fam]) + struct.pack("!H", len(body)) + body
    _run([wire[i : i + cut] for i in range(0, len(wire), cut)] + [AFTER])


@settings(max_examples=200, deadline=None)
@given(
    ver_cmd=st.sampled_from([0x20, 0x21]),
    fam=st.sampled_from([0x00, 0x11, 0x21, 0x31]),
    body=st.binary(max_size=300),
)
def test_peeking_wanted_bytes_never_takes_what_follows_the_header(
    ver_cmd: int, fam: int, body: bytes
) -> None:
    """The shell's way: peek ``wanted`` bytes, feed them, consume what was taken. Before a v2
    header's length is known ``wanted`` is only the rest of its fixed part, so no peek reaches
    past the header; the bytes after it (a ClientHello) are never taken."""
    header = V2_SIGNATURE + bytes([ver_cmd, fam]) + struct.pack("!H", len(body)) + body
    wire, parser, pos = header + AFTER, ProxyHeaderParser(), 0
    while True:
        wanted = parser.wanted
        fed = parser.feed(wire[pos : pos + wanted])
        assert fed.consumed <= wanted
        pos += fed.consumed
        if not isinstance(fed.outcome, NeedMore):
            break
    assert pos <= len(header)
    if isinstance(fed.outcome, ProxyHeader):
        assert pos == fed.outcome.length == len(header)


@settings(max_examples=200, deadline=None)
@given(
    words=st.lists(
        st.one_of(
            st.sampled_from(["TCP4", "TCP6", "UNKNOWN", "1.2.3.4", "::1", "80", "65536", ""]),
            st.text(alphabet="0123456789abcdef:.%", max_size=12),
        ),
        max_size=7,
    ),
    end=st.sampled_from(["\r\n", "\n", "\r", ""]),
)
def test_fuzz_v1_words_never_raise(words: list[str], end: str) -> None:
    _run([("PROXY " + " ".join(words) + end).encode(), AFTER])
