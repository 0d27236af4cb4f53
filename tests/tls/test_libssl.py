"""The ctypes layer: library discovery, symbols, pointer extraction and its validation."""

from __future__ import annotations

import ssl

import pytest
import trustme

from gateproxy.errors import TLSEngineError
from gateproxy.tls import libssl as L
from tests.tls.tlsutil import client_context, handshake, make_server, server_context

MAPS = """\
7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f01-7f02 r--p 00001000 08:01 1 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f02-7f03 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f03-7f04 r-xp 00000000 08:01 3 /opt/other/libssl.so.1.1
7f04-7f05 rw-p 00000000 00:00 0
"""


def test_mapped_libraries_lists_distinct_paths() -> None:
    found = L.mapped_libraries(MAPS)
    assert found == {
        "ssl": ["/opt/other/libssl.so.1.1", "/usr/lib/x86_64-linux-gnu/libssl.so.3"],
        "crypto": ["/usr/lib/x86_64-linux-gnu/libcrypto.so.3"],
    }


def test_this_process_maps_exactly_one_of_each_and_the_version_matches() -> None:
    paths = L.find_library_paths()
    assert set(paths) == {"ssl", "crypto"}
    lib = L.get_libssl()
    assert lib.version == ssl.OPENSSL_VERSION_NUMBER >= L.MIN_OPENSSL


def test_no_mapped_library_is_a_libraries_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(L.LIB_PREFIXES, "ssl", "libnot-there.so")
    with pytest.raises(TLSEngineError) as info:
        L.load_libssl()
    assert info.value.step == "libraries"
    assert "libnot-there.so" in info.value.reason


def test_missing_symbol_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    kind, _name, restype, argtypes = L.SYMBOLS["ctx_ctrl"]
    monkeypatch.setitem(L.SYMBOLS, "ctx_ctrl", (kind, "SSL_CTX_ctrl_gone", restype, argtypes))
    with pytest.raises(TLSEngineError) as info:
        L.load_libssl()
    assert info.value.step == "symbols"
    assert "SSL_CTX_ctrl_gone" in info.value.reason


def test_version_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssl, "OPENSSL_VERSION_NUMBER", 0x30100010)
    with pytest.raises(TLSEngineError) as info:
        L.load_libssl()
    assert info.value.step == "version"


def test_ctx_pointer_follows_the_context() -> None:
    lib = L.get_libssl()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ptr = L.validate_ctx_pointer(lib, ctx)
    assert ptr == L.ctx_pointer(ctx)
    ctx.num_tickets = 5
    assert lib.ctx_get_num_tickets(ptr) == 5
    assert lib.ctx_ctrl(ptr, L.SSL_CTRL_GET_SESS_CACHE_SIZE) == 20480  # OpenSSL default
    options = ctx.options
    L.validate_ctx_pointer(lib, ctx)
    assert ctx.options == options  # validation restores what it flips


@pytest.mark.parametrize("offset", [8, 24, 32])
def test_wrong_ctx_offset_is_detected(monkeypatch: pytest.MonkeyPatch, offset: int) -> None:
    monkeypatch.setattr(L, "CTX_OFFSET", offset)
    with pytest.raises(TLSEngineError) as info:
        L.validate_ctx_pointer(L.get_libssl(), ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    assert info.value.step == "pointers"


def test_ssl_pointer_belongs_to_its_context(ca: trustme.CA) -> None:
    lib = L.get_libssl()
    ctx = server_context(ca)
    obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    ptr = L.ssl_pointer(obj)
    assert lib.get_ssl_ctx(ptr) == L.ctx_pointer(ctx)


def test_ssl_pointers_after_the_layout_was_checked_still_belong_to_their_context(
    ca: trustme.CA,
) -> None:
    lib = L.get_libssl()
    contexts = [server_context(ca), server_context(ca)]
    objects = [c.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True) for c in contexts]
    L.ssl_pointer(objects[0])  # the full check, once per process and layout
    pointers = [L.ssl_pointer(o) for o in objects]
    assert len(set(pointers)) == 2
    assert [lib.get_ssl_ctx(p) for p in pointers] == [L.ctx_pointer(c) for c in contexts]


@pytest.mark.parametrize("attr, offset", [("SSL_OFFSET", 16), ("SSL_OFFSET", 32)])
def test_wrong_ssl_offset_is_detected(
    ca: trustme.CA, monkeypatch: pytest.MonkeyPatch, attr: str, offset: int
) -> None:
    obj = server_context(ca).wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    monkeypatch.setattr(L, attr, offset)
    with pytest.raises(TLSEngineError) as info:
        L.ssl_pointer(obj)
    assert info.value.step == "pointers"


def test_wrong_ctxref_offset_is_detected(ca: trustme.CA, monkeypatch: pytest.MonkeyPatch) -> None:
    obj = server_context(ca).wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    monkeypatch.setattr(L, "SSL_CTXREF_OFFSET", L.SSL_OFFSET)
    with pytest.raises(TLSEngineError, match="PySSLContext"):
        L.ssl_pointer(obj)


def test_ssl_pointer_rejects_other_objects() -> None:
    with pytest.raises(TLSEngineError):
        L.ssl_pointer(object())  # type: ignore[arg-type]  # deliberately the wrong type


def test_session_der_round_trip(ca: trustme.CA) -> None:
    server = make_server(ca, mode="lru", tickets=False)
    result = handshake(server, client_context(ca, version="1.2"))
    assert result.session is not None
    lib = L.get_libssl()
    ptr = L.session_pointer(result.session)
    der = lib.session_to_der(ptr)
    assert len(der) > 50
    copy = lib.session_from_der(der)
    try:
        assert lib.session_id(copy) == lib.session_id(ptr) == result.session.id
        assert lib.session_to_der(copy) == der
    finally:
        lib.session_free(copy)
    assert lib.session_from_der(b"\x30\x03junk") == 0
