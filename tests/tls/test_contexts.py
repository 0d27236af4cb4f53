"""gateproxy.tls.contexts: real handshakes in memory against the listener contexts."""

from __future__ import annotations

import contextlib
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL

from gateproxy.core.config import CertificateConfig, TicketsConfig, TLSConfig
from gateproxy.errors import ConfigError
from gateproxy.tls.contexts import (
    ListenerContexts,
    build_listener_contexts,
    check_certificates,
    default_group,
)
from tests.tls.tlsutil import restrict_sigalgs

TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3

# --- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def leaves(ca: trustme.CA) -> list[trustme.LeafCert]:
    return [
        ca.issue_cert("default.test"),
        ca.issue_cert("b.example.com", "*.wild.example.com"),
        ca.issue_cert("exact.wild.example.com"),
    ]


def write_pair(leaf: trustme.LeafCert, folder: Path, stem: str) -> CertificateConfig:
    folder.mkdir(parents=True, exist_ok=True)
    leaf.cert_chain_pems[0].write_to_path(str(folder / f"{stem}.pem"))
    leaf.private_key_pem.write_to_path(str(folder / f"{stem}-key.pem"))
    return CertificateConfig(cert=f"{stem}.pem", key=f"{stem}-key.pem")


def make_tls(tmp_path: Path, leaves: list[trustme.LeafCert], **settings: object) -> TLSConfig:
    pairs = tuple(write_pair(leaf, tmp_path, f"c{i}") for i, leaf in enumerate(leaves))
    return TLSConfig.model_validate({"certificates": pairs, **settings})


def build(tmp_path: Path, leaves: list[trustme.LeafCert], **settings: object) -> ListenerContexts:
    return build_listener_contexts(make_tls(tmp_path, leaves, **settings), base_dir=tmp_path)


def client_context(
    ca: trustme.CA,
    *,
    minimum: ssl.TLSVersion = TLS12,
    maximum: ssl.TLSVersion = TLS13,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.minimum_version = minimum
    ctx.maximum_version = maximum
    ctx.check_hostname = check_hostname
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


class Pair:
    """A client and a server ``SSLObject`` wired back to back through memory BIOs."""

    def __init__(self, server: ssl.SSLContext, client: ssl.SSLContext, name: str | None) -> None:
        self._c_in, self._c_out, self._s_in, self._s_out = (ssl.MemoryBIO() for _ in range(4))
        self.client = client.wrap_bio(self._c_in, self._c_out, server_hostname=name)
        self.server = server.wrap_bio(self._s_in, self._s_out, server_side=True)

    def _pump(self) -> None:
        self._s_in.write(self._c_out.read())
        self._c_in.write(self._s_out.read())

    def handshake(self) -> Pair:
        done = {"client": False, "server": False}
        for _ in range(10):
            for side, obj in (("client", self.client), ("server", self.server)):
                if not done[side]:
                    try:
                        obj.do_handshake()
                        done[side] = True
                    except ssl.SSLWantReadError:
                        pass
                self._pump()
            if all(done.values()):
                return self
        raise AssertionError("handshake did not finish")

    def client_reads(self, data: bytes = b"ping") -> bytes:
        """The server sends ``data``; the client reads it (and any TLS 1.3 tickets before it)."""
        self.server.write(data)
        self._pump()
        return self.client.read(len(data))

    def peer_der(self) -> bytes:
        der = self.client.getpeercert(binary_form=True)
        assert der is not None
        return der


def der_of(leaf: trustme.LeafCert) -> bytes:
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    return cert.public_bytes(serialization.Encoding.DER)


# --- handshakes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_handshake_each_version(
    tmp_path: Path, ca: trustme.CA, leaves: list[trustme.LeafCert], version: ssl.TLSVersion
) -> None:
    contexts = build(tmp_path, leaves[:1])
    client = client_context(ca, minimum=version, maximum=version)
    pair = Pair(contexts.main, client, "default.test").handshake()
    expected = {TLS12: "TLSv1.2", TLS13: "TLSv1.3"}[version]
    assert pair.client.version() == pair.server.version() == expected
    assert pair.client.selected_alpn_protocol() == "http/1.1"
    assert pair.client_reads() == b"ping"


@pytest.mark.parametrize(
    ("server", "client"),
    [
        ({"min_version": "1.3"}, {"maximum": TLS12}),
        ({"max_version": "1.2"}, {"minimum": TLS13}),
    ],
)
def test_version_mismatch_is_refused(
    tmp_path: Path,
    ca: trustme.CA,
    leaves: list[trustme.LeafCert],
    server: dict[str, str],
    client: dict[str, Any],
) -> None:
    contexts = build(tmp_path, leaves, **server)
    for entry in (contexts.main, contexts.probe):
        # b.example.com: the per-certificate context must refuse too (the SNI trap)
        for name in ("default.test", "b.example.com"):
            with pytest.raises(ssl.SSLError):
                Pair(entry, client_context(ca, **client), name).handshake()


def test_client_cipher_preference_is_honoured(
    tmp_path: Path, ca: trustme.CA, leaves: list[trustme.LeafCert]
) -> None:
    contexts = build(tmp_path, leaves[:1])
    assert not contexts.main.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert contexts.main.options & ssl.OP_NO_COMPRESSION
    assert contexts.main.options & ssl.OP_NO_RENEGOTIATION
    client = client_context(ca, maximum=TLS12)
    # the server's list puts AES128-GCM first; the client prefers ChaCha20
    client.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256")
    pair = Pair(contexts.main, client, "default.test").handshake()
    cipher = pair.client.cipher()
    assert cipher is not None
    assert cipher[0] == "ECDHE-ECDSA-CHACHA20-POLY1305"


def test_configured_ciphers_are_used(
    tmp_path: Path, ca: trustme.CA, leaves: list[trustme.LeafCert]
) -> None:
    contexts = build(tmp_path, leaves, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")
    for name in ("default.test", "b.example.com"):
        pair = Pair(contexts.main, client_context(ca, maximum=TLS12), name).handshake()
        cipher = pair.client.cipher()
        assert cipher is not None
        assert cipher[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"


# --- SNI ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_name", "index"),
    [
        ("b.example.com", 1),
        ("x.wild.example.com", 1),
        ("exact.wild.example.com", 2),
        ("a.b.wild.example.com", 0),
        ("unknown.test", 0),
        (None, 0),
    ],
)
def test_sni_selects_the_certificate(
    tmp_path: Path,
    ca: trustme.CA,
    leaves: list[trustme.LeafCert],
    server_name: str | None,
    index: int,
) -> None:
    contexts = build(tmp_path, leaves)
    assert [c.dns_names for c in contexts.certificates] == [
        ("default.test",),
        ("b.example.com", "*.wild.example.com"),
        ("exact.wild.example.com",),
    ]
    for entry in (contexts.main, contexts.probe):
        client = client_context(ca, check_hostname=index != 0)
        pair = Pair(entry, client, server_name).handshake()
        assert pair.peer_der() == der_of(leaves[index])
        assert pair.client.selected_alpn_protocol() == "http/1.1"


# --- several key types for one name ---------------------------------------------------------------


@pytest.fixture(scope="module")
def dual(ca: trustme.CA) -> dict[str, trustme.LeafCert]:
    """An ECDSA and an RSA certificate for the same names, and an ECDSA one for another name."""
    names = ("dual.test", "*.dual.test")
    return {
        "ec": ca.issue_cert(*names),
        "rsa": ca.issue_cert(*names, key_type=trustme.KeyType.RSA),
        "other": ca.issue_cert("other.test"),
    }


def offering_only(ca: trustme.CA, key_type: str, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that can verify only ``key_type`` signatures: TLS 1.3 by its
    signature_algorithms, TLS 1.2 by its cipher suites."""
    client = client_context(ca, minimum=version, maximum=version, check_hostname=False)
    if version == TLS12:
        client.set_ciphers(f"ECDHE-{'ECDSA' if key_type == 'ec' else 'RSA'}-AES128-GCM-SHA256")
    else:
        restrict_sigalgs(client, "ECDSA+SHA256" if key_type == "ec" else "RSA-PSS+SHA256")
    return client


@pytest.mark.parametrize("order", [("ec", "rsa"), ("rsa", "ec")])
@pytest.mark.parametrize(
    ("placement", "server_names"),
    [
        ("first", [None, "unknown.test", "dual.test"]),  # the default certificates
        ("after another", ["dual.test", "x.dual.test"]),  # chosen by SNI first
    ],
)
def test_certificate_follows_the_key_type_the_client_can_verify(
    tmp_path: Path,
    ca: trustme.CA,
    dual: dict[str, trustme.LeafCert],
    order: tuple[str, str],
    placement: str,
    server_names: list[str | None],
) -> None:
    chosen = [dual[kind] for kind in order]
    listed = [*chosen, dual["other"]] if placement == "first" else [dual["other"], *chosen]
    contexts = build(tmp_path, listed)
    clients = {(v, k): offering_only(ca, k, v) for v in (TLS12, TLS13) for k in ("ec", "rsa")}
    served = {}
    for entry_name, entry in (("main", contexts.main), ("probe", contexts.probe)):
        for name in server_names:
            for version in (TLS12, TLS13):
                for wanted in ("ec", "rsa"):
                    pair = Pair(entry, clients[version, wanted], name).handshake()
                    got = next(k for k in ("ec", "rsa") if pair.peer_der() == der_of(dual[k]))
                    served[entry_name, name, version.name, wanted] = got
    assert served == {key: key[3] for key in served}


def test_name_comes_before_key_type(
    tmp_path: Path, ca: trustme.CA, dual: dict[str, trustme.LeafCert]
) -> None:
    """other.test has only an ECDSA certificate: an RSA-only client fails rather than getting
    the RSA certificate of another name; the ECDSA client gets other.test's."""
    contexts = build(tmp_path, [dual["ec"], dual["rsa"], dual["other"]])
    for version in (TLS12, TLS13):
        with pytest.raises(ssl.SSLError):
            Pair(contexts.main, offering_only(ca, "rsa", version), "other.test").handshake()
        pair = Pair(contexts.main, offering_only(ca, "ec", version), "other.test").handshake()
        assert pair.peer_der() == der_of(dual["other"])


def test_default_takes_other_key_types_only_for_the_same_names(
    tmp_path: Path, ca: trustme.CA, dual: dict[str, trustme.LeafCert]
) -> None:
    contexts = build(tmp_path, [dual["other"], dual["rsa"], dual["ec"]])
    assert [c.key_type for c in contexts.certificates] == ["EC", "RSA", "EC"]
    assert default_group(contexts.certificates) == (0,)  # dual.test != other.test
    assert contexts.sni.choose("a.dual.test") == (1, 2)
    with pytest.raises(ssl.SSLError):  # no SNI: other.test's ECDSA certificate or nothing
        Pair(contexts.main, offering_only(ca, "rsa", TLS13), None).handshake()


# --- tickets and the probe context --------------------------------------------------------------


def has_ticket(pair: Pair) -> bool:
    pair.client_reads()  # TLS 1.3 tickets arrive after the handshake
    session = pair.client.session
    assert session is not None
    return session.has_ticket


@pytest.mark.parametrize("version", [TLS12, TLS13])
@pytest.mark.parametrize("server_name", ["default.test", "b.example.com"])
def test_main_sends_tickets_probe_does_not(
    tmp_path: Path,
    ca: trustme.CA,
    leaves: list[trustme.LeafCert],
    version: ssl.TLSVersion,
    server_name: str,
) -> None:
    contexts = build(tmp_path, leaves)
    assert contexts.main.num_tickets == 1
    assert contexts.probe.num_tickets == 0
    assert contexts.probe.options & ssl.OP_NO_TICKET
    client = client_context(ca, minimum=version, maximum=version)
    assert has_ticket(Pair(contexts.main, client, server_name).handshake())
    assert not has_ticket(Pair(contexts.probe, client, server_name).handshake())


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_tickets_disabled(
    tmp_path: Path, ca: trustme.CA, leaves: list[trustme.LeafCert], version: ssl.TLSVersion
) -> None:
    contexts = build(tmp_path, leaves, tickets=TicketsConfig(enabled=False, per_handshake=3))
    assert contexts.main.num_tickets == 0
    assert contexts.main.options & ssl.OP_NO_TICKET
    client = client_context(ca, minimum=version, maximum=version)
    for name in ("default.test", "b.example.com"):
        assert not has_ticket(Pair(contexts.main, client, name).handshake())


def test_tickets_per_handshake(tmp_path: Path, leaves: list[trustme.LeafCert]) -> None:
    contexts = build(tmp_path, leaves, tickets=TicketsConfig(per_handshake=3))
    assert contexts.main.num_tickets == 3
    assert not contexts.main.options & ssl.OP_NO_TICKET
    assert contexts.probe.num_tickets == 0


# --- independent clients ------------------------------------------------------------------------


async def test_trio_ssl_stream_negotiates_http11(
    tmp_path: Path, ca: trustme.CA, leaves: list[trustme.LeafCert]
) -> None:
    contexts = build(tmp_path, leaves)
    client_raw, server_raw = trio.testing.memory_stream_pair()
    server = trio.SSLStream(server_raw, contexts.main, server_side=True)
    client = trio.SSLStream(client_raw, client_context(ca), server_hostname="x.wild.example.com")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    assert server.selected_alpn_protocol() == client.selected_alpn_protocol() == "http/1.1"
    assert client.getpeercert(binary_form=True) == der_of(leaves[1])
    await client.send_all(b"GET / HTTP/1.1\r\n\r\n")
    assert await server.receive_some(100) == b"GET / HTTP/1.1\r\n\r\n"


def test_alpn_without_overlap_continues_without_alpn(
    tmp_path: Path, ca: trustme.CA, leaves: list[trustme.LeafCert]
) -> None:
    contexts = build(tmp_path, leaves[:1])
    client = client_context(ca)
    client.set_alpn_protocols(["h2"])
    pair = Pair(contexts.main, client, "default.test").handshake()
    assert pair.client.selected_alpn_protocol() is None


def test_pyopenssl_client(tmp_path: Path, ca: trustme.CA, leaves: list[trustme.LeafCert]) -> None:
    """A client on a different OpenSSL build (cryptography's bundled one) sees the SNI cert."""
    contexts = build(tmp_path, leaves)
    server = contexts.main.wrap_bio(s_in := ssl.MemoryBIO(), s_out := ssl.MemoryBIO(), True)
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_PEER)
    ca.configure_trust(ctx)
    ctx.set_alpn_protos([b"http/1.1"])
    client = SSL.Connection(ctx, None)
    client.set_connect_state()
    client.set_tlsext_host_name(b"b.example.com")
    done = {"client": False, "server": False}
    for _ in range(10):
        if not done["client"]:
            try:
                client.do_handshake()
                done["client"] = True
            except SSL.WantReadError:
                pass
        with contextlib.suppress(SSL.WantReadError):
            s_in.write(client.bio_read(65536))
        if not done["server"]:
            try:
                server.do_handshake()
                done["server"] = True
            except ssl.SSLWantReadError:
                pass
        if data := s_out.read():
            client.bio_write(data)
        if all(done.values()):
            break
    assert all(done.values())
    assert client.get_protocol_version_name() == "TLSv1.3"
    assert client.get_alpn_proto_negotiated() == b"http/1.1"
    peer = client.get_peer_certificate(as_cryptography=True)
    assert peer is not None
    assert peer.public_bytes(serialization.Encoding.DER) == der_of(leaves[1])


# --- certificate checks -------------------------------------------------------------------------

WHERE = "listeners[0].tls"


def tls_of(*pairs: tuple[str, str]) -> TLSConfig:
    return TLSConfig(certificates=tuple(CertificateConfig(cert=c, key=k) for c, k in pairs))


def test_good_pairs_pass(tmp_path: Path, leaves: list[trustme.LeafCert]) -> None:
    tls = make_tls(tmp_path, leaves)
    assert check_certificates(tls, base_dir=tmp_path, path=WHERE) == []


def test_relative_paths_resolve_against_base_dir(
    tmp_path: Path, leaves: list[trustme.LeafCert]
) -> None:
    write_pair(leaves[0], tmp_path / "conf" / "certs", "site")
    tls = tls_of(("certs/site.pem", "certs/site-key.pem"))
    contexts = build_listener_contexts(tls, base_dir=tmp_path / "conf")
    assert contexts.certificates[0].cert_path == tmp_path / "conf" / "certs" / "site.pem"
    problems = check_certificates(tls, base_dir=tmp_path, path=WHERE)
    assert [p.path for p in problems] == [
        f"{WHERE}.certificates[0].cert",
        f"{WHERE}.certificates[0].key",
    ]


def test_missing_files(tmp_path: Path, leaves: list[trustme.LeafCert]) -> None:
    write_pair(leaves[0], tmp_path, "ok")
    tls = tls_of(("ok.pem", "ok-key.pem"), ("nope.pem", "ok-key.pem"), ("ok.pem", "gone.pem"))
    problems = check_certificates(tls, base_dir=tmp_path, path=WHERE)
    assert [p.path for p in problems] == [
        f"{WHERE}.certificates[1].cert",
        f"{WHERE}.certificates[2].key",
    ]
    assert str(tmp_path / "nope.pem") in problems[0].message
    assert "No such file" in problems[0].message
    assert str(tmp_path / "gone.pem") in problems[1].message


def test_mismatched_key(tmp_path: Path, leaves: list[trustme.LeafCert]) -> None:
    write_pair(leaves[0], tmp_path, "a")
    write_pair(leaves[1], tmp_path, "b")
    tls = tls_of(("a.pem", "a-key.pem"), ("a.pem", "b-key.pem"))
    problems = check_certificates(tls, base_dir=tmp_path, path=WHERE)
    assert [p.path for p in problems] == [f"{WHERE}.certificates[1].key"]
    assert "does not match" in problems[0].message
    assert str(tmp_path / "b-key.pem") in problems[0].message
    assert str(tmp_path / "a.pem") in problems[0].message


def test_not_pem_and_encrypted_key(tmp_path: Path, leaves: list[trustme.LeafCert]) -> None:
    write_pair(leaves[0], tmp_path, "a")
    (tmp_path / "junk.pem").write_bytes(b"not a pem file\n")
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "locked.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    tls = tls_of(("junk.pem", "a-key.pem"), ("a.pem", "junk.pem"), ("a.pem", "locked.pem"))
    problems = check_certificates(tls, base_dir=tmp_path, path=WHERE)
    assert [(p.path, p.message) for p in problems] == [
        (f"{WHERE}.certificates[0].cert", f"'{tmp_path / 'junk.pem'}' is not a PEM certificate"),
        (f"{WHERE}.certificates[1].key", f"'{tmp_path / 'junk.pem'}' is not a PEM private key"),
        (
            f"{WHERE}.certificates[2].key",
            f"private key '{tmp_path / 'locked.pem'}' is encrypted; give an unencrypted key",
        ),
    ]


def test_expired_certificate(tmp_path: Path, leaves: list[trustme.LeafCert]) -> None:
    tls = make_tls(tmp_path, leaves[:1])
    cert = x509.load_pem_x509_certificate(leaves[0].cert_chain_pems[0].bytes())
    expiry = cert.not_valid_after_utc
    assert check_certificates(tls, base_dir=tmp_path, path=WHERE, now=expiry) == []
    later = expiry + timedelta(seconds=1)
    problems = check_certificates(tls, base_dir=tmp_path, path=WHERE, now=later)
    assert [p.path for p in problems] == [f"{WHERE}.certificates[0].cert"]
    assert "expired on" in problems[0].message
    not_yet = cert.not_valid_before_utc - timedelta(days=1)  # clock skew is not an error
    assert check_certificates(tls, base_dir=tmp_path, path=WHERE, now=not_yet) == []


def test_openssl_refusal_becomes_a_problem(tmp_path: Path) -> None:
    """cryptography reads a 1024-bit RSA key happily; OpenSSL's security level refuses it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "weak.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "weak.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "weak-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    problems = check_certificates(
        tls_of(("weak.pem", "weak-key.pem")), base_dir=tmp_path, path=WHERE
    )
    assert [p.path for p in problems] == [f"{WHERE}.certificates[0].cert"]
    assert "OpenSSL cannot load" in problems[0].message
    assert "key too small" in problems[0].message
    assert "_ssl.c" not in problems[0].message


def test_build_raises_config_error_with_every_problem(
    tmp_path: Path, leaves: list[trustme.LeafCert]
) -> None:
    write_pair(leaves[0], tmp_path, "a")
    tls = TLSConfig(
        certificates=(
            CertificateConfig(cert="missing.pem", key="a-key.pem"),
            CertificateConfig(cert="a.pem", key="a-key.pem"),
        ),
        ciphers="NO-SUCH-CIPHER",
        min_version="1.3",
        max_version="1.2",
    )
    with pytest.raises(ConfigError) as info:
        build_listener_contexts(tls, base_dir=tmp_path, source="gw.yaml", path=WHERE)
    err = info.value
    assert err.source == "gw.yaml"
    assert [p.path for p in err.problems] == [
        f"{WHERE}.certificates[0].cert",
        f"{WHERE}.min_version",
        f"{WHERE}.ciphers",
    ]
    assert str(err).splitlines()[0].startswith(f"gw.yaml: {WHERE}.certificates[0].cert: ")
    assert "NO-SUCH-CIPHER" in str(err)
