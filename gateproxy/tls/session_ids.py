"""Installs gateproxy's MAC'd session ids on a listener's ``SSL_CTX`` (shared session cache).

``SSL_CTX_set_generate_session_id(ctx, cb)``: OpenSSL calls ``cb(SSL*, uchar *id, uint
*id_len)`` for every new server session; ``*id_len`` holds the most the buffer takes (32 for
TLS 1.2). We write ``core.session_ids.SessionIds.issue(random)`` (32 bytes: 16 random + 16 MAC)
so that every host of the fleet, and only it, recognises the id before asking the store.
``SSL_new`` copies the callback into each ``SSL``, so it is installed on the listener's main
context, the one every connection is created from.

Like the other callbacks (session_callbacks.py) the thunk is kept alive forever and no
exception leaves it: if issuing fails, the id is plain random bytes (returned 1, never 0, which
would fail the handshake), so the session is only local: its id fails the MAC everywhere.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable

from gateproxy.core.session_ids import ID_LEN, RANDOM_LEN, SessionIds
from gateproxy.tls.libssl import GEN_SESSION_ID_CB, LibSSL
from gateproxy.tls.session_callbacks import KEEP_ALIVE

__all__ = ["install_session_id_generator"]

log = logging.getLogger("gateproxy.tls")


def _make_thunk(ids: SessionIds, random_bytes: Callable[[int], bytes]) -> object:
    def generate(ssl_ptr: int | None, id_ptr: int | None, len_ptr: int | None) -> int:
        if not id_ptr or not len_ptr:
            return 0
        room = ctypes.c_uint.from_address(len_ptr)
        if room.value < ID_LEN:  # (not in TLS 1.2/1.3): a plain random id of that length
            ctypes.memmove(id_ptr, os.urandom(room.value), room.value)
            return 1
        try:
            session_id = ids.issue(random_bytes(RANDOM_LEN))
        except BaseException:
            log.exception("issuing a session id failed; a plain random id is used")
            session_id = os.urandom(ID_LEN)
        ctypes.memmove(id_ptr, session_id, ID_LEN)
        room.value = ID_LEN
        return 1

    return GEN_SESSION_ID_CB(generate)


def install_session_id_generator(
    lib: LibSSL,
    ctx_ptr: int,
    ids: SessionIds,
    *,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> bool:
    """Make every new session id on ``ctx_ptr`` one of ``ids``; False if OpenSSL refused."""
    thunk = _make_thunk(ids, random_bytes)
    KEEP_ALIVE.append(thunk)
    return lib.ctx_set_generate_session_id(ctx_ptr, thunk)
