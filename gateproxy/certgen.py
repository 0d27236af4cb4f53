"""Self-signed server certificates for development and the demo, made with ``cryptography``.

Never for production: there is no CA, so clients must trust the certificate itself
(``curl --cacert cert.pem``) or skip verification.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def generate_self_signed(
    *, hosts: Sequence[str], rsa: bool = False, days: int = 365
) -> tuple[bytes, bytes]:
    """Return ``(certificate PEM, private key PEM)`` of a new self-signed server certificate.

    ECDSA P-256 by default, RSA-2048 with ``rsa=True``. Every host becomes a SAN entry (an IP
    address entry when it parses as one, else a DNS name); the subject CN is the first host.
    Valid from one day ago (tolerates clock skew) for ``days`` days. The key is unencrypted
    PKCS#8.
    """
    if not hosts:
        raise ValueError("at least one host is needed")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    key: rsa_keys.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if rsa:
        key = rsa_keys.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1 or 1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_san_entries(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(rsa=rsa), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _san_entries(hosts: Sequence[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def _key_usage(*, rsa: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=rsa,  # RSA key exchange (TLS 1.2 non-ECDHE suites); meaningless for EC
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def write_cert_pair(
    *, out_dir: Path, name: str, cert_pem: bytes, key_pem: bytes
) -> tuple[Path, Path]:
    """Write ``<name>.pem`` (mode 0644) and ``<name>-key.pem`` (mode 0600) into ``out_dir``.

    Creates ``out_dir`` if needed and overwrites existing files; an existing key file gets its
    mode reset to 0600 before the new key is written into it.
    """
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"name must be a plain file name without directories, got {name!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path = out_dir / f"{name}.pem"
    key_path = out_dir / f"{name}-key.pem"
    _write(key_path, key_pem, mode=0o600)
    _write(cert_path, cert_pem, mode=0o644)
    return cert_path, key_path


def _write(path: Path, data: bytes, *, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)  # the umask, or an older file, may have widened it
        out.write(data)


def add_gen_cert_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``gateproxy gen-cert``, on the sub-command's own parser."""
    parser.add_argument(
        "--host",
        dest="hosts",
        action="append",
        required=True,
        metavar="NAME",
        help="DNS name or IP address for the certificate (repeat; the first is the CN)",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--rsa", action="store_true", help="RSA-2048 instead of ECDSA P-256")
    parser.add_argument("--days", type=int, default=365, metavar="N", help="validity in days")
    parser.add_argument(
        "--name",
        default="localhost",
        help="file name stem: writes NAME.pem and NAME-key.pem (default: localhost)",
    )


def gen_cert_command(args: argparse.Namespace) -> int:
    """``gateproxy gen-cert``: write the pair the parsed ``args`` describe, print the paths.

    A bad value or an unwritable folder prints one line to stderr and returns 1.
    """
    try:
        cert_pem, key_pem = generate_self_signed(hosts=args.hosts, rsa=args.rsa, days=args.days)
        cert_path, key_path = write_cert_pair(
            out_dir=args.out, name=args.name, cert_pem=cert_pem, key_pem=key_pem
        )
    except (ValueError, OSError) as exc:
        print(f"gateproxy gen-cert: error: {exc}", file=sys.stderr)
        return 1
    print(f"certificate: {cert_path}")
    print(f"key:         {key_path}")
    return 0
