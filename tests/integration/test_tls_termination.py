"""TLS termination end to end: real sockets, real handshakes, clients nobody here wrote."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest
import trio
import trustme

from tests.conftest import CertPaths
from tests.helpers.clients import (
    client_context,
    curl,
    https_request,
    openssl_s_client,
    pyopenssl_get,
    split_address,
)
from tests.helpers.proxy import address, proxy_config, running_proxy, tls_listener
from tests.helpers.tls_bio import MALFORMED, BioClient
from tests.helpers.upstreams import RecordingUpstream


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
async def test_both_tls_versions_proxy_a_request(
    ca: trustme.CA, server_cert: CertPaths, version: str
) -> None:
    async with RecordingUpstream(body=b"from app\n") as up:
        config = proxy_config(
            [tls_listener(cert=server_cert.cert, key=server_cert.key)],
            {"app": {"servers": [up.address]}},
        )
        async with running_proxy(config) as daemon:
            resp = await https_request(
                address(daemon), ca=ca, tls_version=version, alpn=["http/1.1"]
            )
    assert resp.status == 200
    assert resp.body == b"from app\n"
    assert resp.tls_version == version
    assert resp.alpn_protocol == "http/1.1"
    assert up.requests[0].header("x-forwarded-proto") == "https"


async def test_sni_chooses_the_second_certificate(
    ca: trustme.CA, server_cert: CertPaths, second_cert: CertPaths
) -> None:
    async with RecordingUpstream() as up:
        listener = tls_listener(cert=server_cert.cert, key=server_cert.key)
        listener["tls"]["certificates"].append(
            {"cert": str(second_cert.cert), "key": str(second_cert.key)}
        )
        config = proxy_config([listener], {"app": {"servers": [up.address]}})
        async with running_proxy(config) as daemon:
            # check_hostname is on: the handshake only succeeds with the example.test certificate
            second = await https_request(address(daemon), ca=ca, server_hostname="example.test")
            default = await https_request(address(daemon), ca=ca, server_hostname="localhost")
            with pytest.raises(ssl.SSLCertVerificationError):
                # without the second certificate the default one would be served for example.test
                await https_request(address(daemon), ca=ca, server_hostname="other.test")
    assert second.status == default.status == 200


@pytest.mark.parametrize(
    ("min_version", "max_version", "client"),
    [("1.3", "1.3", "TLSv1.2"), ("1.2", "1.2", "TLSv1.3")],
)
async def test_version_outside_min_max_is_refused(
    ca: trustme.CA, server_cert: CertPaths, min_version: str, max_version: str, client: str
) -> None:
    async with RecordingUpstream() as up:
        listener = tls_listener(
            cert=server_cert.cert,
            key=server_cert.key,
            tls={"min_version": min_version, "max_version": max_version},
        )
        config = proxy_config([listener], {"app": {"servers": [up.address]}})
        async with running_proxy(config) as daemon:
            with pytest.raises(ssl.SSLError):
                await https_request(address(daemon), ca=ca, tls_version=client)
            stats = daemon.stats()
    assert up.requests == []
    assert stats["listeners"]["public"]["tls"]["handshakes"]["failed"] == 1  # type: ignore[index]


async def test_curl_openssl_and_pyopenssl_clients(
    ca: trustme.CA, ca_pem_path: object, server_cert: CertPaths
) -> None:
    async with RecordingUpstream(body=b"hello\n") as up:
        config = proxy_config(
            [tls_listener(cert=server_cert.cert, key=server_cert.key)],
            {"app": {"servers": [up.address]}},
        )
        async with running_proxy(config) as daemon:
            host, port = daemon.addresses["public"]
            url = f"https://localhost:{port}/curl"
            result = await curl(
                [
                    "-sS",
                    "--cacert",
                    str(ca_pem_path),
                    "--resolve",
                    f"localhost:{port}:127.0.0.1",
                    "--tlsv1.3",
                    url,
                ]
            )
            s_client = await openssl_s_client(
                [
                    "-connect",
                    f"{host}:{port}",
                    "-servername",
                    "localhost",
                    "-CAfile",
                    str(ca_pem_path),
                    "-tls1_2",
                    "-quiet",
                    "-verify_return_error",
                ],
                input=b"GET /openssl HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )
            pyo = await pyopenssl_get(
                address(daemon), "/pyopenssl", ca_pem=ca.cert_pem.bytes(), tls_version="TLSv1.3"
            )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello\n"
    assert b"HTTP/1.1 200" in s_client.stdout, s_client.stderr
    assert pyo.status == 200 and pyo.body == b"hello\n"
    assert [r.target for r in up.requests] == ["/curl", "/openssl", "/pyopenssl"]


async def test_garbage_and_plain_http_cost_one_connection_each(
    ca: trustme.CA, server_cert: CertPaths
) -> None:
    async with RecordingUpstream() as up:
        config = proxy_config(
            [
                tls_listener(
                    cert=server_cert.cert, key=server_cert.key, tls={"handshake_timeout": "1s"}
                )
            ],
            {"app": {"servers": [up.address]}},
        )
        async with running_proxy(config) as daemon:
            host, port = daemon.addresses["public"]
            hostile = [
                b"\x00\xff" * 300,  # random bytes
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # plain HTTP to the TLS port
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a half-sent ClientHello
            ]
            streams = []
            for payload in hostile:
                s = await trio.open_tcp_stream(host, port)
                await s.send_all(payload)
                streams.append(s)
            vanisher = await trio.open_tcp_stream(host, port)
            await vanisher.send_all(b"\x16\x03\x01\x00\x10")
            await vanisher.aclose()  # a client that vanishes mid-handshake
            resp = await https_request(address(daemon), ca=ca)  # meanwhile a good client
            with trio.fail_after(5):
                for s in streams:  # each hostile connection is closed by the proxy
                    while await s.receive_some(4096):
                        pass
                    await s.aclose()
            stats = daemon.stats()
    assert resp.status == 200
    tls_stats = stats["listeners"]["public"]["tls"]["handshakes"]  # type: ignore[index]
    assert tls_stats["failed"] == 4
    assert tls_stats["full"] == 1


def _hello(record_version: bytes, hello_version: bytes) -> bytes:
    """A minimal ClientHello record (one AES128-SHA suite, no extensions)."""
    body = hello_version + bytes(32) + b"\x00" + b"\x00\x02\x00\x2f" + b"\x01\x00"
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16" + record_version + len(handshake).to_bytes(2, "big") + handshake


# SSLv2-compatible hello: 2-byte header with the high bit set, then MSG-CLIENT-HELLO.
SSLV2_HELLO = b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + bytes(21) + bytes(16)


@pytest.mark.parametrize(
    "hello",
    [
        pytest.param(SSLV2_HELLO, id="sslv2"),
        pytest.param(_hello(b"\x03\x00", b"\x03\x00"), id="sslv3"),
        pytest.param(_hello(b"\x03\x01", b"\x03\x01"), id="tls1.0"),
        pytest.param(_hello(b"\x03\x01", b"\x03\x02"), id="tls1.1"),
    ],
)
async def test_old_protocol_hellos_are_refused(
    ca: trustme.CA, server_cert: CertPaths, hello: bytes
) -> None:
    async with RecordingUpstream() as up:
        config = proxy_config(
            [tls_listener(cert=server_cert.cert, key=server_cert.key)],
            {"app": {"servers": [up.address]}},
        )
        async with running_proxy(config) as daemon:
            host, port = daemon.addresses["public"]
            answer = b""
            async with await trio.open_tcp_stream(host, port) as stream:
                await stream.send_all(hello)
                with trio.fail_after(5):
                    while chunk := await stream.receive_some(4096):
                        answer += chunk
            good = await https_request(address(daemon), ca=ca)
            stats = daemon.stats()
    assert not answer.startswith(b"\x16")  # never a ServerHello: an alert (0x15) or nothing
    handshakes = stats["listeners"]["public"]["tls"]["handshakes"]  # type: ignore[index]
    assert handshakes["failed"] == 1 and handshakes["full"] == 1
    assert good.status == 200 and len(up.requests) == 1


@pytest.mark.parametrize("when", ["before-any-request", "after-a-response", "mid-upload"])
@pytest.mark.parametrize("name", ["bad-tag", "oversized"])
async def test_a_protocol_error_after_the_handshake_gets_the_fatal_alert(
    ca: trustme.CA, server_cert: CertPaths, when: str, name: str
) -> None:
    """What an outside battery (tlsfuzzer) checks: a broken record after the handshake is
    answered with OpenSSL's fatal alert, as nginx does, not with a bare TCP close; also when it
    interrupts an upload (the request is then aborted, the alert still goes out)."""
    raw, alert, _ = MALFORMED[name]
    async with RecordingUpstream() as up:
        config = proxy_config(
            [tls_listener(cert=server_cert.cert, key=server_cert.key)],
            {"app": {"servers": [up.address]}},
        )
        async with running_proxy(config) as daemon:
            sock = await trio.open_tcp_stream(*split_address(address(daemon)))
            async with sock:
                client = BioClient(sock, client_context(ca))
                await client.handshake()
                if when == "after-a-response":
                    await client.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    assert (await client.read_response()).startswith(b"HTTP/1.1 200 ")
                elif when == "mid-upload":
                    head = b"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n"
                    await client.send(head + b"x" * 5000)
                    await up.wait_for(lambda: up.connections == 1)
                await sock.send_all(raw)
                outcome = await client.receive_until_close()
    assert outcome.startswith("alert:") and alert in outcome
    assert len(up.requests) == (1 if when == "after-a-response" else 0)  # the upload: aborted


def _s_client_args(port: int, ca_pem: Path, *, sni: bool, extra: list[str]) -> list[str]:
    name = ["-servername", "localhost"] if sni else ["-noservername"]
    return ["-connect", f"127.0.0.1:{port}", *name, "-CAfile", str(ca_pem), *extra]


@pytest.mark.parametrize("order", ["ecdsa first", "rsa first"])
async def test_openssl_s_client_gets_the_certificate_type_it_can_verify(
    ca_pem_path: Path, server_cert: CertPaths, rsa_server_cert: CertPaths, order: str
) -> None:
    pairs = [server_cert, rsa_server_cert]
    if order == "rsa first":
        pairs.reverse()
    offers = {
        ("1.3", "ECDSA"): ["-tls1_3", "-sigalgs", "ECDSA+SHA256"],
        ("1.3", "RSA"): ["-tls1_3", "-sigalgs", "RSA-PSS+SHA256"],
        ("1.2", "ECDSA"): ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
        ("1.2", "RSA"): ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"],
    }
    async with RecordingUpstream() as up:
        listener = tls_listener(cert=pairs[0].cert, key=pairs[0].key)
        listener["tls"]["certificates"].append(
            {"cert": str(pairs[1].cert), "key": str(pairs[1].key)}
        )
        config = proxy_config([listener], {"app": {"servers": [up.address]}})
        async with running_proxy(config) as daemon:
            port = daemon.addresses["public"][1]
            served = {}
            for (version, kind), extra in offers.items():
                for sni in (True, False):
                    args = _s_client_args(port, ca_pem_path, sni=sni, extra=[*extra, "-brief"])
                    done = await openssl_s_client(args)
                    out = done.stderr.decode()
                    found = re.search(r"^Signature type: (\S+)$", out, re.MULTILINE)
                    assert done.returncode == 0 and found, out
                    served[version, kind, sni] = found.group(1).replace("RSA-PSS", "RSA")
    assert served == {key: key[1] for key in served}


@pytest.mark.parametrize(
    ("groups", "negotiated"),
    [
        (None, "X25519"),
        ("X448", None),
        ("ffdhe2048", None),
        ("secp521r1", None),
        ("X448:P-256", "prime256v1"),  # a HelloRetryRequest moves the client to P-256
        ("secp384r1", "secp384r1"),
    ],
)
async def test_key_exchange_groups_are_mozilla_intermediate(
    ca_pem_path: Path, server_cert: CertPaths, groups: str | None, negotiated: str | None
) -> None:
    async with RecordingUpstream() as up:
        config = proxy_config(
            [tls_listener(cert=server_cert.cert, key=server_cert.key)],
            {"app": {"servers": [up.address]}},
        )
        async with running_proxy(config) as daemon:
            port = daemon.addresses["public"][1]
            extra = ["-tls1_3", "-brief", *(["-groups", groups] if groups else [])]
            done = await openssl_s_client(_s_client_args(port, ca_pem_path, sni=True, extra=extra))
    out = done.stderr.decode()
    if negotiated is None:
        assert done.returncode != 0, out
        assert "handshake failure" in out, out
    else:
        assert done.returncode == 0, out
        assert re.search(rf"(Server Temp Key|Negotiated TLS1.3 group): .*{negotiated}", out), out
