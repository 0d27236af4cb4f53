"""The one place that loads OpenSSL through ctypes: symbols, constants, pointers, validation.

Theory of operation
-------------------
The stdlib ``ssl`` module has no cache size, session timeout, ticket keys or session callbacks,
but the ``libssl`` that ``_ssl`` loaded exports them all. We load *that* mapped library (found in
``/proc/self/maps``; exactly one ``libssl`` and one ``libcrypto`` or we refuse), check that its
runtime version is the one ``ssl`` reports and at least 3.0, and resolve every symbol we use up
front so a missing one is named at start-up instead of failing in a handshake.

The C objects behind the Python ones are read at fixed offsets (CPython 3.7-3.13):

* ``SSL_CTX*`` at ``id(ctx) + object.__basicsize__``:
  ``PySSLContext {PyObject_HEAD; SSL_CTX *ctx; ...}``.
* ``SSL*`` at ``id(sslobj._sslobj) + object.__basicsize__ + 8``:
  ``PySSLSocket {PyObject_HEAD; PyObject *Socket; SSL *ssl; PySSLContext *ctx; ...}``.
* ``SSL_SESSION*`` at ``id(ssl_session) + object.__basicsize__`` (used by tests).

Offsets are never trusted: :func:`validate_ctx_pointer` flips options through ``ctx.options`` and
checks that ``SSL_CTX_get_options`` follows; :func:`ssl_pointer` checks the neighbouring
``PySSLContext*`` field and that ``SSL_get_SSL_CTX`` returns the context's own pointer. A wrong
offset then fails with :class:`TLSEngineError` ("pointers") instead of corrupting memory.

Everything returned to Python is a plain ``int`` (an address) or ``bytes``; the wrapper methods of
:class:`LibSSL` give every call a typed signature.
"""

from __future__ import annotations

import ctypes
import functools
import os
import ssl
import sys
from ctypes import (
    CFUNCTYPE,
    POINTER,
    c_char_p,
    c_int,
    c_long,
    c_size_t,
    c_uint,
    c_uint64,
    c_ulong,
    c_void_p,
)
from typing import Any

from gateproxy.errors import TLSEngineError

# --- constants (ssl.h, OpenSSL 3.0) -------------------------------------------------------------

SSL_CTRL_SESS_NUMBER = 20
SSL_CTRL_SESS_ACCEPT = 24
SSL_CTRL_SESS_HIT = 27
SSL_CTRL_SESS_CB_HIT = 28
SSL_CTRL_SESS_MISSES = 29
SSL_CTRL_SESS_TIMEOUTS = 30
SSL_CTRL_SESS_CACHE_FULL = 31
SSL_CTRL_SET_SESS_CACHE_SIZE = 42
SSL_CTRL_GET_SESS_CACHE_SIZE = 43
SSL_CTRL_SET_SESS_CACHE_MODE = 44
SSL_CTRL_GET_SESS_CACHE_MODE = 45
SSL_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list(ctx, "X25519:P-256") is this ctrl

SESS_CACHE_OFF = 0x0
SESS_CACHE_SERVER = 0x2
SESS_CACHE_NO_AUTO_CLEAR = 0x80
SESS_CACHE_NO_INTERNAL = 0x300
SESS_CACHE_UPDATE_TIME = 0x400

SSL_SENT_SHUTDOWN = 1  # SSL_get_shutdown / SSL_set_shutdown flags
SSL_RECEIVED_SHUTDOWN = 2
TLSEXT_NAMETYPE_HOST_NAME = 0  # SSL_get_servername type

TLS1_2_VERSION = 0x0303
TLS1_3_VERSION = 0x0304
MIN_OPENSSL = 0x30000000

# OSSL_PARAM data types (openssl/core.h)
OSSL_PARAM_UTF8_STRING = 4
OSSL_PARAM_OCTET_STRING = 5

# Offsets of the C pointers inside CPython's _ssl objects (patched by tests to prove validation).
CTX_OFFSET = object.__basicsize__
SSL_OFFSET = object.__basicsize__ + 8
SSL_CTXREF_OFFSET = object.__basicsize__ + 16
SESSION_OFFSET = object.__basicsize__

# --- callback prototypes ------------------------------------------------------------------------

# int new_session_cb(SSL *ssl, SSL_SESSION *sess)
NEW_SESSION_CB = CFUNCTYPE(c_int, c_void_p, c_void_p)
# SSL_SESSION *get_session_cb(SSL *ssl, const unsigned char *id, int len, int *copy)
GET_SESSION_CB = CFUNCTYPE(c_void_p, c_void_p, c_void_p, c_int, c_void_p)
# void remove_session_cb(SSL_CTX *ctx, SSL_SESSION *sess)
REMOVE_SESSION_CB = CFUNCTYPE(None, c_void_p, c_void_p)
# int generate_session_id_cb(SSL *ssl, unsigned char *id, unsigned int *id_len)
GEN_SESSION_ID_CB = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p)
# int ticket_key_evp_cb(SSL *s, uchar key_name[16], uchar *iv, EVP_CIPHER_CTX *, EVP_MAC_CTX *,
#                       int enc)
TICKET_KEY_EVP_CB = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_int)


class OSSLParam(ctypes.Structure):
    """``OSSL_PARAM {const char *key; unsigned data_type; void *data; size_t data_size;
    size_t return_size}``."""

    _fields_ = [
        ("key", c_char_p),
        ("data_type", c_uint),
        ("data", c_void_p),
        ("data_size", c_size_t),
        ("return_size", c_size_t),
    ]


_P = c_void_p
_PP = POINTER(c_void_p)

# attribute -> (library, C symbol, restype, argtypes). Tests patch a C name to prove the error.
SYMBOLS: dict[str, tuple[str, str, Any, list[Any]]] = {
    "version_num": ("crypto", "OpenSSL_version_num", c_ulong, []),
    "rand_bytes": ("crypto", "RAND_bytes", c_int, [_P, c_int]),
    "aes_256_cbc": ("crypto", "EVP_aes_256_cbc", _P, []),
    "aes_128_cbc": ("crypto", "EVP_aes_128_cbc", _P, []),
    "encrypt_init": ("crypto", "EVP_EncryptInit_ex", c_int, [_P, _P, _P, c_char_p, _P]),
    "decrypt_init": ("crypto", "EVP_DecryptInit_ex", c_int, [_P, _P, _P, c_char_p, _P]),
    "mac_set_params": ("crypto", "EVP_MAC_CTX_set_params", c_int, [_P, _P]),
    "ctx_ctrl": ("ssl", "SSL_CTX_ctrl", c_long, [_P, c_int, c_long, _P]),
    "ctx_get_options": ("ssl", "SSL_CTX_get_options", c_uint64, [_P]),
    "get_options": ("ssl", "SSL_get_options", c_uint64, [_P]),
    "ctx_get_num_tickets": ("ssl", "SSL_CTX_get_num_tickets", c_size_t, [_P]),
    "ctx_set_num_tickets": ("ssl", "SSL_CTX_set_num_tickets", c_int, [_P, c_size_t]),
    "ctx_set_timeout": ("ssl", "SSL_CTX_set_timeout", c_long, [_P, c_long]),
    "ctx_get_timeout": ("ssl", "SSL_CTX_get_timeout", c_long, [_P]),
    "ctx_flush_sessions": ("ssl", "SSL_CTX_flush_sessions", None, [_P, c_long]),
    "ctx_set_new_cb": ("ssl", "SSL_CTX_sess_set_new_cb", None, [_P, NEW_SESSION_CB]),
    "ctx_set_get_cb": ("ssl", "SSL_CTX_sess_set_get_cb", None, [_P, GET_SESSION_CB]),
    "ctx_set_remove_cb": ("ssl", "SSL_CTX_sess_set_remove_cb", None, [_P, REMOVE_SESSION_CB]),
    "ctx_set_ticket_cb": (
        "ssl",
        "SSL_CTX_set_tlsext_ticket_key_evp_cb",
        c_int,
        [_P, TICKET_KEY_EVP_CB],
    ),
    "ctx_set_generate_session_id": (
        "ssl",
        "SSL_CTX_set_generate_session_id",
        c_int,
        [_P, GEN_SESSION_ID_CB],
    ),
    "ctx_remove_session": ("ssl", "SSL_CTX_remove_session", c_int, [_P, _P]),
    "ctx_set_sid_ctx": ("ssl", "SSL_CTX_set_session_id_context", c_int, [_P, c_char_p, c_uint]),
    "get_ssl_ctx": ("ssl", "SSL_get_SSL_CTX", _P, [_P]),
    "get_session": ("ssl", "SSL_get_session", _P, [_P]),
    "new_session_ticket": ("ssl", "SSL_new_session_ticket", c_int, [_P]),
    "ssl_version": ("ssl", "SSL_version", c_int, [_P]),
    "session_reused": ("ssl", "SSL_session_reused", c_int, [_P]),
    "get_shutdown": ("ssl", "SSL_get_shutdown", c_int, [_P]),
    "shutdown": ("ssl", "SSL_shutdown", c_int, [_P]),
    "is_init_finished": ("ssl", "SSL_is_init_finished", c_int, [_P]),
    "get_servername": ("ssl", "SSL_get_servername", c_char_p, [_P, c_int]),
    "err_clear": ("crypto", "ERR_clear_error", None, []),
    "session_get_id": ("ssl", "SSL_SESSION_get_id", _P, [_P, POINTER(c_uint)]),
    "i2d_session": ("ssl", "i2d_SSL_SESSION", c_int, [_P, _PP]),
    "d2i_session": ("ssl", "d2i_SSL_SESSION", _P, [_P, _PP, c_long]),
    "session_free": ("ssl", "SSL_SESSION_free", None, [_P]),
}

LIB_PREFIXES = {"ssl": "libssl.so", "crypto": "libcrypto.so"}


def mapped_libraries(maps_text: str | None = None) -> dict[str, list[str]]:
    """The distinct ``libssl.so*`` / ``libcrypto.so*`` paths mapped into this process."""
    if maps_text is None:
        import _ssl  # noqa: F401  (make sure the libraries are mapped)

        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            maps_text = maps.read()
    found: dict[str, set[str]] = {kind: set() for kind in LIB_PREFIXES}
    for line in maps_text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        path = parts[5].strip()
        base = os.path.basename(path)
        for kind, prefix in LIB_PREFIXES.items():
            if base.startswith(prefix):
                found[kind].add(path)
    return {kind: sorted(paths) for kind, paths in found.items()}


def check_platform() -> None:
    """Step "platform": Linux and CPython (the offsets are CPython's ``_ssl`` structs)."""
    if not sys.platform.startswith("linux"):
        raise TLSEngineError(
            "platform", f"needs Linux (found {sys.platform}); use tls_engine: stdlib_only"
        )
    if sys.implementation.name != "cpython":
        raise TLSEngineError(
            "platform",
            f"needs CPython (found {sys.implementation.name}); use tls_engine: stdlib_only",
        )
    if not 7 <= sys.version_info.minor <= 13 or sys.version_info.major != 3:
        raise TLSEngineError(
            "platform",
            f"the _ssl object layout is verified for CPython 3.7-3.13, found "
            f"{sys.version_info.major}.{sys.version_info.minor}; use tls_engine: stdlib_only",
        )


def find_library_paths() -> dict[str, str]:
    """Step "libraries": exactly one mapped libssl and one libcrypto."""
    mapped = mapped_libraries()
    out: dict[str, str] = {}
    for kind, paths in mapped.items():
        if len(paths) != 1:
            raise TLSEngineError(
                "libraries",
                f"expected exactly one mapped {LIB_PREFIXES[kind]}*, found {paths or 'none'} "
                "(a Python with a statically linked _ssl cannot be controlled; "
                "use tls_engine: stdlib_only)",
            )
        out[kind] = paths[0]
    return out


class LibSSL:
    """Typed access to the process's libssl/libcrypto. Build with :func:`get_libssl`."""

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = dict(paths)
        self._libs = {kind: ctypes.CDLL(path) for kind, path in paths.items()}
        self._check_version()
        self._fn: dict[str, Any] = {}
        for attr, (kind, name, restype, argtypes) in SYMBOLS.items():
            try:
                fn = getattr(self._libs[kind], name)
            except AttributeError:
                raise TLSEngineError(
                    "symbols",
                    f"{self.paths[kind]} does not export {name}; this OpenSSL build cannot "
                    "be controlled (use tls_engine: stdlib_only)",
                ) from None
            fn.restype = restype
            fn.argtypes = argtypes
            self._fn[attr] = fn
        self.cipher_aes_256_cbc = int(self._fn["aes_256_cbc"]())
        self.cipher_aes_128_cbc = int(self._fn["aes_128_cbc"]())

    def _check_version(self) -> None:
        try:
            fn = self._libs["crypto"].OpenSSL_version_num
        except AttributeError:
            raise TLSEngineError("version", "libcrypto exports no OpenSSL_version_num") from None
        fn.restype = c_ulong
        fn.argtypes = []
        found = int(fn())
        if found != ssl.OPENSSL_VERSION_NUMBER:
            raise TLSEngineError(
                "version",
                f"mapped libcrypto is {found:#x} but the ssl module reports "
                f"{ssl.OPENSSL_VERSION_NUMBER:#x}; two OpenSSL builds are loaded",
            )
        if found < MIN_OPENSSL:
            raise TLSEngineError(
                "version", f"OpenSSL {found:#x} is older than 3.0; upgrade or use stdlib_only"
            )
        self.version = found

    # --- SSL_CTX --------------------------------------------------------------------------------

    def ctx_ctrl(self, ctx: int, cmd: int, larg: int = 0) -> int:
        return int(self._fn["ctx_ctrl"](ctx, cmd, larg, None))

    def ctx_get_options(self, ctx: int) -> int:
        return int(self._fn["ctx_get_options"](ctx))

    def ctx_get_num_tickets(self, ctx: int) -> int:
        return int(self._fn["ctx_get_num_tickets"](ctx))

    def ctx_set_num_tickets(self, ctx: int, n: int) -> bool:
        return bool(self._fn["ctx_set_num_tickets"](ctx, n))

    def ctx_set_timeout(self, ctx: int, seconds: int) -> None:
        self._fn["ctx_set_timeout"](ctx, seconds)

    def ctx_get_timeout(self, ctx: int) -> int:
        return int(self._fn["ctx_get_timeout"](ctx))

    def ctx_flush_sessions(self, ctx: int, at: int) -> None:
        self._fn["ctx_flush_sessions"](ctx, at)

    def ctx_set_session_callbacks(self, ctx: int, new: Any, get: Any, remove: Any) -> None:
        """Install CFUNCTYPE thunks (the caller keeps them alive forever)."""
        self._fn["ctx_set_new_cb"](ctx, new)
        self._fn["ctx_set_get_cb"](ctx, get)
        self._fn["ctx_set_remove_cb"](ctx, remove)

    def ctx_set_ticket_cb(self, ctx: int, cb: Any) -> bool:
        return bool(self._fn["ctx_set_ticket_cb"](ctx, cb))

    def ctx_set_generate_session_id(self, ctx: int, cb: Any) -> bool:
        """Install a CFUNCTYPE ``GEN_SESSION_ID_CB`` thunk (the caller keeps it alive)."""
        return bool(self._fn["ctx_set_generate_session_id"](ctx, cb))

    def ctx_remove_session(self, ctx: int, session: int) -> bool:
        return bool(self._fn["ctx_remove_session"](ctx, session))

    def ctx_set_groups_list(self, ctx: int, groups: str) -> bool:
        """``SSL_CTX_set1_groups_list``: False when OpenSSL rejects the list (unknown or
        repeated name); the error queue is cleared so that Python's ``ssl`` does not read it."""
        ok = int(self._fn["ctx_ctrl"](ctx, SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode())) == 1
        if not ok:
            self._fn["err_clear"]()
        return ok

    def ctx_set_session_id_context(self, ctx: int, sid_ctx: bytes) -> bool:
        """``SSL_CTX_set_session_id_context`` (at most 32 bytes, ``SSL_MAX_SID_CTX_LENGTH``)."""
        return bool(self._fn["ctx_set_sid_ctx"](ctx, sid_ctx, len(sid_ctx)))

    # --- SSL ------------------------------------------------------------------------------------

    def get_ssl_ctx(self, ssl_ptr: int) -> int:
        return int(self._fn["get_ssl_ctx"](ssl_ptr) or 0)

    def get_options(self, ssl_ptr: int) -> int:
        return int(self._fn["get_options"](ssl_ptr))

    def get_session(self, ssl_ptr: int) -> int:
        return int(self._fn["get_session"](ssl_ptr) or 0)

    def new_session_ticket(self, ssl_ptr: int) -> bool:
        return bool(self._fn["new_session_ticket"](ssl_ptr))

    def ssl_version(self, ssl_ptr: int) -> int:
        return int(self._fn["ssl_version"](ssl_ptr))

    def session_reused(self, ssl_ptr: int) -> bool:
        return bool(self._fn["session_reused"](ssl_ptr))

    def get_shutdown(self, ssl_ptr: int) -> int:
        return int(self._fn["get_shutdown"](ssl_ptr))

    def shutdown(self, ssl_ptr: int) -> int:
        """``SSL_shutdown``; clears the error queue when it fails (Python's ssl reads it)."""
        result = int(self._fn["shutdown"](ssl_ptr))
        if result < 0:
            self._fn["err_clear"]()
        return result

    def is_init_finished(self, ssl_ptr: int) -> bool:
        return bool(self._fn["is_init_finished"](ssl_ptr))

    def get_servername(self, ssl_ptr: int) -> bytes:
        """``SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)``: the SNI, ``b""`` if none."""
        name = self._fn["get_servername"](ssl_ptr, TLSEXT_NAMETYPE_HOST_NAME)
        return bytes(name) if name else b""

    # --- SSL_SESSION ----------------------------------------------------------------------------

    def session_id(self, session: int) -> bytes:
        length = c_uint(0)
        ptr = self._fn["session_get_id"](session, ctypes.byref(length))
        if not ptr or not length.value:
            return b""
        return ctypes.string_at(ptr, length.value)

    def session_to_der(self, session: int) -> bytes:
        size = int(self._fn["i2d_session"](session, None))
        if size <= 0:
            return b""
        buf = ctypes.create_string_buffer(size)
        cursor = c_void_p(ctypes.addressof(buf))
        written = int(self._fn["i2d_session"](session, ctypes.byref(cursor)))
        return buf.raw[:written] if written > 0 else b""

    def session_from_der(self, der: bytes) -> int:
        """A new ``SSL_SESSION*`` (one reference, owned by the caller) or 0."""
        buf = ctypes.create_string_buffer(der, len(der))
        cursor = c_void_p(ctypes.addressof(buf))
        return int(self._fn["d2i_session"](None, ctypes.byref(cursor), len(der)) or 0)

    def session_free(self, session: int) -> None:
        self._fn["session_free"](session)

    # --- libcrypto ------------------------------------------------------------------------------

    def rand_bytes(self, dest: int, n: int) -> bool:
        return int(self._fn["rand_bytes"](dest, n)) == 1

    def encrypt_init(self, cctx: int, cipher: int, key: bytes, iv: int) -> bool:
        return int(self._fn["encrypt_init"](cctx, cipher, None, key, iv)) == 1

    def decrypt_init(self, cctx: int, cipher: int, key: bytes, iv: int) -> bool:
        return int(self._fn["decrypt_init"](cctx, cipher, None, key, iv)) == 1

    def mac_set_params(self, hctx: int, params: ctypes.Array[OSSLParam]) -> bool:
        return int(self._fn["mac_set_params"](hctx, params)) == 1


def load_libssl() -> LibSSL:
    """Run the platform, libraries, version and symbols steps and return a fresh handle."""
    check_platform()
    return LibSSL(find_library_paths())


@functools.cache
def get_libssl() -> LibSSL:
    """The process-wide handle (loaded and checked once)."""
    return load_libssl()


# --- pointers -----------------------------------------------------------------------------------


def _read_pointer(address: int) -> int:
    return int(c_void_p.from_address(address).value or 0)


def ctx_pointer(ctx: ssl.SSLContext) -> int:
    """The ``SSL_CTX*`` behind ``ctx`` (not validated: see :func:`validate_ctx_pointer`)."""
    if not isinstance(ctx, ssl.SSLContext):
        raise TypeError(f"expected an ssl.SSLContext, got {type(ctx).__name__}")
    return _read_pointer(id(ctx) + CTX_OFFSET)


def validate_ctx_pointer(lib: LibSSL, ctx: ssl.SSLContext) -> int:
    """Return the validated ``SSL_CTX*`` of ``ctx``; TLSEngineError("pointers") if it is wrong.

    Flips ``OP_NO_TICKET`` and ``OP_NO_RENEGOTIATION`` through ``ctx.options`` (restoring them)
    and checks that ``SSL_CTX_get_options`` follows every change.
    """
    ptr = ctx_pointer(ctx)
    if not ptr:
        raise TLSEngineError("pointers", f"SSL_CTX pointer at offset {CTX_OFFSET} is NULL")
    original = ctx.options
    try:
        for flag in (ssl.OP_NO_TICKET, ssl.OP_NO_RENEGOTIATION):
            for options in (original ^ flag, original):
                ctx.options = options
                if lib.ctx_get_options(ptr) & flag != options & flag:
                    raise TLSEngineError(
                        "pointers",
                        f"SSL_CTX_get_options at offset {CTX_OFFSET} does not follow "
                        f"ctx.options ({flag!r}); the _ssl object layout differs",
                    )
    finally:
        ctx.options = original
    return ptr


def ssl_pointer(ssl_object: ssl.SSLObject) -> int:
    """The validated ``SSL*`` of an ``ssl.SSLObject`` (``ServerTLSStream.ssl_object``)."""
    return ssl_pointer_checked(get_libssl(), ssl_object)


_LAYOUT_SEEN: set[tuple[int, int, int]] = set()
"""(SSL_OFFSET, SSL_CTXREF_OFFSET, CTX_OFFSET) combinations a full check passed in this process."""


def ssl_pointer_checked(lib: LibSSL, ssl_object: ssl.SSLObject) -> int:
    """:func:`ssl_pointer` with an explicit library handle.

    The object layout cannot change within a process: once the full check passed for the
    current offsets, later calls only check the type and read the pointer (two to four calls
    per connection, so this is on the per-connection path)."""
    inner: object = getattr(ssl_object, "_sslobj", None)
    context: object = getattr(inner, "context", None)
    if inner is None or not isinstance(context, ssl.SSLContext):
        raise TLSEngineError("pointers", "not an ssl.SSLObject wrapping an _ssl._SSLSocket")
    base = id(inner)
    layout = (SSL_OFFSET, SSL_CTXREF_OFFSET, CTX_OFFSET)
    if layout in _LAYOUT_SEEN:
        ptr = _read_pointer(base + SSL_OFFSET)
        if not ptr:
            raise TLSEngineError("pointers", f"SSL pointer at offset {SSL_OFFSET} is NULL")
        return ptr
    if _read_pointer(base + SSL_CTXREF_OFFSET) != id(context):
        raise TLSEngineError(
            "pointers",
            f"no PySSLContext* at offset {SSL_CTXREF_OFFSET} of _ssl._SSLSocket; "
            "the _ssl object layout differs",
        )
    ptr = _read_pointer(base + SSL_OFFSET)
    if not ptr:
        raise TLSEngineError("pointers", f"SSL pointer at offset {SSL_OFFSET} is NULL")
    if lib.get_ssl_ctx(ptr) != ctx_pointer(context):
        raise TLSEngineError(
            "pointers",
            f"SSL_get_SSL_CTX of the SSL* at offset {SSL_OFFSET} is not the context's SSL_CTX*",
        )
    _LAYOUT_SEEN.add(layout)
    return ptr


def server_name(ssl_object: ssl.SSLObject) -> str:
    """The server name (SNI) a server-side connection's client sent, ``""`` when none (or when
    the pointer checks fail: this is for logs, never worth an error)."""
    try:
        lib = get_libssl()
        return lib.get_servername(ssl_pointer_checked(lib, ssl_object)).decode("ascii", "replace")
    except TLSEngineError:
        return ""


def session_pointer(session: ssl.SSLSession) -> int:
    """The ``SSL_SESSION*`` inside an ``ssl.SSLSession`` (tests and diagnostics)."""
    if not isinstance(session, ssl.SSLSession):
        raise TypeError(f"expected an ssl.SSLSession, got {type(session).__name__}")
    return _read_pointer(id(session) + SESSION_OFFSET)
