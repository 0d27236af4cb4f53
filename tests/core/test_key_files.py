"""Key files: nginx and HAProxy layouts, ordering rules, round trips, every error rule."""

from __future__ import annotations

import _ssl
import base64
import ctypes
import hashlib
import hmac
import ssl

import pytest
import trustme
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from gateproxy.core.key_files import (
    new_key_file,
    parse_haproxy_keys,
    parse_key_files,
    parse_nginx_key,
    parse_nginx_key_files,
    serialize_haproxy_keys,
    serialize_nginx_key,
)
from gateproxy.core.ticket_keys import TicketKey
from gateproxy.errors import KeyFileError

NAME = bytes(range(16))
H32, A32 = b"H" * 32, b"A" * 32
H16, A16 = b"h" * 16, b"a" * 16


def key(tag: int, *, size: int = 32, created: float = 7.0) -> TicketKey:
    return TicketKey(
        name=bytes([tag]) * 16,
        aes_key=bytes([tag ^ 0x55]) * size,
        hmac_key=bytes([tag ^ 0xAA]) * size,
        created=created,
    )


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


key_sizes = st.sampled_from([16, 32])


@st.composite
def ticket_keys(draw: st.DrawFn, size: int | None = None) -> TicketKey:
    n = draw(key_sizes) if size is None else size
    return TicketKey(
        name=draw(st.binary(min_size=16, max_size=16)),
        aes_key=draw(st.binary(min_size=n, max_size=n)),
        hmac_key=draw(st.binary(min_size=n, max_size=n)),
        created=7.0,
    )


@st.composite
def haproxy_key_lists(draw: st.DrawFn) -> list[TicketKey]:
    size = draw(key_sizes)
    keys = draw(st.lists(ticket_keys(size), min_size=3, max_size=8, unique_by=lambda k: k.name))
    return keys


# --- nginx --------------------------------------------------------------------------------------


def test_nginx_80_byte_layout_is_name_hmac_aes() -> None:
    k = parse_nginx_key(NAME + H32 + A32, path="k.key", now=1.0)
    assert (k.name, k.hmac_key, k.aes_key) == (NAME, H32, A32)
    assert (k.cipher, k.created) == ("aes-256-cbc", 1.0)


def test_nginx_48_byte_layout_is_name_aes_hmac() -> None:
    k = parse_nginx_key(NAME + A16 + H16, path="k.key", now=1.0)
    assert (k.name, k.aes_key, k.hmac_key) == (NAME, A16, H16)
    assert k.cipher == "aes-128-cbc"


@pytest.mark.parametrize("size", [0, 1, 47, 49, 79, 81, 96, 160])
def test_nginx_wrong_size(size: int) -> None:
    with pytest.raises(KeyFileError, match=f"exactly 48 or 80 bytes, got {size}$") as info:
        parse_nginx_key(b"\x01" * size, path="/etc/keys/a.key", now=0.0)
    assert info.value.path == "/etc/keys/a.key"
    assert str(info.value).startswith("/etc/keys/a.key: ")


def test_nginx_trailing_newline_is_a_size_error() -> None:
    with pytest.raises(KeyFileError, match="got 81"):
        parse_nginx_key(NAME + H32 + A32 + b"\n", path="k", now=0.0)


@settings(deadline=None)
@given(k=ticket_keys())
def test_nginx_round_trip(k: TicketKey) -> None:
    data = serialize_nginx_key(k)
    assert len(data) == (80 if len(k.aes_key) == 32 else 48)
    assert parse_nginx_key(data, path="k", now=k.created) == k


def test_nginx_several_files_first_encrypts_and_sizes_may_mix() -> None:
    files = [("a", serialize_nginx_key(key(1))), ("b", serialize_nginx_key(key(2, size=16)))]
    assert parse_nginx_key_files(files, now=7.0) == [key(1), key(2, size=16)]


def test_nginx_files_errors() -> None:
    with pytest.raises(KeyFileError, match="at least one key file"):
        parse_nginx_key_files([], now=0.0)
    with pytest.raises(KeyFileError, match="got 3") as info:
        parse_nginx_key_files([("good", serialize_nginx_key(key(1))), ("bad", b"abc")], now=0.0)
    assert info.value.path == "bad"
    dup = [("a", serialize_nginx_key(key(1))), ("b", serialize_nginx_key(key(1, size=16)))]
    with pytest.raises(KeyFileError, match=r"key name 01010101\.\.\. repeats .* in a") as info:
        parse_nginx_key_files(dup, now=0.0)
    assert info.value.path == "b"


def _ticket_from_openssl(key_file: bytes) -> bytes:
    """A TLS 1.2 session ticket minted by the system OpenSSL given ``key_file`` via ctrl 59."""
    ca = trustme.CA()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server)
    server.maximum_version = ssl.TLSVersion.TLSv1_2
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client)
    client.maximum_version = ssl.TLSVersion.TLSv1_2

    libssl = ctypes.CDLL(_ssl.__file__)  # dlsym through _ssl reaches the libssl it loaded
    ctrl = libssl.SSL_CTX_ctrl
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    ctrl.restype = ctypes.c_long
    ctx_ptr = ctypes.c_void_p.from_address(id(server) + object.__basicsize__).value
    buf = ctypes.create_string_buffer(key_file, len(key_file))
    assert ctrl(ctx_ptr, 59, len(key_file), buf) == 1  # SSL_CTRL_SET_TLSEXT_TICKET_KEYS

    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    s = server.wrap_bio(s_in, s_out, server_side=True)
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    done = {"s": False, "c": False}
    for _ in range(20):
        for name, obj in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values())
    session = c.session
    assert session is not None and session.has_ticket
    get0 = libssl.SSL_SESSION_get0_ticket
    get0.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    get0.restype = None
    sess_ptr = ctypes.c_void_p.from_address(id(session) + object.__basicsize__).value
    tick, length = ctypes.c_void_p(), ctypes.c_size_t()
    get0(sess_ptr, ctypes.byref(tick), ctypes.byref(length))
    assert tick.value is not None
    return ctypes.string_at(tick.value, length.value)


def test_nginx_80_byte_file_is_openssls_own_layout() -> None:
    """Give OpenSSL an nginx file through SSL_CTRL_SET_TLSEXT_TICKET_KEYS, then open its ticket
    with the fields our parser found: same name, valid HMAC, decryptable AES-256-CBC."""
    k = TicketKey(
        name=b"N" * 16, aes_key=bytes(range(32)), hmac_key=bytes(range(32, 64)), created=0
    )
    ticket = _ticket_from_openssl(serialize_nginx_key(k))
    name, iv, body, mac = ticket[:16], ticket[16:32], ticket[32:-32], ticket[-32:]
    assert name == k.name
    assert hmac.compare_digest(mac, hmac.new(k.hmac_key, ticket[:-32], hashlib.sha256).digest())
    decryptor = Cipher(algorithms.AES(k.aes_key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(body) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    plain = unpadder.update(padded) + unpadder.finalize()
    assert plain[:1] == b"\x30"  # a DER SEQUENCE: the encoded SSL_SESSION


# --- HAProxy ------------------------------------------------------------------------------------


def haproxy_line(k: TicketKey) -> str:
    return b64(k.name + k.aes_key + k.hmac_key)


def test_haproxy_80_byte_layout_is_name_aes_hmac() -> None:
    text = "\n".join(b64(bytes([i]) * 16 + A32 + H32) for i in (1, 2, 3)) + "\n"
    keys = parse_haproxy_keys(text, path="t", now=3.0)
    assert all((k.aes_key, k.hmac_key, k.created) == (A32, H32, 3.0) for k in keys)


def test_haproxy_48_byte_layout_is_name_aes_hmac() -> None:
    text = "\n".join(b64(bytes([i]) * 16 + A16 + H16) for i in (1, 2, 3))
    keys = parse_haproxy_keys(text, path="t", now=0.0)
    assert all((k.aes_key, k.hmac_key, k.cipher) == (A16, H16, "aes-128-cbc") for k in keys)


@pytest.mark.parametrize(
    ("lines", "order"),
    [
        # file lines (tags), resulting ring order (tags): penultimate, last, then upwards
        ([1, 2, 3], [2, 3, 1]),
        ([1, 2, 3, 4], [3, 4, 2, 1]),
        ([1, 2, 3, 4, 5, 6], [5, 6, 4, 3, 2, 1]),
    ],
)
def test_haproxy_penultimate_line_encrypts(lines: list[int], order: list[int]) -> None:
    text = "".join(haproxy_line(key(t)) + "\n" for t in lines)
    assert parse_haproxy_keys(text, path="t", now=7.0) == [key(t) for t in order]
    assert serialize_haproxy_keys([key(t) for t in order]) == text


def test_haproxy_skips_blank_lines_comments_and_whitespace() -> None:
    text = (
        "# ticket keys, rotated daily\n\n"
        f"  {haproxy_line(key(1))}  \r\n"
        "   # an indented comment\n"
        f"{haproxy_line(key(2))}\n\n"
        f"{haproxy_line(key(3))}"
    )
    assert parse_haproxy_keys(text, path="t", now=7.0) == [key(2), key(3), key(1)]


@settings(deadline=None)
@given(keys=haproxy_key_lists())
def test_haproxy_round_trip(keys: list[TicketKey]) -> None:
    text = serialize_haproxy_keys(keys)
    assert "#" not in text and "\n\n" not in text  # HAProxy reads every line as a key
    assert parse_haproxy_keys(text, path="t", now=7.0) == keys


def _lines(*parts: str) -> str:
    return "".join(p + "\n" for p in parts)


GOOD = [haproxy_line(key(t)) for t in (1, 2, 3)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected at least 3 keys .* got 0"),
        ("# only a comment\n\n", "got 0"),
        (_lines(*GOOD[:2]), "expected at least 3 keys .* got 2"),
        (_lines(GOOD[0], "not*base64!", GOOD[1]), "line 2: not valid base64 \\(11 characters\\)"),
        (_lines(GOOD[0], GOOD[1], "QUJ"), "line 3: not valid base64"),
        (_lines(*GOOD, b64(b"x" * 50)), "line 4: expected 48 or 80 bytes after base64 decoding, "),
        (_lines(b64(b"x" * 50)), "got 50$"),
        (
            _lines("#c", *GOOD, haproxy_line(key(4, size=16))),
            "line 5: expected 80 bytes like line 2",
        ),
        (_lines(haproxy_line(key(4, size=16)), *GOOD), "line 2: expected 48 bytes like line 1"),
        (_lines(*GOOD, GOOD[0]), "line 4: key name 01010101\\.\\.\\. repeats the name of line 1"),
    ],
)
def test_haproxy_errors(text: str, message: str) -> None:
    with pytest.raises(KeyFileError, match=message) as info:
        parse_haproxy_keys(text, path="/etc/haproxy/tickets.key", now=0.0)
    assert info.value.path == "/etc/haproxy/tickets.key"


def test_haproxy_error_messages_never_quote_key_material() -> None:
    secret = b64(b"S" * 80)[:-2] + "!!"
    with pytest.raises(KeyFileError) as info:
        parse_haproxy_keys(_lines(*GOOD, secret), path="t", now=0.0)
    assert secret[:20] not in str(info.value)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([key(1), key(2)], "at least 3 keys, got 2"),
        ([key(1), key(2), key(3, size=16)], "same size"),
    ],
)
def test_haproxy_serialize_refuses(keys: list[TicketKey], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        serialize_haproxy_keys(keys)


# --- dispatch and new files ---------------------------------------------------------------------


def test_parse_key_files_dispatch() -> None:
    nginx = [("a", serialize_nginx_key(key(1))), ("b", serialize_nginx_key(key(2)))]
    assert parse_key_files(nginx, fmt="nginx", now=7.0) == [key(1), key(2)]
    text = serialize_haproxy_keys([key(1), key(2), key(3)]).encode()
    assert parse_key_files([("h", text)], fmt="haproxy", now=7.0) == [key(1), key(2), key(3)]


def test_each_file_gives_its_keys_its_own_creation_time() -> None:
    nginx = [("a", serialize_nginx_key(key(1))), ("b", serialize_nginx_key(key(2)))]
    parsed = parse_key_files(nginx, fmt="nginx", now=9.0, created=[3.0, -100.0])
    assert parsed == [key(1, created=3.0), key(2, created=-100.0)]
    text = serialize_haproxy_keys([key(1), key(2), key(3)]).encode()
    parsed = parse_key_files([("h", text)], fmt="haproxy", now=9.0, created=[-5.0])
    assert parsed == [key(1, created=-5.0), key(2, created=-5.0), key(3, created=-5.0)]
    with pytest.raises(ValueError, match=r"one time per file \(2\), got 1"):
        parse_key_files(nginx, fmt="nginx", now=9.0, created=[3.0])


@pytest.mark.parametrize(
    ("files", "fmt", "error", "message"),
    [
        ([("h", b"")], "pem", ValueError, "unknown key file format 'pem'"),
        ([], "haproxy", KeyFileError, "exactly one key file, got 0"),
        ([("h1", b""), ("h2", b"")], "haproxy", KeyFileError, "h2: .*exactly one key file, got 2"),
        ([("h", b"abc\xffdef")], "haproxy", KeyFileError, "h: .*ASCII text.*byte 3"),
    ],
)
def test_parse_key_files_errors(
    files: list[tuple[str, bytes]], fmt: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        parse_key_files(files, fmt=fmt, now=0.0)


def counter_random(size: int, _state: list[int] = [0]) -> bytes:  # noqa: B006 - a test counter
    _state[0] += 1
    return _state[0].to_bytes(8, "big").rjust(size, b"\x5a")[:size]


def test_new_key_file_nginx() -> None:
    data = new_key_file(fmt="nginx", random_bytes=counter_random, now=9.0)
    assert len(data) == 80
    k = parse_nginx_key(data, path="new", now=9.0)
    assert k.cipher == "aes-256-cbc"


def test_new_key_file_haproxy() -> None:
    data = new_key_file(fmt="haproxy", random_bytes=counter_random, now=9.0)
    lines = data.decode("ascii").splitlines()
    assert len(lines) == 3
    assert all(len(base64.b64decode(line)) == 80 for line in lines)
    keys = parse_haproxy_keys(data.decode(), path="new", now=9.0)
    assert len({k.name for k in keys}) == 3


def test_new_key_file_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown key file format 'json'"):
        new_key_file(fmt="json", random_bytes=counter_random, now=0.0)
