"""gateproxy.tls.contexts: the settings the stdlib cannot make, through the ctypes layer.

Key-exchange groups (``tls.curves``), server cipher preference (``tls.prefer_server_ciphers``)
and the session id context (``tls.session_id_context``), on real in-memory handshakes.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from pathlib import Path

import pytest
import trustme

from gateproxy.core.config import TLSConfig
from gateproxy.core.ticket_keys import KeyRing, new_ticket_key
from gateproxy.errors import ConfigProblem
from gateproxy.tls import libssl as L
from gateproxy.tls.contexts import ListenerContexts, build_listener_contexts, check_tls_settings
from tests.tls.test_contexts import TLS12, TLS13, Pair, client_context, der_of, make_tls
from tests.tls.tlsutil import Server, handshake, server_on, session_id_context
from tests.tls.tlsutil import client_context as tls_client

WHERE = "listeners[0].tls"


@pytest.fixture(scope="module")
def leaves(ca: trustme.CA) -> list[trustme.LeafCert]:
    return [ca.issue_cert("default.test"), ca.issue_cert("b.example.com")]


def build(
    tmp_path: Path, leaves: list[trustme.LeafCert], *, degraded: bool = False, **settings: object
) -> ListenerContexts:
    tls = make_tls(tmp_path, leaves, **settings)
    return build_listener_contexts(tls, base_dir=tmp_path, degraded=degraded)


def offering(ca: trustme.CA, groups: str, version: ssl.TLSVersion = TLS13) -> ssl.SSLContext:
    """A client that offers only ``groups`` (OpenSSL names, colon-separated)."""
    client = client_context(ca, minimum=version, maximum=version)
    if ":" in groups:
        lib = L.get_libssl()
        assert lib.ctx_set_groups_list(L.validate_ctx_pointer(lib, client), groups)
    else:
        client.set_ecdh_curve(groups)
    return client


def accepted(contexts: ListenerContexts, client: ssl.SSLContext) -> dict[str, bool]:
    """Which entry/name combinations complete a handshake (b.example.com: the SNI switch)."""
    out = {}
    for entry_name, entry in (("main", contexts.main), ("probe", contexts.probe)):
        for name in ("default.test", "b.example.com"):
            try:
                Pair(entry, client, name).handshake()
            except ssl.SSLError:
                out[f"{entry_name} {name}"] = False
            else:
                out[f"{entry_name} {name}"] = True
    return out


ALL = {f"{e} {n}": True for e in ("main", "probe") for n in ("default.test", "b.example.com")}
NONE = dict.fromkeys(ALL, False)

# --- tls.curves ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("groups", "version", "works"),
    [
        ("X25519", TLS13, True),
        ("prime256v1", TLS13, True),
        ("secp384r1", TLS13, True),
        ("X448", TLS13, False),  # OpenSSL's default list offers these; Mozilla's does not
        ("secp521r1", TLS13, False),
        ("ffdhe2048", TLS13, False),
        ("X448", TLS12, False),
        ("prime256v1", TLS12, True),
        ("X448:prime256v1", TLS13, True),  # key share for X448, HelloRetryRequest to P-256
    ],
)
def test_default_groups_are_x25519_p256_p384(
    tmp_path: Path,
    ca: trustme.CA,
    leaves: list[trustme.LeafCert],
    groups: str,
    version: ssl.TLSVersion,
    works: bool,
) -> None:
    contexts = build(tmp_path, leaves)
    assert accepted(contexts, offering(ca, groups, version)) == (ALL if works else NONE)


@pytest.mark.parametrize("curves", ["secp384r1:X448", ["secp384r1", "X448"]])
def test_configured_curves_apply_to_every_context(
    tmp_path: Path, ca: trustme.CA, leaves: list[trustme.LeafCert], curves: object
) -> None:
    contexts = build(tmp_path, leaves, curves=curves)
    assert accepted(contexts, offering(ca, "X448")) == ALL
    assert accepted(contexts, offering(ca, "secp384r1")) == ALL
    assert accepted(contexts, offering(ca, "X25519")) == NONE
    assert accepted(contexts, offering(ca, "prime256v1", TLS12)) == NONE


def test_stdlib_only_sets_a_single_curve_and_keeps_openssl_defaults_otherwise(
    tmp_path: Path, ca: trustme.CA, leaves: list[trustme.LeafCert]
) -> None:
    single = build(tmp_path, leaves, degraded=True, curves="secp384r1")
    assert accepted(single, offering(ca, "secp384r1")) == ALL
    assert accepted(single, offering(ca, "X25519")) == NONE
    defaults = build(tmp_path, leaves, degraded=True)  # documented: OpenSSL's default groups
    assert accepted(defaults, offering(ca, "X448")) == ALL


@pytest.mark.parametrize(
    ("curves", "degraded", "message"),
    [
        ("X25519:prime256v1:secp384r1", False, None),
        ("P-256:P-384", False, None),
        ("X25519:nope:P-256:bogus", False, "OpenSSL does not know the group(s) nope, bogus"),
        ("X25519:X25519", False, "group 'X25519' is listed twice"),
        ("X25519:prime256v1:secp384r1", True, None),
        ("secp384r1", True, None),
        ("X25519:prime256v1", True, "stdlib_only can restrict the groups to one curve"),
        ("nope", True, "unknown curve 'nope'"),
    ],
)
def test_check_names_the_curves_key(curves: str, degraded: bool, message: str | None) -> None:
    tls = TLSConfig.model_validate(
        {"certificates": [{"cert": "c.pem", "key": "k.pem"}], "curves": curves}
    )
    problems = check_tls_settings(tls, path=WHERE, degraded=degraded)
    if message is None:
        assert problems == []
    else:
        assert [p.path for p in problems] == [f"{WHERE}.curves"]
        assert message in problems[0].message


def test_a_failed_group_check_leaves_no_openssl_error_behind() -> None:
    tls = TLSConfig.model_validate(
        {"certificates": [{"cert": "c.pem", "key": "k.pem"}], "curves": "nope"}
    )
    assert check_tls_settings(tls, path=WHERE) == [
        ConfigProblem(
            f"{WHERE}.curves",
            "OpenSSL does not know the group(s) nope (e.g. X25519, prime256v1, secp384r1)",
        )
    ]
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")


# --- tls.prefer_server_ciphers ------------------------------------------------------------------


@pytest.mark.parametrize(("prefer", "expected"), [(False, "CHACHA20"), (True, "AES128-GCM")])
def test_prefer_server_ciphers(
    tmp_path: Path, ca: trustme.CA, leaves: list[trustme.LeafCert], prefer: bool, expected: str
) -> None:
    contexts = build(tmp_path, leaves, prefer_server_ciphers=prefer)
    # the server's list puts AES128-GCM first; this client lists ChaCha20 first
    client = client_context(ca, maximum=TLS12)
    client.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256")
    for entry in (contexts.main, contexts.probe):
        assert bool(entry.options & ssl.OP_CIPHER_SERVER_PREFERENCE) is prefer
        for name in ("default.test", "b.example.com"):
            cipher = Pair(entry, client, name).handshake().client.cipher()
            assert cipher is not None
            assert expected in cipher[0]


# --- tls.session_id_context ---------------------------------------------------------------------


def nginx_value(*leaves: trustme.LeafCert) -> bytes:
    """nginx's ngx_ssl_session_id_context for a server block listing ``leaves`` in order:
    SHA-1 over "HTTP" and the SHA-1 of each certificate's DER, the last configured first."""
    digest = hashlib.sha1(b"HTTP")
    for leaf in reversed(leaves):
        digest.update(hashlib.sha1(der_of(leaf)).digest())
    return digest.digest()


def server_session(entry: ssl.SSLContext, client: ssl.SSLContext, name: str) -> ssl.SSLSession:
    pair = Pair(entry, client, name).handshake()
    pair.client_reads()
    session = pair.server.session
    assert session is not None
    return session


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_sessions_carry_nginx_session_id_context_by_default(
    tmp_path: Path, ca: trustme.CA, leaves: list[trustme.LeafCert], version: ssl.TLSVersion
) -> None:
    other = ca.issue_cert("default.test", key_type=trustme.KeyType.RSA)
    contexts = build(tmp_path, [leaves[0], other, leaves[1]])  # default: EC + RSA default.test
    client = client_context(ca, minimum=version, maximum=version)
    expected = nginx_value(leaves[0], other)
    for name in ("default.test", "b.example.com"):
        # after the SNI switch too: OpenSSL binds the session to the entry context's value
        assert session_id_context(server_session(contexts.main, client, name)) == expected


@pytest.mark.parametrize(
    ("setting", "expected"),
    [("python", b"Python\x00"), ("00ff10", b"\x00\xff\x10"), ("AB" * 32, b"\xab" * 32)],
)
def test_session_id_context_python_or_fixed(
    tmp_path: Path, ca: trustme.CA, leaves: list[trustme.LeafCert], setting: str, expected: bytes
) -> None:
    contexts = build(tmp_path, leaves, session_id_context=setting)
    session = server_session(contexts.main, client_context(ca, maximum=TLS12), "default.test")
    assert session_id_context(session) == expected


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_tickets_resume_only_under_the_same_session_id_context(
    tmp_path: Path, ca: trustme.CA, leaves: list[trustme.LeafCert], version: str
) -> None:
    """Three listeners share one ticket key ring: a ticket resumes where the session id context
    matches (nginx's value, from the same certificates) and not under Python's."""
    keyring = KeyRing.from_keys([new_ticket_key(random_bytes=os.urandom, now=0.0)])

    def server(setting: str) -> Server:
        tls = make_tls(tmp_path, leaves, session_id_context=setting)
        contexts = build_listener_contexts(tls, base_dir=tmp_path)
        return server_on(contexts.main, contexts.probe, tls, keyring=keyring)

    first, same, python = server("nginx"), server("nginx"), server("python")
    client = tls_client(ca, version=version)
    client.check_hostname = False
    made = handshake(first, client)
    assert handshake(same, client, session=made.session).reused
    assert not handshake(python, client, session=made.session).reused
