"""The start-up self-test: passes here, fast, and names the step that breaks."""

from __future__ import annotations

import ssl
import sys
import time

import pytest

from gateproxy.errors import TLSEngineError
from gateproxy.tls import libssl as L
from gateproxy.tls.selftest import STEPS, run_self_test


def test_self_test_passes_quickly() -> None:
    run_self_test()  # warm imports (cryptography) once
    start = time.perf_counter()
    run_self_test()
    assert time.perf_counter() - start < 0.5


def _fails_at(step: str) -> TLSEngineError:
    with pytest.raises(TLSEngineError) as info:
        run_self_test()
    assert info.value.step == step, info.value
    assert step in STEPS
    return info.value


def test_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert "stdlib_only" in _fails_at("platform").reason


def test_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(L.LIB_PREFIXES, "crypto", "libcrypto-missing.so")
    _fails_at("libraries")


def test_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssl, "OPENSSL_VERSION_NUMBER", ssl.OPENSSL_VERSION_NUMBER + 1)
    _fails_at("version")


def test_symbols_name_the_missing_one(monkeypatch: pytest.MonkeyPatch) -> None:
    kind, _name, restype, argtypes = L.SYMBOLS["new_session_ticket"]
    monkeypatch.setitem(
        L.SYMBOLS, "new_session_ticket", (kind, "SSL_new_session_ticket_x", restype, argtypes)
    )
    assert "SSL_new_session_ticket_x" in _fails_at("symbols").reason


def test_pointers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(L, "CTX_OFFSET", 8)
    _fails_at("pointers")


def test_ssl_pointer_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(L, "SSL_OFFSET", 16)
    _fails_at("pointers")


def test_cache_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(L, "SSL_CTRL_GET_SESS_CACHE_SIZE", L.SSL_CTRL_SESS_NUMBER)
    _fails_at("cache_size")


def test_handshake(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateproxy.tls import ticket_callback

    # Tickets whose key name is never read back: every resumption fails.
    monkeypatch.setattr(ticket_callback, "NAME_LEN", 0)
    _fails_at("handshake")
