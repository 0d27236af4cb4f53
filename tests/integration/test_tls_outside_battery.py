"""A bounded slice of an outside TLS test battery (tlsfuzzer's post-handshake and resumption
scripts), replayed against a real gateproxy with tlslite-ng, the pure-Python TLS stack tlsfuzzer
is built on: a third TLS implementation beside OpenSSL, able to send what OpenSSL clients never
do. Each probe completes a real handshake, then sends one encrypted message no server may accept
(an empty alert, a KeyUpdate with an invalid type, a record of padding only, ...) and expects the
fatal alert nginx answers with on the same OpenSSL, never a bare TCP close. The resumption probe
is tlsfuzzer's test-tls13-session-resumption conversation: a request right after the client's
Finished, and at least one NewSessionTicket before the response, on every connection."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

import pytest
import trio

from tests.conftest import CertPaths
from tests.helpers.clients import split_address
from tests.helpers.proxy import address, proxy_config, running_proxy, tls_listener
from tests.helpers.upstreams import RecordingUpstream

tlslite = pytest.importorskip(
    "tlslite", reason="tlslite-ng not installed: pip install -e '.[test]'"
)
from tlslite.constants import AlertDescription, ContentType  # noqa: E402
from tlslite.errors import TLSAbruptCloseError, TLSRemoteAlert  # noqa: E402
from tlslite.messages import Message  # noqa: E402

Probe = Callable[["tlslite.TLSConnection"], None]
TLS13, TLS12 = (3, 4), (3, 3)


def _encrypted(content_type: int, body: bytes) -> Probe:
    """One record of ``content_type`` through the connection's record layer (tlsfuzzer's
    ``RawMessageGenerator``): encrypted, but not checked by tlslite's own state machine."""

    def send(conn: tlslite.TLSConnection) -> None:
        for _ in conn._recordLayer.sendRecord(Message(content_type, bytearray(body))):
            pass

    return send


def _tls13_inner(plaintext: bytes) -> Probe:
    """A TLS 1.3 record whose whole inner plaintext is ``plaintext`` (content type byte and
    padding included), e.g. only zeros: a record without a content type."""

    def send(conn: tlslite.TLSConnection) -> None:
        layer = conn._recordLayer
        sealed = layer._encryptThenSeal(bytearray(plaintext), ContentType.application_data)
        for _ in layer._recordSocket.send(Message(ContentType.application_data, sealed), 0):
            pass

    return send


KEY_UPDATE_BAD_TYPE = struct.pack(">BHBB", 24, 0, 1, 2)  # key_update, length 1, request 2
PROBES: dict[str, tuple[tuple[int, int], Probe, str]] = {
    "tls13-empty-alert": (TLS13, _encrypted(ContentType.alert, b""), "unexpected_message"),
    "tls13-empty-handshake": (TLS13, _encrypted(ContentType.handshake, b""), "unexpected_message"),
    "tls13-key-update-bad-type": (
        TLS13,
        _encrypted(ContentType.handshake, KEY_UPDATE_BAD_TYPE),
        "illegal_parameter",
    ),
    "tls13-padding-only": (TLS13, _tls13_inner(bytes(16)), "unexpected_message"),
    "tls13-oversized-plaintext": (
        TLS13,
        _encrypted(ContentType.application_data, b"A" * (2**14 + 1)),
        "record_overflow",
    ),
    "tls12-empty-alert": (TLS12, _encrypted(ContentType.alert, b""), "unexpected_message"),
    "tls12-alert-bad-level": (
        TLS12,
        _encrypted(ContentType.alert, b"\x07\x0a"),
        "illegal_parameter",
    ),
}


def _connect(
    addr: tuple[str, int], version: tuple[int, int], session: object = None
) -> tlslite.TLSConnection:
    conn = tlslite.TLSConnection(socket.create_connection(addr, timeout=5))
    settings = tlslite.HandshakeSettings()
    settings.minVersion = settings.maxVersion = version
    settings.keyShares = ["x25519"]  # the fastest key exchange in pure Python
    settings.eccCurves = ["x25519", "secp256r1"]  # (TLS 1.2: the ECDSA certificate's curve)
    conn.handshakeClientCert(settings=settings, serverName="localhost", session=session)
    return conn


def _answer_to(addr: tuple[str, int], version: tuple[int, int], probe: Probe) -> str:
    """Blocking: handshake, one request and its response, the probe, then what came back."""
    conn = _connect(addr, version)
    try:
        conn.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        received = b""
        while b"hello from upstream" not in received:
            received += conn.read(max=65536)
        probe(conn)
        while conn.read(max=65536):
            pass
        return "close_notify"
    except TLSRemoteAlert as exc:
        return str(AlertDescription.toStr(exc.description))
    except (TLSAbruptCloseError, ConnectionResetError):
        return "bare close"
    finally:
        conn.sock.close()


def _resumption_conversation(addr: tuple[str, int]) -> list[tuple[bool, int]]:
    """Blocking: a full handshake and two resumptions, each resuming the newest ticket; per
    connection (resumed, tickets received before the response's first byte)."""
    results, session = [], None
    for _ in range(3):
        conn = _connect(addr, TLS13, session)
        try:
            conn.write(b"GET / HTTP/1.0\r\n\r\n")  # leaves right after the client's Finished
            assert conn.read(max=65536)
            results.append((bool(conn.resumed), len(conn.tickets or [])))
            while conn.read(max=65536):
                pass
            session = conn.session
        finally:
            conn.close()
    return results


async def test_outside_battery_slice(server_cert: CertPaths) -> None:
    """One proxy for the whole slice (each handshake costs tens of ms in pure Python)."""
    async with RecordingUpstream() as up:
        config = proxy_config(
            [tls_listener(cert=server_cert.cert, key=server_cert.key)],
            {"app": {"servers": [up.address]}},
        )
        async with running_proxy(config) as daemon:
            addr = split_address(address(daemon))
            with trio.fail_after(30):
                answers = {
                    name: await trio.to_thread.run_sync(_answer_to, addr, version, probe)
                    for name, (version, probe, _alert) in PROBES.items()
                }
                resumption = await trio.to_thread.run_sync(_resumption_conversation, addr)
    assert answers == {name: alert for name, (_version, _probe, alert) in PROBES.items()}
    assert [resumed for resumed, _ in resumption] == [False, True, True]
    assert all(tickets >= 1 for _, tickets in resumption), resumption
