"""gateproxy.certgen: self-signed certificates that load, verify and match their keys."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateproxy.certgen import generate_self_signed, write_cert_pair
from gateproxy.cli import main
from gateproxy.core.config import CertificateConfig, TLSConfig
from gateproxy.tls.contexts import check_certificates

REPO = Path(__file__).resolve().parent.parent


def spki(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        san.get_values_for_type(x509.DNSName),
        [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
    )


def test_ecdsa_certificate_contents() -> None:
    before = datetime.now(UTC)
    cert_pem, key_pem = generate_self_signed(hosts=["localhost", "127.0.0.1", "::1", "a.test"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert spki(cert.public_key()) == spki(key.public_key())
    assert sans(cert) == (["localhost", "a.test"], ["127.0.0.1", "::1"])
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["localhost"]
    assert cert.issuer == cert.subject
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and not basic.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment and not usage.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.not_valid_before_utc <= before - timedelta(days=1) + timedelta(minutes=1)
    expected_end = before + timedelta(days=365)
    assert abs(cert.not_valid_after_utc - expected_end) < timedelta(minutes=1)
    assert b"ENCRYPTED" not in key_pem


def test_rsa_variant() -> None:
    cert_pem, key_pem = generate_self_signed(hosts=["rsa.test"], rsa=True, days=30)
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    assert spki(cert.public_key()) == spki(key.public_key())
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=31)


def test_serials_are_random_and_positive() -> None:
    serials = {
        x509.load_pem_x509_certificate(generate_self_signed(hosts=["s.test"])[0]).serial_number
        for _ in range(3)
    }
    assert len(serials) == 3
    assert all(0 < s < 2**159 for s in serials)


@pytest.mark.parametrize(
    "kwargs", [{"hosts": []}, {"hosts": ["a.test"], "days": 0}], ids=["no-hosts", "zero-days"]
)
def test_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        generate_self_signed(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("use_rsa", [False, True], ids=["ecdsa", "rsa"])
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1"])
async def test_handshake_verifies_against_itself(tmp_path: Path, use_rsa: bool, host: str) -> None:
    """The certificate is its own trust anchor; hostname and IP checks pass."""
    cert_pem, key_pem = generate_self_signed(hosts=["localhost", "127.0.0.1", "::1"], rsa=use_rsa)
    cert_path, key_path = write_cert_pair(
        out_dir=tmp_path, name="dev", cert_pem=cert_pem, key_pem=key_pem
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_path, key_path)
    client_ctx = ssl.create_default_context(cafile=str(cert_path))
    client_raw, server_raw = trio.testing.memory_stream_pair()
    server = trio.SSLStream(server_raw, server_ctx, server_side=True)
    client = trio.SSLStream(client_raw, client_ctx, server_hostname=host)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    await client.send_all(b"hello")
    assert await server.receive_some(5) == b"hello"


def test_write_cert_pair_modes(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"
    cert_path, key_path = write_cert_pair(out_dir=out, name="site", cert_pem=b"C", key_pem=b"K")
    assert (cert_path, key_path) == (out / "site.pem", out / "site-key.pem")
    assert cert_path.read_bytes() == b"C" and key_path.read_bytes() == b"K"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    key_path.chmod(0o644)  # an old, too open key file is tightened when overwritten
    write_cert_pair(out_dir=out, name="site", cert_pem=b"C2", key_pem=b"K2")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_bytes() == b"K2"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x"])
def test_write_cert_pair_rejects_paths_as_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        write_cert_pair(out_dir=tmp_path, name=name, cert_pem=b"C", key_pem=b"K")


def test_cli_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    argv = ["--host", "example.test", "--host", "10.0.0.1", "--out", str(out), "--rsa"]
    assert main(["gen-cert", *argv, "--days", "7", "--name", "ex"]) == 0
    cert_path, key_path = out / "ex.pem", out / "ex-key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    printed = capsys.readouterr().out
    assert str(cert_path) in printed and str(key_path) in printed
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert sans(cert) == (["example.test"], ["10.0.0.1"])
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)
    tls = TLSConfig(certificates=(CertificateConfig(cert="ex.pem", key="ex-key.pem"),))
    assert check_certificates(tls, base_dir=out, path="tls") == []


def test_cli_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gen-cert", "--host", "localhost", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    cert = x509.load_pem_x509_certificate((tmp_path / "localhost.pem").read_bytes())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert (tmp_path / "localhost-key.pem").exists()


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["gen-cert", "--out", str(tmp_path)])  # --host is required
    assert info.value.code == 2
    assert main(["gen-cert", "--host", "a.test", "--out", str(tmp_path), "--days", "0"]) == 1
    assert "days must be >= 1" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["gen-cert", "--host", "a.test", "--out", str(blocker)]) == 1
    assert "gateproxy gen-cert: error:" in capsys.readouterr().err


def test_committed_dev_certificates() -> None:
    """certs/ holds what certs/README.md says, still valid for at least a year."""
    folder = REPO / "certs"
    tls = TLSConfig(
        certificates=(CertificateConfig(cert="localhost.pem", key="localhost-key.pem"),)
    )
    assert check_certificates(tls, base_dir=folder, path="tls") == []
    cert = x509.load_pem_x509_certificate((folder / "localhost.pem").read_bytes())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    dns, ips = sans(cert)
    assert dns == ["localhost"]
    assert {ipaddress.ip_address(ip) for ip in ips} == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert cert.not_valid_after_utc > datetime.now(UTC) + timedelta(days=365)
