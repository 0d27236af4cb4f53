"""Session tickets through the engine's key callback: resumption, rotation, grace, sharing."""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme
from OpenSSL import SSL as OSSL

from gateproxy.core.ticket_keys import KeyRing, TicketKey
from tests.tls.tlsutil import (
    FakeClock,
    client_context,
    handshake,
    make_server,
    pyopenssl_client_context,
    pyopenssl_handshake,
    ticket_key_name,
)

VERSIONS = ["1.2", "1.3"]


def _key(tag: int, size: int = 32) -> TicketKey:
    return TicketKey(
        name=bytes([tag]) * 16, aes_key=os.urandom(size), hmac_key=os.urandom(size), created=0.0
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_ticket_resumption_keeps_no_server_state(ca: trustme.CA, version: str) -> None:
    server = make_server(ca, mode="lru", tickets=True)
    client = client_context(ca, version=version)
    first = handshake(server, client)
    assert first.session is not None and first.session.has_ticket
    resumed = handshake(server, client, session=first.session)
    assert resumed.reused
    stats = server.engine.ticket_stats
    # TLS 1.3 tickets are single-use: the resumed connection gets a fresh one (not "renewed",
    # which counts tickets under an older key). TLS 1.2 keeps its ticket under the current key.
    fresh = 1 if version == "1.3" else 0
    assert (stats.issued, stats.decrypted, stats.renewed, stats.rejected) == (1 + fresh, 1, 0, 0)
    assert resumed.session is not None and resumed.session.has_ticket
    assert server.main.session_stats()["number"] == 0
    assert server.engine.stats(now=0.0)["session_cache"]["entries"] == 0  # type: ignore[index]  # stats values are object


def test_per_handshake_sets_tls13_ticket_count(ca: trustme.CA) -> None:
    server = make_server(ca, tickets=True, per_handshake=3)
    assert server.main.num_tickets == 3
    handshake(server, client_context(ca))
    assert server.engine.ticket_stats.issued == 3


@pytest.mark.parametrize("version", VERSIONS)
def test_rotation_changes_the_key_name_and_grace_renews(ca: trustme.CA, version: str) -> None:
    clock = FakeClock()
    server = make_server(ca, tickets=True, rotate_every=60, keep=1, clock=clock)
    ring = server.engine.keyring
    assert ring is not None
    client = client_context(ca, version=version)
    first = handshake(server, client)
    assert first.session is not None
    old_name = ticket_key_name(first.session)
    assert old_name == ring.encryption_key().name
    assert server.engine.rotate_if_due(now=clock.now + 30) is False
    clock.now += 61
    assert server.engine.rotate_if_due(now=clock.now) is True
    new_name = ring.encryption_key().name
    assert new_name != old_name
    # Grace: the old-key ticket still resumes, and comes back renewed under the new key.
    renewed = handshake(server, client, session=first.session)
    assert renewed.reused
    assert server.engine.ticket_stats.renewed == 1
    assert renewed.session is not None and ticket_key_name(renewed.session) == new_name
    roles = [k["role"] for k in server.engine.stats(now=clock.now)["tickets"]["keys"]]  # type: ignore[index]  # stats values are object
    assert roles == ["encrypt", "decrypt"]


@pytest.mark.parametrize("version", VERSIONS)
def test_dropped_key_means_full_handshake(ca: trustme.CA, version: str) -> None:
    server = make_server(ca, tickets=True, keep=1)
    ring = server.engine.keyring
    assert ring is not None
    client = client_context(ca, version=version)
    first = handshake(server, client)
    ring.rotate(now=2000.0)
    ring.rotate(now=3000.0)  # keep=1: the first key is gone
    again = handshake(server, client, session=first.session)
    assert not again.reused
    assert server.engine.ticket_stats.rejected == 1
    assert (
        again.session is not None and ticket_key_name(again.session) == ring.encryption_key().name
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_two_engines_with_the_same_keys_share_tickets(ca: trustme.CA, version: str) -> None:
    keys = [_key(1), _key(2)]
    a = make_server(ca, tickets=True, keyring=KeyRing.from_keys(keys))
    b = make_server(ca, tickets=True, keyring=KeyRing.from_keys(keys))
    client = client_context(ca, version=version)
    first = handshake(a, client)
    assert handshake(b, client, session=first.session).reused
    fresh = 1 if version == "1.3" else 0  # TLS 1.3: a fresh ticket on every resumption
    assert b.engine.ticket_stats.decrypted == 1 and b.engine.ticket_stats.issued == fresh


@pytest.mark.parametrize("version", [OSSL.TLS1_2_VERSION, OSSL.TLS1_3_VERSION])
def test_pyopenssl_client_resumes_across_engines(ca: trustme.CA, version: int) -> None:
    keys = [_key(3)]
    a = make_server(ca, tickets=True, keyring=KeyRing.from_keys(keys))
    b = make_server(ca, tickets=True, keyring=KeyRing.from_keys(keys))
    cctx = pyopenssl_client_context(version)
    reused, session = pyopenssl_handshake(a, cctx)
    assert not reused
    reused, _ = pyopenssl_handshake(b, cctx, session=session)
    assert reused


def test_replace_keys_from_files(ca: trustme.CA) -> None:
    old, new = _key(4), _key(5)
    server = make_server(ca, tickets=True, keyring=KeyRing.from_keys([old]))
    client = client_context(ca)
    first = handshake(server, client)
    server.engine.replace_keys([new, old])  # old kept for decryption: renewed
    renewed = handshake(server, client, session=first.session)
    assert renewed.reused and server.engine.ticket_stats.renewed == 1
    server.engine.replace_keys([_key(6)])  # both gone: rejected
    assert not handshake(server, client, session=first.session).reused
    assert server.engine.ticket_stats.rejected == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_aes128_keys(ca: trustme.CA, version: str) -> None:
    server = make_server(ca, tickets=True, keyring=KeyRing.from_keys([_key(7, size=16)]))
    client = client_context(ca, version=version)
    first = handshake(server, client)
    assert first.session is not None and ticket_key_name(first.session) == bytes([7]) * 16
    assert handshake(server, client, session=first.session).reused


def test_engine_makes_its_own_rotating_ring(ca: trustme.CA) -> None:
    server = make_server(ca, tickets=True, rotate_every=10, keep=3)
    ring = server.engine.keyring
    assert ring is not None and ring.rotating and ring.keep == 3
    assert make_server(ca, tickets=False).engine.keyring is None


# --- an independent client: the openssl binary over a real trio socket ---------------------------


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl binary")
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
async def test_openssl_s_client_resumes_with_a_saved_ticket(
    ca: trustme.CA, tmp_path: Path, version: str
) -> None:
    server = make_server(ca, tickets=True, clock=FakeClock())
    ring = server.engine.keyring
    assert ring is not None

    async def serve_one(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, server.main, server_side=True)
        server.engine.register_connection(tls._ssl_object, client="127.0.0.1")
        try:
            await tls.do_handshake()
            await tls.send_all(b"hello\n")
            await tls.receive_some(100)
            await tls.aclose()
        except trio.BrokenResourceError:
            pass
        finally:
            server.engine.unregister_connection(tls._ssl_object)

    sess = tmp_path / "sess.pem"
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve_one, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        outputs = []
        for flag in ("-sess_out", "-sess_in"):
            done = await trio.run_process(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", version,
                 "-servername", "localhost", "-ign_eof", flag, str(sess)],
                stdin=b"x\n", capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
            outputs.append(done.stdout.decode())
        nursery.cancel_scope.cancel()
    assert "New, " in outputs[0]
    assert "Reused, " in outputs[1]
    # The saved ticket starts with the current key's 16-byte name.
    text = await trio.run_process(
        ["openssl", "sess_id", "-in", str(sess), "-text", "-noout"], capture_stdout=True
    )
    dump = text.stdout.decode()
    first_row = dump.split("TLS session ticket:")[1].strip().splitlines()[0]
    hex_bytes = "".join(first_row.split("-", 1)[1].split()[:16]).replace("-", "")
    assert bytes.fromhex(hex_bytes[:32]) == ring.encryption_key().name
