"""One listener's TLS session policy: cache mode, timeout, tickets, probes, deferred tickets.

Theory of operation
-------------------
The trio shell builds the listener's ``main`` and ``probe`` ``ssl.SSLContext`` (contexts.py) and
hands them to :class:`ListenerTLSEngine`, which installs the session policy on the C objects:

* ``main`` is the ``SSL_CTX`` OpenSSL consults for the session cache and the ticket callback for
  the whole life of a connection, even after the SNI callback switched ``ssl_object.context`` to a
  per-certificate context (``s->session_ctx``). So everything goes on ``main``, and callbacks
  dispatch through per-engine closures, never by looking the context up.
* ``session_cache.mode``: ``off`` = cache mode OFF; ``openssl`` = OpenSSL's internal cache,
  size ``max_entries + 1`` (3.0 holds at most size-1 entries), ``NO_AUTO_CLEAR`` and our periodic
  :meth:`sweep`; ``lru`` = ``SERVER | NO_INTERNAL`` + callbacks into a core ``SessionCache``.
  In every mode ``SSL_CTX_set_timeout(timeout)``, so tickets carry the same lifetime.
* ``tickets.enabled``: the EVP ticket-key callback over a ``KeyRing`` and ``num_tickets =
  per_handshake`` (``0`` with ``defer_tickets``: the shell calls :meth:`send_deferred_tickets`
  once a request is known not to be a health check). Disabled: ``OP_NO_TICKET`` *and*
  ``num_tickets = 0`` (TLS 1.3 + ``OP_NO_TICKET`` alone means stateful tickets).
* ``session_ids`` (the shared session cache, ``lru`` only): new session ids carry gateproxy's
  MAC (tls/session_ids.py), and the sessions each connection makes (TLS 1.2, or TLS 1.3
  stateful tickets) are kept aside for the shell (:meth:`take_new_sessions`) to write to the
  store once the client is known not to be a prober; :meth:`hold_prefetched` puts a session
  fetched from the store into the local cache.
* ``probe``: cache OFF, ``OP_NO_TICKET``, ``num_tickets = 0``: no session state at all.

``degraded=True`` (``tls_engine: stdlib_only``) touches no ctypes: only ``num_tickets`` and
``OP_NO_TICKET``; no cap, no timeout, no rotation, no deferred tickets, and stats say so.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateproxy.core.config import TLSConfig
from gateproxy.core.session_cache import SessionCache
from gateproxy.core.session_ids import SessionIds
from gateproxy.core.ticket_keys import KeyRing, TicketKey, TicketStats
from gateproxy.errors import TLSEngineError
from gateproxy.tls import libssl as L
from gateproxy.tls.session_callbacks import SessionBridge, install_session_callbacks
from gateproxy.tls.session_ids import install_session_id_generator
from gateproxy.tls.ticket_callback import TicketBridge, install_ticket_callback

__all__ = ["OPENSSL_DEFAULT_CACHE_SIZE", "ListenerTLSEngine"]

OPENSSL_DEFAULT_CACHE_SIZE = 20480
_BRIDGE_ATTR = "_gateproxy_tls_bridges"


@dataclass
class _Conn:
    client: str
    tickets_sent: bool = False


class ListenerTLSEngine:
    """Session cache, ticket keys and probe policy of one listener (see module docstring)."""

    def __init__(
        self,
        *,
        main: ssl.SSLContext,
        probe: ssl.SSLContext,
        tls: TLSConfig,
        keyring: KeyRing | None,
        defer_tickets: bool,
        clock: Callable[[], float],
        degraded: bool = False,
        session_ids: SessionIds | None = None,
    ) -> None:
        self._main = main
        self._session_ids = session_ids  # the shared session cache's MAC'd ids
        self._probe = probe
        self._tls = tls
        self._clock = clock
        self._degraded = degraded
        self._mode = tls.session_cache.mode
        self._tickets = tls.tickets.enabled
        # Stateful TLS 1.3 tickets: OP_NO_TICKET with num_tickets > 0; each ticket is a cache
        # entry (one per ticket, per_handshake per full handshake), bounded by the cache cap.
        self._stateful = self._tickets and not tls.tickets.stateless
        self._defer = defer_tickets and self._tickets and not self._stateful and not degraded
        self.ticket_stats = TicketStats()
        self._keyring: KeyRing | None = None
        if self._tickets and not self._stateful:
            self._keyring = keyring or KeyRing(
                rotate_every=tls.tickets.rotate_every,
                keep=tls.tickets.keep,
                random_bytes=os.urandom,
                now=clock(),
            )
        self._conns: dict[int, _Conn] = {}
        self._cache: SessionCache | None = None
        self._session_bridge: SessionBridge | None = None
        self._ticket_bridge: TicketBridge | None = None
        self._apply_stdlib_settings()
        if degraded:
            return
        self._lib = L.get_libssl()
        self._main_ptr = L.validate_ctx_pointer(self._lib, main)
        self._probe_ptr = L.validate_ctx_pointer(self._lib, probe)
        self._install_probe()
        self._install_cache()
        self._install_tickets()
        # The bridges live as long as the SSLContext that can still call them.
        setattr(main, _BRIDGE_ATTR, (self._session_bridge, self._ticket_bridge))

    # --- installation ---------------------------------------------------------------------------

    def _apply_stdlib_settings(self) -> None:
        tickets = self._tls.tickets
        if self._tickets:
            if self._stateful:
                self._main.options |= ssl.OP_NO_TICKET
            else:
                self._main.options &= ~ssl.OP_NO_TICKET
            self._main.num_tickets = 0 if self._defer else tickets.per_handshake
        else:
            self._main.options |= ssl.OP_NO_TICKET
            self._main.num_tickets = 0
        self._probe.options |= ssl.OP_NO_TICKET
        self._probe.num_tickets = 0

    def _ctrl_checked(self, ctx_ptr: int, set_cmd: int, get_cmd: int, value: int) -> None:
        self._lib.ctx_ctrl(ctx_ptr, set_cmd, value)
        got = self._lib.ctx_ctrl(ctx_ptr, get_cmd)
        if got != value:
            raise TLSEngineError(
                "cache_size", f"SSL_CTX_ctrl({set_cmd}, {value}) reads back as {got} ({get_cmd})"
            )

    def _install_probe(self) -> None:
        lib, ptr = self._lib, self._probe_ptr
        self._ctrl_checked(ptr, L.SSL_CTRL_SET_SESS_CACHE_MODE, L.SSL_CTRL_GET_SESS_CACHE_MODE, 0)
        if lib.ctx_get_num_tickets(ptr) != 0 or not lib.ctx_get_options(ptr) & ssl.OP_NO_TICKET:
            raise TLSEngineError("pointers", "probe context did not take num_tickets 0 / NO_TICKET")

    def _install_cache(self) -> None:
        lib, ptr, conf = self._lib, self._main_ptr, self._tls.session_cache
        timeout = max(1, round(conf.timeout))
        lib.ctx_set_timeout(ptr, timeout)
        if lib.ctx_get_timeout(ptr) != timeout:
            raise TLSEngineError("cache_size", f"SSL_CTX_set_timeout({timeout}) did not stick")
        if lib.ctx_get_num_tickets(ptr) != self._main.num_tickets:
            raise TLSEngineError("pointers", "SSL_CTX_get_num_tickets does not follow num_tickets")
        set_mode, get_mode = L.SSL_CTRL_SET_SESS_CACHE_MODE, L.SSL_CTRL_GET_SESS_CACHE_MODE
        if self._mode == "off":
            self._ctrl_checked(ptr, set_mode, get_mode, L.SESS_CACHE_OFF)
        elif self._mode == "openssl":
            size = conf.max_entries + 1  # OpenSSL 3.0 holds at most size - 1 entries
            self._ctrl_checked(
                ptr, L.SSL_CTRL_SET_SESS_CACHE_SIZE, L.SSL_CTRL_GET_SESS_CACHE_SIZE, size
            )
            self._ctrl_checked(
                ptr, set_mode, get_mode, L.SESS_CACHE_SERVER | L.SESS_CACHE_NO_AUTO_CLEAR
            )
        else:
            self._cache = SessionCache(
                max_entries=conf.max_entries,
                timeout=conf.timeout,
                max_per_client=conf.max_per_client,
            )
            self._session_bridge = SessionBridge(lib, self._cache, self._clock)
            self._ctrl_checked(
                ptr, set_mode, get_mode, L.SESS_CACHE_SERVER | L.SESS_CACHE_NO_INTERNAL
            )
            install_session_callbacks(lib, ptr, self._session_bridge)
            if self._session_ids is not None:
                self._session_bridge.fresh = {}
                if not install_session_id_generator(lib, ptr, self._session_ids):
                    raise TLSEngineError("session_ids", "SSL_CTX_set_generate_session_id refused")

    def _install_tickets(self) -> None:
        if self._keyring is None:
            return
        self._ticket_bridge = TicketBridge(self._lib, self._keyring, self.ticket_stats)
        if not install_ticket_callback(self._lib, self._main_ptr, self._ticket_bridge):
            raise TLSEngineError("tickets", "SSL_CTX_set_tlsext_ticket_key_evp_cb refused")

    # --- per connection -------------------------------------------------------------------------

    def register_connection(self, ssl_object: ssl.SSLObject, *, client: str) -> None:
        """Call before the handshake: ties the connection's ``SSL*`` to ``client``."""
        if self._degraded:
            return
        ptr = L.ssl_pointer_checked(self._lib, ssl_object)
        self._conns[ptr] = _Conn(client)
        if self._session_bridge is not None:
            self._session_bridge.clients[ptr] = client

    def unregister_connection(self, ssl_object: ssl.SSLObject) -> None:
        """Call when the connection ends (the ``SSL*`` may then be reused).

        Also queues the connection's close_notify (``SSL_shutdown`` into trio's outgoing memory
        BIO) if none was sent yet. OpenSSL drops the cache entry of every ``SSL*`` freed without
        having sent one (``ssl_clear_bad_session``), and trio's ``aclose`` in https-compatible
        mode sends none: without this, a session left the cache whenever its connection object
        was freed, and TLS 1.2 session-id resumption failed. A later ``aclose`` of a
        non-https-compatible stream still sends the queued alert; an aborted stream never does.
        """
        if self._degraded:
            return
        ptr = L.ssl_pointer_checked(self._lib, ssl_object)
        lib = self._lib
        if lib.is_init_finished(ptr) and not lib.get_shutdown(ptr) & L.SSL_SENT_SHUTDOWN:
            lib.shutdown(ptr)
        self._conns.pop(ptr, None)
        if self._session_bridge is not None:
            self._session_bridge.clients.pop(ptr, None)
            if self._session_bridge.fresh is not None:
                self._session_bridge.fresh.pop(ptr, None)

    def send_deferred_tickets(self, ssl_object: ssl.SSLObject) -> None:
        """TLS 1.3 with deferred tickets: queue ``per_handshake`` tickets (sent with the next
        write, so before the response), or one after a resumption: what OpenSSL itself sends,
        as it renews every TLS 1.3 ticket (see ticket_callback.py). No-op otherwise;
        idempotent per connection."""
        if not self._defer or self._tls.tickets.per_handshake == 0:
            return
        lib = self._lib
        ptr = L.ssl_pointer_checked(lib, ssl_object)
        conn = self._conns.setdefault(ptr, _Conn("?"))
        if conn.tickets_sent:
            return
        conn.tickets_sent = True
        if lib.ssl_version(ptr) != L.TLS1_3_VERSION or lib.get_options(ptr) & ssl.OP_NO_TICKET:
            return  # TLS 1.2 tickets go out in the handshake; a probe connection gets none
        for _ in range(1 if lib.session_reused(ptr) else self._tls.tickets.per_handshake):
            if not lib.new_session_ticket(ptr):
                break

    def forget_session(self, ssl_object: ssl.SSLObject) -> None:
        """Drop the connection's session from the cache (a health-check-only connection).

        Covers TLS 1.2 session ids and the last TLS 1.3 stateful ticket. TLS 1.2 *tickets*
        cannot be taken back (the client holds them; the server keeps nothing)."""
        if self._degraded or self._mode == "off":
            return
        ptr = L.ssl_pointer_checked(self._lib, ssl_object)
        session = self._lib.get_session(ptr)
        if not session:
            return
        session_id = self._lib.session_id(session)
        self._lib.ctx_remove_session(self._main_ptr, session)
        if self._cache is not None and session_id:
            self._cache.remove(session_id)

    # --- the shared session cache (net/shared_sessions.py) ---------------------------------------

    def holds_session(self, session_id: bytes) -> bool:
        """Is ``session_id`` in this worker's cache (presence only: no hit counted)?"""
        return self._cache is not None and session_id in self._cache

    def hold_prefetched(self, session_id: bytes, der: bytes, *, client: str) -> None:
        """Put a session fetched from the store into the local cache before the handshake
        reads the hello (cap, LRU and ``client``'s budget apply as to any entry)."""
        if self._cache is not None:
            self._cache.put(session_id, der, client=client, now=self._clock())

    def take_new_sessions(self, ssl_object: ssl.SSLObject) -> list[tuple[bytes, bytes, float]]:
        """The sessions this connection made so far (id, DER, made at), once: the TLS 1.2
        session, or its TLS 1.3 stateful tickets."""
        bridge = self._session_bridge
        if self._degraded or bridge is None or bridge.fresh is None:
            return []
        return bridge.fresh.pop(L.ssl_pointer_checked(self._lib, ssl_object), [])

    # --- timers ---------------------------------------------------------------------------------

    def sweep(self, *, now: float) -> int:
        """Drop expired sessions; return how many went. OpenSSL's cache uses wall-clock time."""
        if self._degraded:
            return 0
        if self._cache is not None:
            return self._cache.sweep(now=now)
        if self._mode == "openssl":
            before = self._lib.ctx_ctrl(self._main_ptr, L.SSL_CTRL_SESS_NUMBER)
            self._lib.ctx_flush_sessions(self._main_ptr, int(time.time()))
            return before - self._lib.ctx_ctrl(self._main_ptr, L.SSL_CTRL_SESS_NUMBER)
        return 0

    def rotate_if_due(self, *, now: float) -> bool:
        """Rotate the ticket key if due (rotating rings only); True if it rotated."""
        if self._degraded or self._keyring is None:
            return False
        return self._keyring.rotate_if_due(now=now)

    def replace_keys(self, keys: Sequence[TicketKey]) -> None:
        """Swap in new ticket keys (SIGHUP with key files); ``keys[0]`` encrypts."""
        if self._degraded or self._keyring is None:
            return
        self._keyring.replace(keys)

    @property
    def keyring(self) -> KeyRing | None:
        """The ring tickets are encrypted with (None when tickets are off)."""
        return self._keyring

    # --- stats ----------------------------------------------------------------------------------

    def stats(self, *, now: float) -> dict[str, object]:
        """Cache, ticket and engine state for /stats and /metrics."""
        tickets: dict[str, object] = {
            "enabled": self._tickets,
            "stateless": self._tickets and not self._stateful,
            "issued": self.ticket_stats.issued,
            "renewed": self.ticket_stats.renewed,
            "rejected": self.ticket_stats.rejected,
            "keys": [],
        }
        if self._keyring is not None and not self._degraded:
            tickets["keys"] = [
                {"name_prefix": k.name_prefix, "role": k.role, "age_s": k.age_s}
                for k in self._keyring.describe(now=now)
            ]
        return {
            "session_cache": self._cache_stats(),
            "tickets": tickets,
            "engine": "stdlib_only" if self._degraded else "full",
        }

    def _cache_stats(self) -> dict[str, object]:
        if self._degraded:
            raw = self._main.session_stats()
            return {
                "mode": "openssl",  # what actually runs: OpenSSL's default internal cache
                "entries": raw["number"],
                "max_entries": OPENSSL_DEFAULT_CACHE_SIZE,
                "hits": raw["hits"],
                "misses": raw["misses"],
                "evictions": raw["cache_full"],
                "evictions_capacity": raw["cache_full"],
                "evictions_budget": 0,
                "expired": raw["timeouts"],
                "bytes": 0,
            }
        if self._cache is not None:
            s = self._cache.stats()
            return {
                "mode": self._mode,
                "entries": s.entries,
                "max_entries": s.max_entries,
                "hits": s.hits,
                "misses": s.misses,
                "evictions": s.evictions,
                "evictions_capacity": s.evictions_capacity,
                "evictions_budget": s.evictions_budget,
                "expired": s.expired,
                "bytes": s.bytes,
            }

        def ctrl(cmd: int) -> int:
            return self._lib.ctx_ctrl(self._main_ptr, cmd)

        full = ctrl(L.SSL_CTRL_SESS_CACHE_FULL)
        return {
            "mode": self._mode,
            "entries": ctrl(L.SSL_CTRL_SESS_NUMBER),
            "max_entries": self._tls.session_cache.max_entries if self._mode == "openssl" else 0,
            "hits": ctrl(L.SSL_CTRL_SESS_HIT),
            "misses": ctrl(L.SSL_CTRL_SESS_MISSES),
            "evictions": full,
            "evictions_capacity": full,
            "evictions_budget": 0,
            "expired": ctrl(L.SSL_CTRL_SESS_TIMEOUTS),
            "bytes": 0,  # OpenSSL does not tell
        }
