"""In-memory TLS handshakes between a server SSLContext (with an engine) and test clients.

``Server`` builds a listener's ``main``/``probe`` contexts the way contexts.py would (trustme leaf,
TLS 1.2-1.3) and an engine over them. ``handshake`` runs one full connection over MemoryBIOs:
handshake, one byte of application data each way (so TLS 1.3 tickets reach the client), an
orderly close_notify from both sides (a server that does not send one loses its TLS 1.2 cache
entry), and returns what the client learnt. ``pyopenssl_handshake`` does the same with
pyOpenSSL (a different OpenSSL build) as the client.
"""

from __future__ import annotations

import contextlib
import ctypes
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trustme
from OpenSSL import SSL as OSSL

from gateproxy.core.config import CertificateConfig, SessionCacheConfig, TicketsConfig, TLSConfig
from gateproxy.core.session_ids import SessionIds
from gateproxy.core.ticket_keys import KeyRing
from gateproxy.tls import libssl as L
from gateproxy.tls.engine import ListenerTLSEngine

CERTS = (CertificateConfig(cert="unused.pem", key="unused.pem"),)


def tls_config(
    *,
    mode: str = "lru",
    max_entries: int = 100,
    timeout: float = 300.0,
    max_per_client: int = 0,
    tickets: bool = True,
    per_handshake: int = 1,
    rotate_every: float = 3600.0,
    keep: int = 1,
) -> TLSConfig:
    return TLSConfig(
        certificates=CERTS,
        session_cache=SessionCacheConfig.model_validate(
            {
                "mode": mode,
                "max_entries": max_entries,
                "timeout": timeout,
                "max_per_client": max_per_client,
            }
        ),
        tickets=TicketsConfig(
            enabled=tickets, per_handshake=per_handshake, rotate_every=rotate_every, keep=keep
        ),
    )


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ca.issue_cert("localhost").configure_cert(ctx)
    return ctx


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class Server:
    main: ssl.SSLContext
    probe: ssl.SSLContext
    engine: ListenerTLSEngine
    clock: FakeClock


def make_server(
    ca: trustme.CA,
    *,
    keyring: KeyRing | None = None,
    defer_tickets: bool = False,
    degraded: bool = False,
    clock: FakeClock | None = None,
    session_ids: SessionIds | None = None,
    **config: Any,
) -> Server:
    return server_on(
        server_context(ca),
        server_context(ca),
        tls_config(**config),
        keyring=keyring,
        defer_tickets=defer_tickets,
        degraded=degraded,
        clock=clock,
        session_ids=session_ids,
    )


def server_on(
    main: ssl.SSLContext,
    probe: ssl.SSLContext,
    tls: TLSConfig,
    *,
    keyring: KeyRing | None = None,
    defer_tickets: bool = False,
    degraded: bool = False,
    clock: FakeClock | None = None,
    session_ids: SessionIds | None = None,
) -> Server:
    """An engine over ``main`` and ``probe`` (e.g. the contexts contexts.py built)."""
    clock = clock or FakeClock()
    engine = ListenerTLSEngine(
        main=main,
        probe=probe,
        tls=tls,
        keyring=keyring,
        defer_tickets=defer_tickets,
        clock=clock,
        degraded=degraded,
        session_ids=session_ids,
    )
    return Server(main, probe, engine, clock)


def client_context(
    ca: trustme.CA, *, version: str = "1.3", no_ticket: bool = False
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ctx.maximum_version = v
    if no_ticket:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


@dataclass
class Result:
    reused: bool
    session: ssl.SSLSession | None
    version: str | None
    server_reused: bool


def _pump(src: ssl.MemoryBIO, dst: ssl.MemoryBIO) -> bool:
    data = src.read()
    if data:
        dst.write(data)
    return bool(data)


def _step(fn: Callable[[], object]) -> bool:
    try:
        fn()
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return False
    return True


def handshake(
    server: Server,
    client_ctx: ssl.SSLContext,
    *,
    session: ssl.SSLSession | None = None,
    client: str = "192.0.2.1",
    probe: bool = False,
    after_handshake: Callable[[ssl.SSLObject], None] | None = None,
    close: bool = True,
) -> Result:
    """One connection over MemoryBIOs; returns the client's view (and the server's reuse flag)."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    ctx = server.probe if probe else server.main
    srv = ctx.wrap_bio(s_in, s_out, server_side=True)
    cli = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost", session=session)
    server.engine.register_connection(srv, client=client)
    try:
        done_c = done_s = False
        for _ in range(20):
            done_c = done_c or _step(cli.do_handshake)
            _pump(c_out, s_in)
            done_s = done_s or _step(srv.do_handshake)
            _pump(s_out, c_in)
            if done_c and done_s:
                break
        assert done_c and done_s, "handshake did not finish"
        if after_handshake is not None:
            after_handshake(srv)
        srv.write(b"s")
        _pump(s_out, c_in)
        assert cli.read(10) == b"s"
        cli.write(b"c")
        _pump(c_out, s_in)
        assert srv.read(10) == b"c"
        result = Result(
            reused=cli.session_reused,
            session=cli.session,
            version=cli.version(),
            server_reused=srv.session_reused,
        )
        if close:
            _step(srv.unwrap)
            _pump(s_out, c_in)
            _step(cli.unwrap)
            _pump(c_out, s_in)
            _step(srv.unwrap)
        return result
    finally:
        server.engine.unregister_connection(srv)


def pyopenssl_client_context(version: int = OSSL.TLS1_3_VERSION) -> OSSL.Context:
    """A pyOpenSSL client context (reuse it: pyOpenSSL resumes only within one Context)."""
    cctx = OSSL.Context(OSSL.TLS_METHOD)
    cctx.set_min_proto_version(version)
    cctx.set_max_proto_version(version)
    cctx.set_verify(OSSL.VERIFY_NONE)
    return cctx


def pyopenssl_handshake(
    server: Server,
    cctx: OSSL.Context,
    *,
    session: OSSL.Session | None = None,
) -> tuple[bool, OSSL.Session]:
    """The same connection with pyOpenSSL (its own OpenSSL build) as the client.

    Returns (the server saw a resumption, the client's session for the next connection)."""
    cli = OSSL.Connection(cctx, None)
    cli.set_tlsext_host_name(b"localhost")
    cli.set_connect_state()
    if session is not None:
        cli.set_session(session)
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server.main.wrap_bio(s_in, s_out, server_side=True)
    server.engine.register_connection(srv, client="192.0.2.9")

    def c2s() -> None:
        try:
            data = cli.bio_read(65536)
        except OSSL.WantReadError:
            return
        s_in.write(data)

    def s2c() -> None:
        data = s_out.read()
        if data:
            cli.bio_write(data)

    try:
        done_c = done_s = False
        for _ in range(20):
            if not done_c:
                try:
                    cli.do_handshake()
                    done_c = True
                except OSSL.WantReadError:
                    pass
            c2s()
            done_s = done_s or _step(srv.do_handshake)
            s2c()
            if done_c and done_s:
                break
        assert done_c and done_s
        srv.write(b"s")
        s2c()
        assert cli.recv(10) == b"s"
        cli.sendall(b"c")
        c2s()
        assert srv.read(10) == b"c"
        reused = srv.session_reused
        sess = cli.get_session()
        assert sess is not None
        _step(srv.unwrap)
        s2c()
        with contextlib.suppress(OSSL.Error):
            cli.shutdown()
        c2s()
        return reused, sess
    finally:
        server.engine.unregister_connection(srv)


def ticket_key_name(session: ssl.SSLSession) -> bytes:
    """The key name (first 16 bytes) of the client's saved ticket: SSL_SESSION_get0_ticket."""
    lib = L.get_libssl()
    fn = lib._libs["ssl"].SSL_SESSION_get0_ticket
    fn.restype = None
    fn.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    ptr, length = ctypes.c_void_p(), ctypes.c_size_t()
    fn(L.session_pointer(session), ctypes.byref(ptr), ctypes.byref(length))
    assert ptr.value and length.value >= 16 + 16 + 32, "no ticket in the session"
    return ctypes.string_at(ptr.value, 16)


def restrict_sigalgs(ctx: ssl.SSLContext, sigalgs: str) -> None:
    """``SSL_CTX_set1_sigalgs_list`` on a test client: the stdlib has no setter for what a TLS 1.3
    client offers (``"ECDSA+SHA256"``, ``"RSA-PSS+SHA256"``), and it picks the server's
    certificate."""
    set_sigalgs_list = 98  # SSL_CTRL_SET_SIGALGS_LIST, ssl.h
    lib = L.get_libssl()
    fn = lib._fn["ctx_ctrl"]
    assert fn(L.ctx_pointer(ctx), set_sigalgs_list, 0, sigalgs.encode()) == 1, sigalgs


def session_id_context(session: ssl.SSLSession) -> bytes:
    """``SSL_SESSION_get0_id_context``: the server context a session is bound to."""
    lib = L.get_libssl()
    fn = lib._libs["ssl"].SSL_SESSION_get0_id_context
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint)]
    length = ctypes.c_uint(0)
    ptr = fn(L.session_pointer(session), ctypes.byref(length))
    return ctypes.string_at(ptr, length.value) if ptr and length.value else b""
