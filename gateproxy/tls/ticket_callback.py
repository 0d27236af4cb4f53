"""The session-ticket key callback (``SSL_CTX_set_tlsext_ticket_key_evp_cb``) over a KeyRing.

Theory of operation
-------------------
OpenSSL calls ``cb(SSL*, name[16], iv[16], EVP_CIPHER_CTX*, EVP_MAC_CTX*, enc)`` for every
ticket it writes (``enc=1``) or reads (``enc=0``). The ring (core/ticket_keys.py) decides which
key; this module only turns a :class:`TicketKey` into OpenSSL calls:

* encrypt: copy the current key's name, ``RAND_bytes(iv)``, ``EVP_EncryptInit_ex`` with
  AES-256-CBC (32-byte keys) or AES-128-CBC (16-byte keys), HMAC-SHA256 parameters on the MAC
  context; return 1. Any failure returns 0: no ticket this time, the handshake goes on.
* decrypt: unknown name -> 0 (``rejected``; clean full handshake and a new ticket). Known name ->
  MAC parameters + ``EVP_DecryptInit_ex``; return **2 for an older key** (``renewed``: OpenSSL
  then issues a fresh ticket under the current key) and **2 for every TLS 1.3 ticket**, 1 only
  for a TLS 1.2 ticket under the current key. In TLS 1.3 on 3.0, 2 is the *only* way a resumed
  connection gets a new ticket, and TLS 1.3 tickets are meant for one use (RFC 8446 C.4):
  OpenSSL's built-in keys renew every TLS 1.3 ticket, and so does nginx's callback. A failing
  EVP call returns 0 as well: -1 would abort the client's handshake, and a full handshake is
  always a safe answer.

The ``OSSL_PARAM`` arrays (``{"key", OCTET_STRING, hmac_key}``, ``{"digest", UTF8_STRING,
"SHA256"}``, ``{NULL}``) are built once per key and kept, with their buffers, while the key is in
the ring. The ring is read once per call, so a rotation between two callbacks is harmless.

The thunk holds a weak reference to its :class:`TicketBridge` (see session_callbacks.py for the
lifetime rules) and is itself kept in ``KEEP_ALIVE`` forever.
"""

from __future__ import annotations

import ctypes
import logging
import weakref
from typing import Any

from gateproxy.core.ticket_keys import KeyRing, TicketKey, TicketStats
from gateproxy.tls.libssl import (
    OSSL_PARAM_OCTET_STRING,
    OSSL_PARAM_UTF8_STRING,
    TICKET_KEY_EVP_CB,
    TLS1_3_VERSION,
    LibSSL,
    OSSLParam,
)
from gateproxy.tls.session_callbacks import KEEP_ALIVE

__all__ = ["TicketBridge", "install_ticket_callback"]

log = logging.getLogger("gateproxy.tls")

NAME_LEN = 16
IV_LEN = 16
SIZE_MAX = ctypes.c_size_t(-1).value
_DIGEST = b"SHA256"


class _MacParams:
    """One key's ``OSSL_PARAM[3]`` with the buffers it points into (kept alive together)."""

    def __init__(self, hmac_key: bytes) -> None:
        self.key_buf = ctypes.create_string_buffer(hmac_key, len(hmac_key))
        self.digest_buf = ctypes.create_string_buffer(_DIGEST)
        self.array = (OSSLParam * 3)()
        self.array[0] = OSSLParam(
            b"key",
            OSSL_PARAM_OCTET_STRING,
            ctypes.addressof(self.key_buf),
            len(hmac_key),
            SIZE_MAX,
        )
        self.array[1] = OSSLParam(
            b"digest",
            OSSL_PARAM_UTF8_STRING,
            ctypes.addressof(self.digest_buf),
            len(_DIGEST),
            SIZE_MAX,
        )


class TicketBridge:
    """Per-listener state behind the ticket callback."""

    def __init__(self, lib: LibSSL, keyring: KeyRing, stats: TicketStats) -> None:
        self.lib = lib
        self.keyring = keyring
        self.stats = stats
        self.errors = 0
        self._params: dict[TicketKey, _MacParams] = {}

    def _cipher(self, key: TicketKey) -> int:
        if len(key.aes_key) == 32:
            return self.lib.cipher_aes_256_cbc
        return self.lib.cipher_aes_128_cbc

    def _mac_params(self, key: TicketKey) -> _MacParams:
        params = self._params.get(key)
        if params is None:
            if len(self._params) > 2 * len(self.keyring) + 4:
                live = set(self.keyring.keys())
                self._params = {k: v for k, v in self._params.items() if k in live}
            params = self._params[key] = _MacParams(key.hmac_key)
        return params

    def encrypt(self, name: int, iv: int, cctx: int, hctx: int) -> int:
        key = self.keyring.encryption_key()
        lib = self.lib
        ctypes.memmove(name, key.name, NAME_LEN)
        if not lib.rand_bytes(iv, IV_LEN):
            log.error("RAND_bytes failed: no session ticket issued")
            return 0
        if not lib.encrypt_init(cctx, self._cipher(key), key.aes_key, iv):
            log.error("EVP_EncryptInit_ex failed: no session ticket issued")
            return 0
        if not lib.mac_set_params(hctx, self._mac_params(key).array):
            log.error("EVP_MAC_CTX_set_params failed: no session ticket issued")
            return 0
        self.stats.issued += 1
        return 1

    def decrypt(self, ssl_ptr: int, name: int, iv: int, cctx: int, hctx: int) -> int:
        found = self.keyring.lookup(ctypes.string_at(name, NAME_LEN))
        if found is None:
            self.stats.rejected += 1
            return 0
        key, current = found
        lib = self.lib
        if not lib.mac_set_params(hctx, self._mac_params(key).array):
            log.error("EVP_MAC_CTX_set_params failed: ticket ignored, full handshake")
            return 0
        if not lib.decrypt_init(cctx, self._cipher(key), key.aes_key, iv):
            log.error("EVP_DecryptInit_ex failed: ticket ignored, full handshake")
            return 0
        self.stats.decrypted += 1
        if not current:
            self.stats.renewed += 1
            return 2
        # Returning 1 here for TLS 1.3 sent no ticket on a resumed connection: clients that
        # expect a fresh one (tlsfuzzer's resumption tests: "the server sends at least one
        # NewSessionTicket always") read the response where the ticket should have been.
        return 2 if lib.ssl_version(ssl_ptr) == TLS1_3_VERSION else 1

    def failed(self) -> None:
        self.errors += 1
        log.exception("TLS ticket key callback failed; treated as no ticket / unknown key")


def _make_thunk(bridge: TicketBridge) -> Any:
    ref = weakref.ref(bridge)

    def ticket_cb(
        ssl_ptr: int | None,
        name: int | None,
        iv: int | None,
        cctx: int | None,
        hctx: int | None,
        enc: int,
    ) -> int:
        target = ref()
        if target is None or not (ssl_ptr and name and iv and cctx and hctx):
            return 0
        try:
            if enc:
                return target.encrypt(name, iv, cctx, hctx)
            return target.decrypt(ssl_ptr, name, iv, cctx, hctx)
        except BaseException:
            target.failed()
            return 0

    return TICKET_KEY_EVP_CB(ticket_cb)


def install_ticket_callback(lib: LibSSL, ctx_ptr: int, bridge: TicketBridge) -> bool:
    """Install the ticket-key thunk dispatching to ``bridge``; False if OpenSSL refused it."""
    thunk = _make_thunk(bridge)
    KEEP_ALIVE.append(thunk)
    return lib.ctx_set_ticket_cb(ctx_ptr, thunk)
