"""The bounded ClientHello reader: real hellos from stdlib ssl, cut and damaged ones, any bytes."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateproxy.core.client_hello import (
    MAX_HELLO,
    NEED_MORE,
    ClientHello,
    NotAHello,
    read_client_hello,
)


def client_hello(
    *, max_version: ssl.TLSVersion, no_ticket: bool, session: ssl.SSLSession | None = None
) -> bytes:
    """The first flight of a real stdlib client (its ClientHello records)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.maximum_version = max_version
    if no_ticket:
        ctx.options |= ssl.OP_NO_TICKET
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost", session=session)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_tls12_only_hello_without_tickets() -> None:
    hello = read_client_hello(client_hello(max_version=ssl.TLSVersion.TLSv1_2, no_ticket=True))
    assert hello == ClientHello(
        legacy_version=0x0303, session_id=b"", offers_tls13=False, offers_ticket=False
    )


def test_tls13_hello_offers_tls13_with_a_random_legacy_id() -> None:
    hello = read_client_hello(client_hello(max_version=ssl.TLSVersion.TLSv1_3, no_ticket=False))
    assert isinstance(hello, ClientHello)
    assert hello.offers_tls13
    assert len(hello.session_id) == 32  # middlebox compatibility echo
    assert not hello.offers_ticket  # an empty session_ticket extension offers none


def _record(body: bytes) -> bytes:
    return b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body


def _hello(session_id: bytes, extensions: bytes) -> bytes:
    body = (
        b"\x03\x03"
        + b"r" * 32
        + bytes([len(session_id)])
        + session_id
        + b"\x00\x02\xc0\x2f"
        + b"\x01\x00"
        + len(extensions).to_bytes(2, "big")
        + extensions
    )
    return b"\x01" + len(body).to_bytes(3, "big") + body


def _ext(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def test_session_id_and_a_non_empty_ticket() -> None:
    hello = _hello(b"i" * 32, _ext(35, b"ticket-bytes") + _ext(43, b"\x02\x03\x03"))
    assert read_client_hello(_record(hello)) == ClientHello(
        legacy_version=0x0303, session_id=b"i" * 32, offers_tls13=False, offers_ticket=True
    )


def test_tls13_pre_shared_key_identities() -> None:
    identities = b"".join(
        len(i).to_bytes(2, "big") + i + b"\x00\x00\x00\x07" for i in (b"p" * 32, b"q" * 20)
    )
    psk = len(identities).to_bytes(2, "big") + identities + b"\x00\x21" + b"\x20" + b"b" * 32
    hello = _hello(b"l" * 32, _ext(43, b"\x02\x03\x04") + _ext(41, psk))
    parsed = read_client_hello(_record(hello))
    assert isinstance(parsed, ClientHello)
    assert parsed.offers_tls13 and parsed.psk_identities == (b"p" * 32, b"q" * 20)
    cut = _hello(b"", _ext(41, b"\x00\x30\x00\x20" + b"p" * 10))
    assert read_client_hello(_record(cut)) == NotAHello("a length points past the end of the hello")


def test_hello_split_over_two_records_and_partial_reads() -> None:
    hello = _hello(b"s" * 32, _ext(43, b"\x04\x03\x04\x03\x03"))
    wire = _record(hello[:50]) + _record(hello[50:])
    for cut in (0, 1, 5, 30, 56, len(wire) - 1):
        assert read_client_hello(wire[:cut]) is NEED_MORE, cut
    parsed = read_client_hello(wire)
    assert isinstance(parsed, ClientHello)
    assert parsed.session_id == b"s" * 32
    assert parsed.offers_tls13


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "not a TLS handshake record"),
        (b"\x16\x03\x01\x00\x00", "bad record length"),
        (_record(b"\x02\x00\x00\x00"), "first handshake message is not a ClientHello"),
        (_record(_hello(b"x" * 33, b"")), "session id longer than 32 bytes"),
        (_record(b"\x01\x00\x00\x03\x03\x03\x00"), "a length points past the end of the hello"),
    ],
)
def test_not_a_hello(wire: bytes, reason: str) -> None:
    assert read_client_hello(wire) == NotAHello(reason)


def test_an_endless_hello_gives_up_at_the_limit() -> None:
    record = b"\x16\x03\x01\x40\x00" + b"\x01\xff\xff\xff" + b"\x00" * (0x4000 - 4)
    assert read_client_hello(record + record) == NotAHello("longer than the hello limit")
    assert read_client_hello(b"\x16\x03\x01\x00\x01\x01" * (MAX_HELLO // 6 + 1)) == NotAHello(
        "longer than the hello limit"
    )


def test_many_small_records_of_a_long_hello_stop_at_the_limit() -> None:
    """A hello announced within the limit, sent one byte per record: the records' headers push
    the wire past the limit before the hello completes: no endless NEED_MORE."""
    hello = _hello(b"s" * 32, _ext(21, b"\x00" * 4000))
    wire = b"".join(_record(hello[i : i + 1]) for i in range(len(hello)))
    assert read_client_hello(wire) == NotAHello("longer than the hello limit")
    assert read_client_hello(wire + b"\x00" * 10_000_000) == NotAHello(
        "longer than the hello limit"
    )


@given(st.binary(max_size=4096))
def test_any_bytes_never_raise(data: bytes) -> None:
    result = read_client_hello(data)
    assert result is NEED_MORE or isinstance(result, ClientHello | NotAHello)


@given(st.binary(max_size=600), st.integers(min_value=0, max_value=600))
def test_any_hello_body_in_records_never_raises(body: bytes, cut: int) -> None:
    wire = _record(b"\x01" + len(body).to_bytes(3, "big") + body)
    result = read_client_hello(wire[: cut + 5])
    assert result is NEED_MORE or isinstance(result, ClientHello | NotAHello)
    if isinstance(result, ClientHello):
        assert len(result.session_id) <= 32
