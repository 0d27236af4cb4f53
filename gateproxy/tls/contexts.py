"""One listener's TLS configuration as stdlib ``ssl.SSLContext`` objects.

Theory of operation
-------------------
A listener gets two *entry* contexts, both server side:

* ``main``: every ordinary client starts its handshake here.
* ``probe``: the same certificates, versions, ciphers and ALPN, but ``OP_NO_TICKET`` and
  ``num_tickets = 0``, for health checkers chosen by source address *before* the handshake
  (see tls-engine.md, "Health checks that leave no TLS state"). The ctypes layer will also turn
  the session cache off on it; the stdlib cannot.

Certificates are chosen by server name first, then by key type. An ``SSL_CTX`` holds one
certificate per key type (RSA, EC, Ed25519, ...) and OpenSSL serves the one the client can verify
(TLS 1.3 ``signature_algorithms``; TLS 1.2 the cipher's authentication, ECDHE-ECDSA or ECDHE-RSA),
so a context is made per *group*: the certificates, at most one per key type, that serve a name
(:meth:`SniTable.choose`). The default group (clients without SNI, or with a name no certificate
carries) is the first certificate plus, per other key type, the first certificate with exactly
its SAN names. The default group's contexts are the entry contexts; each entry context has an
``sni_callback`` that switches ``ssl_object.context`` to the context of the name's group.

The SNI trap: switching ``ssl_object.context`` only swaps the certificate (and the ALPN
callback, which OpenSSL reads from the current ``SSL_CTX``). Options, ``num_tickets``, the
protocol versions, the key-exchange groups, the ticket-key callback, the session cache and the
session id context that resumption checks stay with the *entry* context the connection started
on. So every per-group context is configured exactly like its entry context (one function,
:func:`_configure`, does both) so that nothing depends on which of the two OpenSSL happens to
consult, and anything session-related (ticket keys, cache size, session callbacks) belongs on
``main`` and ``probe`` only, through a per-listener closure.

Session id context: OpenSSL binds every session (cache entry or ticket) to the server context's
``sid_ctx`` and resumes only sessions carrying the same bytes. CPython sets ``Python`` and its
NUL (7 bytes); nginx's http module sets ``SHA1("HTTP" | SHA1(cert DER) for each certificate,
last configured first)`` (``ngx_ssl_session_id_context``; client CA names too when client
certificates are verified, which gateproxy does not do). ``tls.session_id_context: nginx`` (the
default) computes nginx's value from each context's own certificates (as nginx does per
``server`` block), so gateproxy beside nginx on the same certificates and ticket key file
resumes nginx's sessions and nginx resumes gateproxy's. Measured on OpenSSL 3.0: a session is
bound to, and resumption checked against, the *entry* context's value even when SNI switches
(the check runs before the servername callback), so what must match nginx is the default
group, in nginx's order.

Certificate checks (files readable, PEM, key matches certificate, not expired) are done with
the ``cryptography`` package first so that each problem names its file and dotted config path;
then the pair is loaded with ``ssl`` and any ``ssl.SSLError`` becomes a problem as well. The
group names of ``tls.curves`` are checked against the running OpenSSL the same way.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from gateproxy.core.config import DEFAULT_CURVES, TLSConfig
from gateproxy.errors import ConfigError, ConfigProblem, TLSEngineError
from gateproxy.tls import libssl as L
from gateproxy.tls.sni import SniTable

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_ALPN = ["http/1.1"]
# OpenSSL keeps one certificate per key type in an SSL_CTX (every EC curve shares one slot).
_KEY_TYPES: tuple[tuple[type, str], ...] = (
    (rsa.RSAPrivateKey, "RSA"),
    (ec.EllipticCurvePrivateKey, "EC"),
    (ed25519.Ed25519PrivateKey, "Ed25519"),
    (ed448.Ed448PrivateKey, "Ed448"),
    (dsa.DSAPrivateKey, "DSA"),
)
_NGINX_HTTP_SID_PREFIX = b"HTTP"  # ngx_http_ssl_sess_id_ctx


@dataclass(frozen=True)
class CertificateInfo:
    """What was read from one configured certificate at load time."""

    cert_path: Path
    key_path: Path
    dns_names: tuple[str, ...]  # SAN DNS names, lower case, as written ("*.example.com")
    not_valid_after: datetime  # UTC
    key_type: str  # "RSA", "EC", "Ed25519", ...: the SSL_CTX slot it occupies
    ip_addresses: tuple[str, ...]  # SAN IP addresses
    sha1: bytes  # SHA-1 of the leaf's DER (nginx's X509_digest, in its session id context)


def default_group(infos: Sequence[CertificateInfo]) -> tuple[int, ...]:
    """The certificates for clients without SNI (or with an unknown name): the first one, and
    per other key type the first certificate with exactly the same SAN names (DNS and IP)."""
    if not infos:
        return ()
    first = infos[0]
    names = (frozenset(first.dns_names), frozenset(first.ip_addresses))
    chosen = {first.key_type: 0}
    for index, info in enumerate(infos[1:], start=1):
        if (frozenset(info.dns_names), frozenset(info.ip_addresses)) == names:
            chosen.setdefault(info.key_type, index)
    return tuple(sorted(chosen.values()))


def nginx_session_id_context(infos: Sequence[CertificateInfo]) -> bytes:
    """What nginx's http module sets for a server block with these certificates, in this order
    (``ngx_ssl_session_id_context``: its certificate list runs from the last configured)."""
    digest = hashlib.sha1(_NGINX_HTTP_SID_PREFIX, usedforsecurity=False)
    for info in reversed(infos):
        digest.update(info.sha1)
    return digest.digest()


@dataclass(frozen=True)
class ListenerContexts:
    """The contexts of one TLS listener; pick ``probe`` for known health checkers."""

    main: ssl.SSLContext
    probe: ssl.SSLContext
    certificates: tuple[CertificateInfo, ...]
    sni: SniTable = field(repr=False, compare=False)


# --- checks -------------------------------------------------------------------------------------


def check_certificates(
    tls: TLSConfig, *, base_dir: Path, path: str, now: datetime | None = None
) -> list[ConfigProblem]:
    """Check every certificate/key pair of ``tls``; return one problem per defect found.

    ``path`` is the dotted prefix of ``tls`` in the config (``"listeners[0].tls"``); problems
    point at ``<path>.certificates[i].cert`` or ``.key``. Relative file names resolve against
    ``base_dir``. A certificate already expired at ``now`` (default: the current time) is a
    problem, since every client would refuse it; one that expires soon, or is not yet valid
    (clock skew at issuance), is not.
    """
    return _inspect(tls, base_dir=base_dir, path=path, now=now)[1]


def check_tls_settings(tls: TLSConfig, *, path: str, degraded: bool = False) -> list[ConfigProblem]:
    """Check the settings that OpenSSL itself must accept: version order, the cipher list and
    the key-exchange groups (``degraded``: ``tls_engine: stdlib_only``, which can set one)."""
    problems: list[ConfigProblem] = []
    if _VERSIONS[tls.min_version] > _VERSIONS[tls.max_version]:
        problems.append(
            ConfigProblem(
                f"{path}.min_version",
                f"min_version {tls.min_version!r} is above max_version {tls.max_version!r}",
            )
        )
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(tls.ciphers)
    except ssl.SSLError as exc:
        problems.append(
            ConfigProblem(
                f"{path}.ciphers",
                f"OpenSSL accepts no TLS 1.2 cipher from {tls.ciphers!r} ({_ssl_reason(exc)})",
            )
        )
    message = _curves_problem(tls.curves, degraded=degraded)
    if message:
        problems.append(ConfigProblem(f"{path}.curves", message))
    return problems


def _curves_problem(curves: str, *, degraded: bool) -> str | None:
    names = curves.split(":")
    if degraded:
        if curves == DEFAULT_CURVES:
            return None  # documented: stdlib_only keeps OpenSSL's default groups
        if len(names) > 1:
            return (
                f"tls_engine: stdlib_only can restrict the groups to one curve only, got {curves!r}"
            )
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ecdh_curve(curves)
        except ValueError:
            return f"unknown curve {curves!r} (Python's ssl takes OpenSSL short names)"
        return None
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        return f"group {repeated[0]!r} is listed twice in {curves!r}"
    lib = L.get_libssl()
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ptr = L.validate_ctx_pointer(lib, scratch)
    if lib.ctx_set_groups_list(ptr, curves):
        return None
    unknown = ", ".join(n for n in names if not lib.ctx_set_groups_list(ptr, n))
    return (
        f"OpenSSL does not know the group(s) {unknown or repr(curves)} "
        "(e.g. X25519, prime256v1, secp384r1)"
    )


def _inspect(
    tls: TLSConfig, *, base_dir: Path, path: str, now: datetime | None
) -> tuple[list[CertificateInfo], list[ConfigProblem]]:
    moment = now if now is not None else datetime.now(UTC)
    infos: list[CertificateInfo] = []
    problems: list[ConfigProblem] = []
    for i, pair in enumerate(tls.certificates):
        cert_path = _resolve(base_dir, pair.cert)
        key_path = _resolve(base_dir, pair.key)
        info, found = _inspect_pair(cert_path, key_path, f"{path}.certificates[{i}]", moment)
        if info is not None:
            infos.append(info)
        problems.extend(found)
    return infos, problems


def _inspect_pair(
    cert_path: Path, key_path: Path, where: str, moment: datetime
) -> tuple[CertificateInfo | None, list[ConfigProblem]]:
    found: list[ConfigProblem] = []
    leaf = _read_certificate(cert_path, f"{where}.cert", found)
    key = _read_key(key_path, f"{where}.key", found)
    if leaf is None or key is None:
        return None, found
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        message = f"private key '{key_path}' does not match certificate '{cert_path}'"
        found.append(ConfigProblem(f"{where}.key", message))
    expiry = leaf.not_valid_after_utc
    if expiry < moment:
        message = f"certificate '{cert_path}' expired on {expiry.isoformat()}"
        found.append(ConfigProblem(f"{where}.cert", message))
    if found:
        return None, found
    # What cryptography accepts, OpenSSL may still refuse (e.g. a key too small for the
    # security level): load the pair the way the listener will.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, OSError) as exc:
        return None, [_load_problem(where, cert_path, key_path, exc)]
    info = CertificateInfo(
        cert_path=cert_path,
        key_path=key_path,
        dns_names=_san_values(leaf, x509.DNSName),
        not_valid_after=expiry,
        key_type=_key_type(key),
        ip_addresses=_san_values(leaf, x509.IPAddress),
        sha1=leaf.fingerprint(hashes.SHA1()),
    )
    return info, []


def _resolve(base_dir: Path, name: str) -> Path:
    candidate = Path(name).expanduser()
    return candidate if candidate.is_absolute() else base_dir / candidate


def _read_bytes(file: Path, what: str, where: str, problems: list[ConfigProblem]) -> bytes | None:
    try:
        return file.read_bytes()
    except OSError as exc:
        problems.append(ConfigProblem(where, f"cannot read {what} '{file}': {exc.strerror}"))
        return None


def _read_certificate(
    file: Path, where: str, problems: list[ConfigProblem]
) -> x509.Certificate | None:
    data = _read_bytes(file, "certificate file", where, problems)
    if data is None:
        return None
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        problems.append(ConfigProblem(where, f"'{file}' is not a PEM certificate"))
        return None
    return chain[0]  # the leaf; intermediates follow it in the same file


def _read_key(file: Path, where: str, problems: list[ConfigProblem]) -> PrivateKeyTypes | None:
    data = _read_bytes(file, "key file", where, problems)
    if data is None:
        return None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        problems.append(
            ConfigProblem(where, f"private key '{file}' is encrypted; give an unencrypted key")
        )
    except (ValueError, UnsupportedAlgorithm):
        problems.append(ConfigProblem(where, f"'{file}' is not a PEM private key"))
    return None


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _san_values(
    cert: x509.Certificate, kind: type[x509.DNSName] | type[x509.IPAddress]
) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(value).lower() for value in san.get_values_for_type(kind))


def _key_type(key: PrivateKeyTypes) -> str:
    for cls, name in _KEY_TYPES:
        if isinstance(key, cls):
            return name
    return type(key).__name__


def _ssl_reason(exc: ssl.SSLError) -> str:
    # "[SSL: EE_KEY_TOO_SMALL] ee key too small (_ssl.c:3905)" -> without the C source location
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", exc.strerror or str(exc))


def _load_problem(where: str, cert: Path, key: Path, exc: Exception) -> ConfigProblem:
    reason = _ssl_reason(exc) if isinstance(exc, ssl.SSLError) else str(exc)
    return ConfigProblem(f"{where}.cert", f"OpenSSL cannot load '{cert}' with '{key}': {reason}")


# --- building -----------------------------------------------------------------------------------


def build_listener_contexts(
    tls: TLSConfig,
    *,
    base_dir: Path,
    source: str = "<config>",
    path: str = "tls",
    degraded: bool = False,
) -> ListenerContexts:
    """Build the ``main`` and ``probe`` contexts of one listener.

    Raises :class:`ConfigError` (with ``source`` as the file and ``path`` as the dotted prefix
    of ``tls``) listing every problem: unreadable, mismatched or expired certificates, a
    cipher list or group names OpenSSL rejects, versions in the wrong order. ``degraded``
    (``tls_engine: stdlib_only``) touches no ctypes: groups through ``set_ecdh_curve`` only,
    Python's session id context.
    """
    infos, problems = _inspect(tls, base_dir=base_dir, path=path, now=None)
    problems += check_tls_settings(tls, path=path, degraded=degraded)
    if problems:
        raise ConfigError(source, problems)
    sni = SniTable([info.dns_names for info in infos], key_types=[i.key_type for i in infos])
    try:
        main = _entry_context(tls, infos, sni, probe=False, degraded=degraded)
        probe = _entry_context(tls, infos, sni, probe=True, degraded=degraded)
    except (ssl.SSLError, OSError) as exc:  # a file changed between the check and the load
        info = infos[0]
        raise ConfigError(
            source,
            [_load_problem(f"{path}.certificates", info.cert_path, info.key_path, exc)],
        ) from exc
    return ListenerContexts(main=main, probe=probe, certificates=tuple(infos), sni=sni)


def _entry_context(
    tls: TLSConfig,
    infos: Sequence[CertificateInfo],
    sni: SniTable,
    *,
    probe: bool,
    degraded: bool,
) -> ssl.SSLContext:
    default = default_group(infos)
    per_group = {
        group: _configure(tls, [infos[i] for i in group], probe=probe, degraded=degraded)
        for group in sni.groups() | {default}
    }
    entry = per_group[default]

    def choose_certificates(
        ssl_object: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext
    ) -> int | None:
        chosen = per_group.get(sni.choose(server_name))
        if chosen is not None and chosen is not entry:
            ssl_object.context = chosen
        return None  # never abort: an unknown name gets the default certificates

    if len(per_group) > 1:
        entry.sni_callback = choose_certificates
    return entry


def _configure(
    tls: TLSConfig, infos: Sequence[CertificateInfo], *, probe: bool, degraded: bool
) -> ssl.SSLContext:
    """One server context; every context of a listener is made here, hence identical."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.maximum_version = _VERSIONS[tls.max_version]
    ctx.set_ciphers(tls.ciphers)  # TLS 1.2 suites; TLS 1.3 keeps OpenSSL's default suites
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # Mozilla "intermediate" leaves the choice to the client (prefer_server_ciphers: false):
    # every suite on the list is strong, and clients know best (e.g. ChaCha20 on CPUs without
    # AES-NI). CPython sets the flag by default, so clear it explicitly. It also decides whose
    # signature algorithm order picks between an ECDSA and an RSA certificate.
    if tls.prefer_server_ciphers:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    # A client that closes without close_notify (http.client, many load balancers) is an
    # "unexpected EOF": without this flag OpenSSL 3 treats it as a fatal error, sends an alert
    # and removes the session from the cache, so TLS 1.2 session-id resumption would only
    # survive connections the server closed. HTTP/1.1 framing detects truncated requests.
    ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    ctx.set_alpn_protocols(_ALPN)
    tickets = tls.tickets.enabled and not probe
    ctx.num_tickets = tls.tickets.per_handshake if tickets else 0
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    for info in infos:  # one per key type: OpenSSL keeps each in its own slot
        ctx.load_cert_chain(info.cert_path, info.key_path)
    if degraded:
        if tls.curves != DEFAULT_CURVES:
            ctx.set_ecdh_curve(tls.curves)  # check_tls_settings allowed a single curve only
    else:
        _set_groups_and_session_id_context(ctx, tls, infos)
    return ctx


def _set_groups_and_session_id_context(
    ctx: ssl.SSLContext, tls: TLSConfig, infos: Sequence[CertificateInfo]
) -> None:
    """What the stdlib cannot set: the key-exchange groups and the session id context."""
    lib = L.get_libssl()
    ptr = L.validate_ctx_pointer(lib, ctx)
    if not lib.ctx_set_groups_list(ptr, tls.curves):
        raise TLSEngineError("groups", f"SSL_CTX_set1_groups_list({tls.curves!r}) failed")
    if tls.session_id_context == "python":
        return  # CPython's "Python" (and NUL), set when the context was made
    if tls.session_id_context == "nginx":
        sid_ctx = nginx_session_id_context(infos)
    else:
        sid_ctx = bytes.fromhex(tls.session_id_context)
    if not lib.ctx_set_session_id_context(ptr, sid_ctx):
        raise TLSEngineError("session_id_context", "SSL_CTX_set_session_id_context failed")
