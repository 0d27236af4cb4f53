"""Start-up self-test of the TLS engine: every assumption checked, in order, before serving.

Steps (each failure is a ``TLSEngineError(step, reason)`` telling the operator what to do):

1. ``platform``   Linux + CPython 3.7-3.13 (the ``_ssl`` struct offsets).
2. ``libraries``  exactly one mapped ``libssl.so*`` and one ``libcrypto.so*``.
3. ``version``    the mapped library's runtime version equals ``ssl.OPENSSL_VERSION_NUMBER`` and
                  is at least 3.0.
4. ``symbols``    every symbol the engine uses resolves (the missing one is named).
5. ``pointers``   ``SSL_CTX*`` follows ``ctx.options`` / ``num_tickets``; an ``SSL*`` belongs to
                  its context.
6. ``cache_size`` cache size, mode and timeout set and read back.
7. ``handshake``  in memory, through real engines: a TLS 1.3 full handshake and a resumption with
                  a ticket from a real ``KeyRing`` (and no cache entry for it), then a TLS 1.2
                  session-id resumption through the ``lru`` cache.

It uses a throwaway ECDSA P-256 certificate made with ``cryptography`` and takes a few ms.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import ssl
import tempfile
from collections.abc import Callable

from gateproxy.core.config import (
    CertificateConfig,
    SessionCacheConfig,
    TicketsConfig,
    TLSConfig,
)
from gateproxy.errors import TLSEngineError
from gateproxy.tls import libssl as L
from gateproxy.tls.engine import ListenerTLSEngine

__all__ = ["STEPS", "run_self_test"]

STEPS = ("platform", "libraries", "version", "symbols", "pointers", "cache_size", "handshake")


def run_self_test() -> None:
    """Run every step in order; raise ``TLSEngineError`` at the first one that fails."""
    L.check_platform()
    paths = L.find_library_paths()
    lib = L.LibSSL(paths)  # steps "version" and "symbols"
    server, client = _contexts()
    _check_pointers(lib, server)
    _check_cache_size(lib, server)
    _check_handshakes(server, client)


def _contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateproxy-selftest")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="gateproxy-selftest-") as tmp:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        server.load_cert_chain(cert_path, key_path)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return server, client


def _check_pointers(lib: L.LibSSL, ctx: ssl.SSLContext) -> None:
    ptr = L.validate_ctx_pointer(lib, ctx)
    original = ctx.num_tickets
    try:
        for n in (3, 0, original):
            ctx.num_tickets = n
            if lib.ctx_get_num_tickets(ptr) != n:
                raise TLSEngineError(
                    "pointers", f"SSL_CTX_get_num_tickets does not follow num_tickets={n}"
                )
    finally:
        ctx.num_tickets = original
    obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    L.ssl_pointer_checked(lib, obj)


def _check_cache_size(lib: L.LibSSL, ctx: ssl.SSLContext) -> None:
    ptr = L.ctx_pointer(ctx)
    checks = (
        (L.SSL_CTRL_SET_SESS_CACHE_SIZE, L.SSL_CTRL_GET_SESS_CACHE_SIZE, 1234),
        (L.SSL_CTRL_SET_SESS_CACHE_MODE, L.SSL_CTRL_GET_SESS_CACHE_MODE, 0x82),
        (L.SSL_CTRL_SET_SESS_CACHE_MODE, L.SSL_CTRL_GET_SESS_CACHE_MODE, 0x302),
    )
    for set_cmd, get_cmd, value in checks:
        lib.ctx_ctrl(ptr, set_cmd, value)
        got = lib.ctx_ctrl(ptr, get_cmd)
        if got != value:
            raise TLSEngineError(
                "cache_size", f"SSL_CTX_ctrl({set_cmd}, {value}) reads back as {got}"
            )
    lib.ctx_set_timeout(ptr, 123)
    if lib.ctx_get_timeout(ptr) != 123:
        raise TLSEngineError("cache_size", "SSL_CTX_set_timeout(123) does not read back")


def _check_handshakes(server: ssl.SSLContext, client: ssl.SSLContext) -> None:
    clock: Callable[[], float] = lambda: 0.0  # noqa: E731
    try:
        # TLS 1.3, tickets through a real (rotating) KeyRing, lru cache that must stay empty.
        engine = ListenerTLSEngine(
            main=server,
            probe=_copy_context(server),
            tls=_config(tickets=True),
            keyring=None,
            defer_tickets=False,
            clock=clock,
        )
        client.minimum_version = client.maximum_version = ssl.TLSVersion.TLSv1_3
        first = _connect(server, client, engine, None)
        if first.session is None or not first.session.has_ticket or first.reused:
            raise TLSEngineError("handshake", "TLS 1.3 full handshake issued no ticket")
        second = _connect(server, client, engine, first.session)
        stats = engine.stats(now=0.0)
        tickets = stats["tickets"]
        cache = stats["session_cache"]
        assert isinstance(tickets, dict) and isinstance(cache, dict)
        # The resumed connection gets a fresh ticket (TLS 1.3 tickets are renewed on every use).
        if not second.reused or tickets["issued"] != 2:
            raise TLSEngineError("handshake", f"TLS 1.3 ticket resumption failed ({tickets})")
        if cache["entries"] != 0:
            raise TLSEngineError("handshake", "a stateless TLS 1.3 ticket reached the cache")
        # TLS 1.2 without tickets: one session-id entry in the lru cache, resumed from it.
        server12 = _copy_context(server)
        engine12 = ListenerTLSEngine(
            main=server12,
            probe=_copy_context(server),
            tls=_config(tickets=False),
            keyring=None,
            defer_tickets=False,
            clock=clock,
        )
        client.minimum_version = client.maximum_version = ssl.TLSVersion.TLSv1_2
        first = _connect(server12, client, engine12, None)
        second = _connect(server12, client, engine12, first.session)
        cache = engine12.stats(now=0.0)["session_cache"]
        assert isinstance(cache, dict)
        if not second.reused or cache["entries"] != 1 or cache["hits"] != 1:
            raise TLSEngineError("handshake", f"TLS 1.2 session-id resumption failed ({cache})")
    except (ssl.SSLError, AssertionError) as exc:
        raise TLSEngineError("handshake", f"in-memory handshake failed: {exc!r}") from exc


class _Outcome:
    def __init__(self, session: ssl.SSLSession | None, reused: bool) -> None:
        self.session = session
        self.reused = reused


def _copy_context(template: ssl.SSLContext) -> ssl.SSLContext:
    """A certificate-less listener context whose SNI callback switches to ``template``.

    This is exactly the SNI trap: after the switch OpenSSL must still use the listener's own
    cache and ticket callback, so the TLS 1.2 step below also proves the engine's wiring."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    def pick(obj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        obj.context = template

    ctx.sni_callback = pick
    return ctx


def _config(*, tickets: bool) -> TLSConfig:
    return TLSConfig(
        certificates=(CertificateConfig(cert="selftest", key="selftest"),),
        session_cache=SessionCacheConfig(mode="lru", max_entries=8, max_per_client=0),
        tickets=TicketsConfig(enabled=tickets, per_handshake=1),
    )


def _connect(
    server: ssl.SSLContext,
    client: ssl.SSLContext,
    engine: ListenerTLSEngine,
    session: ssl.SSLSession | None,
) -> _Outcome:
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname="selftest", session=session)
    engine.register_connection(srv, client="selftest")
    try:
        for _ in range(10):
            _drive(cli.do_handshake)
            s_in.write(c_out.read())
            _drive(srv.do_handshake)
            c_in.write(s_out.read())
        srv.write(b"x")  # TLS 1.3 tickets travel after the handshake
        c_in.write(s_out.read())
        if cli.read(1) != b"x":
            raise TLSEngineError("handshake", "no application data after the handshake")
        outcome = _Outcome(cli.session, cli.session_reused)
        for end in (srv, cli, srv):  # close_notify both ways keeps the TLS 1.2 session
            _drive(end.unwrap)
            c_in.write(s_out.read())
            s_in.write(c_out.read())
        return outcome
    finally:
        engine.unregister_connection(srv)


def _drive(step: Callable[[], object]) -> None:
    with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
        step()
