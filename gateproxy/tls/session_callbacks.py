"""OpenSSL's external session cache (new/get/remove callbacks) over the core ``SessionCache``.

Theory of operation
-------------------
In ``lru`` mode the listener's ``SSL_CTX`` runs with ``SERVER | NO_INTERNAL`` (0x302): OpenSSL
keeps nothing itself and asks us instead.

* ``new_cb(SSL*, SSL_SESSION*)``: a server-side session was created (TLS 1.2 full handshake
  without tickets; TLS 1.3 stateful ticket). We store ``i2d_SSL_SESSION`` bytes under
  ``SSL_SESSION_get_id`` with the client address registered for that ``SSL*`` (the per-client
  budget) and return 0 (we keep no reference). TLS 1.3 *stateless* ticket sessions (TLS 1.3 and
  no ``OP_NO_TICKET`` on the ``SSL``) also reach this callback although OpenSSL never asks for
  them again: they are filtered out, otherwise every ticket would fill the cache.
* ``get_cb(SSL*, id, len, int *copy)``: a client offers a session id / stateful PSK. We return a
  fresh ``d2i_SSL_SESSION`` (one reference, handed over: ``*copy = 0``) or NULL.
* ``remove_cb(SSL_CTX*, SSL_SESSION*)``: OpenSSL dropped a session (bad close, expiry on lookup,
  ``SSL_CTX_remove_session``). It can run under the ``SSL_CTX`` lock, so it only touches the
  Python cache.

The C thunks are closures over a *weak* reference to a :class:`SessionBridge`; the engine and the
listener's ``SSLContext`` hold the bridge strongly, so it lives exactly as long as anything can
still call it, and a late callback after that is a harmless no-op. The thunks themselves are kept
in :data:`KEEP_ALIVE` forever (an ``SSL_CTX`` can outlive its ``SSLContext``). No exception ever
leaves a callback: each one is logged and turned into the callback's "nothing" value (0 / NULL).
Callbacks run synchronously inside the handshake on the event-loop thread, so no locks are
needed while gateproxy stays single-threaded per process.
"""

from __future__ import annotations

import ctypes
import logging
import weakref
from collections.abc import Callable
from typing import Any

from gateproxy.core.session_cache import SessionCache
from gateproxy.tls.libssl import (
    GET_SESSION_CB,
    NEW_SESSION_CB,
    REMOVE_SESSION_CB,
    TLS1_3_VERSION,
    LibSSL,
)

__all__ = ["KEEP_ALIVE", "SessionBridge", "install_session_callbacks"]

log = logging.getLogger("gateproxy.tls")

KEEP_ALIVE: list[object] = []
"""Every CFUNCTYPE thunk ever installed on an SSL_CTX. Never shrinks, by design."""

OP_NO_TICKET = 0x4000  # SSL_OP_NO_TICKET (same value as ssl.OP_NO_TICKET)

UNKNOWN_CLIENT = "?"
MAX_FRESH = 8  # sessions kept aside per connection for the shared store (TLS 1.3: one per ticket)


class SessionBridge:
    """Per-listener state behind the session callbacks."""

    def __init__(self, lib: LibSSL, cache: SessionCache, clock: Callable[[], float]) -> None:
        self.lib = lib
        self.cache = cache
        self.clock = clock
        self.clients: dict[int, str] = {}  # SSL* -> client address (register_connection)
        self.errors = 0
        self.stored = 0
        self.skipped_stateless = 0
        # shared cache: SSL* -> (id, DER, made at) of each session it made (TLS 1.2, or TLS 1.3
        # stateful tickets), until the shell writes them to the store or drops them (a
        # prober's); None: no shared cache
        self.fresh: dict[int, list[tuple[bytes, bytes, float]]] | None = None

    def on_new(self, ssl_ptr: int, session: int) -> int:
        """Store a new session's DER bytes; always return 0 (no reference kept)."""
        lib = self.lib
        if (
            lib.ssl_version(ssl_ptr) == TLS1_3_VERSION
            and not lib.get_options(ssl_ptr) & OP_NO_TICKET
        ):
            self.skipped_stateless += 1
            return 0
        session_id = lib.session_id(session)
        if not session_id:
            return 0
        der = lib.session_to_der(session)
        if not der:
            return 0
        client = self.clients.get(ssl_ptr, UNKNOWN_CLIENT)
        now = self.clock()
        self.cache.put(session_id, der, client=client, now=now)
        self.stored += 1
        if self.fresh is not None and ssl_ptr in self.clients:
            made = self.fresh.setdefault(ssl_ptr, [])
            if len(made) < MAX_FRESH:
                made.append((session_id, der, now))
        return 0

    def on_get(self, session_id: bytes) -> int:
        """A new ``SSL_SESSION*`` for ``session_id`` (reference handed over) or 0."""
        der = self.cache.get(session_id, now=self.clock())
        if der is None:
            return 0
        return self.lib.session_from_der(der)

    def on_remove(self, session: int) -> None:
        session_id = self.lib.session_id(session)
        if session_id:
            self.cache.remove(session_id)

    def failed(self, where: str) -> None:
        self.errors += 1
        log.exception("TLS session %s callback failed; treated as a cache miss", where)


def _make_thunks(bridge: SessionBridge) -> tuple[Any, Any, Any]:
    ref = weakref.ref(bridge)

    def new_cb(ssl_ptr: int | None, session: int | None) -> int:
        target = ref()
        if target is None or not ssl_ptr or not session:
            return 0
        try:
            return target.on_new(ssl_ptr, session)
        except BaseException:
            target.failed("new")
            return 0

    def get_cb(ssl_ptr: int | None, id_ptr: int | None, length: int, copy: int | None) -> int:
        target = ref()
        if target is None:
            return 0
        try:
            if copy:
                ctypes.c_int.from_address(copy).value = 0
            if not id_ptr or length <= 0:
                return 0
            return target.on_get(ctypes.string_at(id_ptr, length))
        except BaseException:
            target.failed("get")
            return 0

    def remove_cb(ctx_ptr: int | None, session: int | None) -> None:
        target = ref()
        if target is None or not session:
            return
        try:
            target.on_remove(session)
        except BaseException:
            target.failed("remove")

    return NEW_SESSION_CB(new_cb), GET_SESSION_CB(get_cb), REMOVE_SESSION_CB(remove_cb)


def install_session_callbacks(lib: LibSSL, ctx_ptr: int, bridge: SessionBridge) -> None:
    """Install new/get/remove thunks dispatching to ``bridge`` on ``ctx_ptr``."""
    new, get, remove = _make_thunks(bridge)
    KEEP_ALIVE.extend((new, get, remove))
    lib.ctx_set_session_callbacks(ctx_ptr, new, get, remove)
