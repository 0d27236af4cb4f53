"""One listener's TLS configuration as stdlib ``ssl.SSLContext`` objects.

Theory of operation
-------------------
A listener gets two *entry* contexts, both server side:

* ``main``: every ordinary client starts its handshake here.
* ``probe``: the same certificates, versions, ciphers and ALPN, but ``OP_NO_TICKET`` and
  ``num_tickets = 0``, for health checkers chosen by source address *before* the handshake
  (see tls-engine.md, "Health checks that leave no TLS state"). The ctypes layer will also turn
  the session cache off on it; the stdlib cannot.

The first configured certificate is loaded into both entry contexts and is the default. Every
other certificate gets its own pair of per-certificate contexts (one configured like ``main``,
one like ``probe``), and each entry context has an ``sni_callback`` that looks the client's
server name up in an :class:`SniTable` and switches ``ssl_object.context`` to the matching
per-certificate context. Unknown names and clients without SNI keep the default certificate.

The SNI trap: switching ``ssl_object.context`` only swaps the certificate (and the ALPN
callback, which OpenSSL reads from the current ``SSL_CTX``). Options, ``num_tickets``, the
protocol versions, the ticket-key callback and the session cache stay with the *entry* context
the connection started on. So every per-certificate context is configured exactly like its
entry context (one function, :func:`_configure`, does both) so that nothing depends on which
of the two OpenSSL happens to consult, and anything session-related (ticket keys, cache size,
session callbacks) belongs on ``main`` and ``probe`` only, through a per-listener closure.

Certificate checks (files readable, PEM, key matches certificate, not expired) are done with
the ``cryptography`` package first so that each problem names its file and dotted config path;
then the pair is loaded with ``ssl`` and any ``ssl.SSLError`` becomes a problem as well.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from gateproxy.core.config import TLSConfig
from gateproxy.errors import ConfigError, ConfigProblem

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_ALPN = ["http/1.1"]


@dataclass(frozen=True)
class CertificateInfo:
    """What was read from one configured certificate at load time."""

    cert_path: Path
    key_path: Path
    dns_names: tuple[str, ...]  # SAN DNS names, lower case, as written ("*.example.com")
    not_valid_after: datetime  # UTC


class SniTable:
    """Server name -> index of the certificate that serves it (0 = the default).

    Matching follows RFC 6125 on the certificates' SAN DNS names only (the subject CN is
    ignored, as browsers do): case-insensitive, a trailing dot ignored, exact names first
    across all certificates, then wildcards. A wildcard is a whole leftmost ``*`` label that
    matches exactly one label: ``*.example.com`` matches ``a.example.com`` but neither
    ``example.com`` nor ``a.b.example.com``. Partial-label wildcards (``w*.example.com``) and
    wildcards directly over a single label (``*.com``) never match. When several certificates
    carry the same name, the first one configured wins.
    """

    def __init__(self, names_per_certificate: Sequence[Sequence[str]]) -> None:
        self._exact: dict[str, int] = {}
        self._wildcard: dict[str, int] = {}  # "example.com" for "*.example.com"
        for index, names in enumerate(names_per_certificate):
            for raw in names:
                name = _normalise(raw)
                if name.startswith("*."):
                    suffix = name[2:]
                    if "." in suffix and "*" not in suffix:
                        self._wildcard.setdefault(suffix, index)
                elif name and "*" not in name:
                    self._exact.setdefault(name, index)

    def lookup(self, server_name: str | None) -> int:
        """Return the index of the certificate for ``server_name`` (0 when nothing matches)."""
        if not server_name:
            return 0
        name = _normalise(server_name)
        found = self._exact.get(name)
        if found is not None:
            return found
        first, dot, rest = name.partition(".")
        if first and dot:
            return self._wildcard.get(rest, 0)
        return 0


def _normalise(name: str) -> str:
    return name.strip().rstrip(".").lower()


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


def check_tls_settings(tls: TLSConfig, *, path: str) -> list[ConfigProblem]:
    """Check the settings that OpenSSL itself must accept: version order and the cipher list."""
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
    return problems


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
        dns_names=_dns_names(leaf),
        not_valid_after=expiry,
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


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(name.lower() for name in san.get_values_for_type(x509.DNSName))


def _ssl_reason(exc: ssl.SSLError) -> str:
    # "[SSL: EE_KEY_TOO_SMALL] ee key too small (_ssl.c:3905)" -> without the C source location
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", exc.strerror or str(exc))


def _load_problem(where: str, cert: Path, key: Path, exc: Exception) -> ConfigProblem:
    reason = _ssl_reason(exc) if isinstance(exc, ssl.SSLError) else str(exc)
    return ConfigProblem(f"{where}.cert", f"OpenSSL cannot load '{cert}' with '{key}': {reason}")


# --- building -----------------------------------------------------------------------------------


def build_listener_contexts(
    tls: TLSConfig, *, base_dir: Path, source: str = "<config>", path: str = "tls"
) -> ListenerContexts:
    """Build the ``main`` and ``probe`` contexts of one listener.

    Raises :class:`ConfigError` (with ``source`` as the file and ``path`` as the dotted prefix
    of ``tls``) listing every problem: unreadable, mismatched or expired certificates, a
    cipher list OpenSSL rejects, versions in the wrong order.
    """
    infos, problems = _inspect(tls, base_dir=base_dir, path=path, now=None)
    problems += check_tls_settings(tls, path=path)
    if problems:
        raise ConfigError(source, problems)
    sni = SniTable([info.dns_names for info in infos])
    try:
        main = _entry_context(tls, infos, sni, probe=False)
        probe = _entry_context(tls, infos, sni, probe=True)
    except (ssl.SSLError, OSError) as exc:  # a file changed between the check and the load
        info = infos[0]
        raise ConfigError(
            source,
            [_load_problem(f"{path}.certificates", info.cert_path, info.key_path, exc)],
        ) from exc
    return ListenerContexts(main=main, probe=probe, certificates=tuple(infos), sni=sni)


def _entry_context(
    tls: TLSConfig, infos: Sequence[CertificateInfo], sni: SniTable, *, probe: bool
) -> ssl.SSLContext:
    per_cert = [_configure(tls, info, probe=probe) for info in infos]
    entry = per_cert[0]  # the default certificate's context is the entry context

    def choose_certificate(
        ssl_object: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext
    ) -> int | None:
        index = sni.lookup(server_name)
        if index:
            ssl_object.context = per_cert[index]
        return None  # never abort: an unknown name gets the default certificate

    if len(per_cert) > 1:
        entry.sni_callback = choose_certificate
    return entry


def _configure(tls: TLSConfig, info: CertificateInfo, *, probe: bool) -> ssl.SSLContext:
    """One server context; every context of a listener is made here, hence identical."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.maximum_version = _VERSIONS[tls.max_version]
    ctx.set_ciphers(tls.ciphers)  # TLS 1.2 suites; TLS 1.3 keeps OpenSSL's default suites
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # Client preference, as Mozilla "intermediate" advises: every suite on the list is strong,
    # and clients know best (e.g. ChaCha20 on CPUs without AES-NI). CPython sets the flag by
    # default, so clear it explicitly.
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    # A client that closes without close_notify (http.client, many load balancers) is an
    # "unexpected EOF": without this flag OpenSSL 3 treats it as a fatal error, sends an alert
    # and removes the session from the cache, so TLS 1.2 session-id resumption would only
    # survive connections the server closed. HTTP/1.1 framing detects truncated requests.
    ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    ctx.set_alpn_protocols(_ALPN)
    # ECDH groups: OpenSSL's defaults (X25519, P-256, X448, P-521, P-384).
    tickets = tls.tickets.enabled and not probe
    ctx.num_tickets = tls.tickets.per_handshake if tickets else 0
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    ctx.load_cert_chain(info.cert_path, info.key_path)
    return ctx
