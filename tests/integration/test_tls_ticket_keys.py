"""Ticket keys through the running proxy, seen from ``openssl s_client`` tickets.

A saved ticket's first 16 bytes name the key that encrypted it, so every test here reads the
real ticket a client holds: rotation changes the name, the grace window renews old tickets under
the new key, a dropped key gives a full handshake, and key files (nginx and HAProxy formats) put
their own key names on the tickets, also after a reload.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from gateproxy.cli import main as gateproxy_main
from gateproxy.daemon import Daemon
from tests.conftest import CertPaths
from tests.helpers.proxy import proxy_config, running_proxy, tls_listener
from tests.helpers.tls_sessions import SClientSession, s_client, tls_stats
from tests.helpers.upstreams import RecordingUpstream

HOUR = 3600.0
VERSIONS = ["1.2", "1.3"]


def _config(server_cert: CertPaths, upstream: str, *, tickets: dict[str, Any]) -> dict[str, Any]:
    # No session cache: a TLS 1.2 resumption can only come from the ticket.
    tls = {"session_cache": {"mode": "off"}, "tickets": tickets}
    listener = tls_listener(cert=server_cert.cert, key=server_cert.key, tls=tls)
    return proxy_config([listener], {"app": {"servers": [upstream]}})


class Client:
    """``openssl s_client`` against one daemon, saving sessions under ``tmp``."""

    def __init__(self, daemon: Daemon, ca_file: Path, tmp: Path, version: str) -> None:
        self.host, self.port = daemon.addresses["public"]
        self.ca_file, self.tmp, self.version = ca_file, tmp, version

    async def connect(self, save: str | None = None, resume: str | None = None) -> SClientSession:
        result = await s_client(
            self.host,
            self.port,
            ca_file=self.ca_file,
            version=self.version,
            sess_out=self.tmp / save if save else None,
            sess_in=self.tmp / resume if resume else None,
        )
        assert result.http_status == b"200", result.output
        assert result.version == f"TLSv{self.version}"
        return result


def _key_prefixes(daemon: Daemon) -> list[str]:
    return [k["name_prefix"] for k in tls_stats(daemon)["tickets"]["keys"]]


@pytest.mark.parametrize("version", VERSIONS)
async def test_rotation_grace_and_drop_with_real_tickets(
    server_cert: CertPaths, ca_pem_path: Path, tmp_path: Path, version: str
) -> None:
    async with RecordingUpstream() as up:
        tickets = {"rotate_every": "1h", "keep": 2}
        async with running_proxy(_config(server_cert, up.address, tickets=tickets)) as daemon:
            engine = daemon.runtime.listeners[0].engine
            assert engine is not None
            client = Client(daemon, ca_pem_path, tmp_path, version)
            now = trio.current_time()

            first = await client.connect(save="first.pem")
            assert first.ticket_name is not None and not first.reused
            assert _key_prefixes(daemon)[0] == first.ticket_name[:4].hex()

            now += HOUR
            assert engine.rotate_if_due(now=now)
            fresh = await client.connect(save="fresh.pem")
            assert fresh.ticket_name is not None
            assert fresh.ticket_name != first.ticket_name  # new tickets: the new key's name
            assert _key_prefixes(daemon)[0] == fresh.ticket_name[:4].hex()

            # Grace: the old ticket resumes, and comes back renewed under the current key.
            renewed = await client.connect(save="renewed.pem", resume="first.pem")
            assert renewed.reused
            if version == "1.3":  # s_client saves no session of a resumed TLS 1.2 handshake
                assert renewed.ticket_name == fresh.ticket_name
            assert tls_stats(daemon)["tickets"]["renewed"] == 1

            now += HOUR
            assert engine.rotate_if_due(now=now)  # the first key is now the oldest kept
            assert (await client.connect(resume="first.pem")).reused
            assert tls_stats(daemon)["tickets"]["renewed"] == 2
            assert tls_stats(daemon)["tickets"]["rejected"] == 0

            now += HOUR
            assert engine.rotate_if_due(now=now)  # keep=2 rotations later: the first key is gone
            dropped = await client.connect(save="after-drop.pem", resume="first.pem")
            assert not dropped.reused  # a clean full handshake, with a ticket under today's key
            assert dropped.ticket_name is not None
            assert dropped.ticket_name[:4].hex() == _key_prefixes(daemon)[0]
            stats = tls_stats(daemon)
    assert stats["tickets"]["rejected"] == 1
    assert [k["role"] for k in stats["tickets"]["keys"]] == ["encrypt", "decrypt", "decrypt"]
    assert first.ticket_name[:4].hex() not in _prefixes_of(stats)
    assert stats["handshakes"]["resumed"] == 2


def _prefixes_of(stats: dict[str, Any]) -> list[str]:
    return [k["name_prefix"] for k in stats["tickets"]["keys"]]


def _new_key_file(path: Path, fmt: str) -> Path:
    assert gateproxy_main(["keys", "new", "--format", fmt, "--out", str(path)]) == 0
    return path


def _replace(path: Path, content: bytes) -> None:
    """Rotate a key file the way operators should: write a temporary file, rename it over."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def _haproxy_encryption_name(path: Path) -> bytes:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return base64.b64decode(lines[-2])[:16]  # HAProxy: the penultimate line encrypts


@pytest.mark.parametrize("version", VERSIONS)
async def test_nginx_key_files_name_the_tickets_and_reload_rotates_them(
    server_cert: CertPaths, ca_pem_path: Path, tmp_path: Path, version: str
) -> None:
    """The nginx rotation recipe: previous <- current, current <- new, reload."""
    current = _new_key_file(tmp_path / "current.key", "nginx")
    previous = _new_key_file(tmp_path / "previous.key", "nginx")
    tickets = {"key_files": ["current.key", "previous.key"], "key_format": "nginx"}
    config = _config(server_cert, "127.0.0.1:1", tickets=tickets)
    async with RecordingUpstream() as up:
        config["upstreams"]["app"]["servers"] = [up.address]
        async with running_proxy(config, base_dir=tmp_path) as daemon:
            client = Client(daemon, ca_pem_path, tmp_path, version)
            before = await client.connect(save="before.pem")
            assert before.ticket_name == current.read_bytes()[:16]

            old_current = current.read_bytes()
            _replace(previous, old_current)
            _replace(current, _new_key_file(tmp_path / "spare.key", "nginx").read_bytes())
            assert daemon.reload_ticket_keys() == {"public": True}

            after = await client.connect(save="after.pem")
            assert after.ticket_name == current.read_bytes()[:16] != before.ticket_name
            resumed = await client.connect(save="renewed.pem", resume="before.pem")
            assert resumed.reused  # the old key is now the second file: still accepted
            if version == "1.3":  # renewed under the new key (TLS 1.2: not saved by s_client)
                assert resumed.ticket_name == after.ticket_name

            # The next rotation drops the first key: its tickets get a full handshake.
            _replace(previous, current.read_bytes())
            _replace(current, _new_key_file(tmp_path / "spare2.key", "nginx").read_bytes())
            assert daemon.reload_ticket_keys() == {"public": True}
            assert not (await client.connect(resume="before.pem")).reused
            stats = tls_stats(daemon)
    assert stats["tickets"]["renewed"] == 1 and stats["tickets"]["rejected"] == 1
    assert _prefixes_of(stats) == [current.read_bytes()[:4].hex(), previous.read_bytes()[:4].hex()]


@pytest.mark.parametrize("version", VERSIONS)
async def test_haproxy_key_file_penultimate_line_encrypts(
    server_cert: CertPaths, ca_pem_path: Path, tmp_path: Path, version: str
) -> None:
    keys = _new_key_file(tmp_path / "tickets.keys", "haproxy")
    tickets = {"key_files": [str(keys)], "key_format": "haproxy"}
    async with RecordingUpstream() as up:
        async with running_proxy(_config(server_cert, up.address, tickets=tickets)) as daemon:
            client = Client(daemon, ca_pem_path, tmp_path, version)
            first = await client.connect(save="first.pem")
            assert first.ticket_name == _haproxy_encryption_name(keys)
            assert (await client.connect(resume="first.pem")).reused

            # HAProxy rotation: drop the first line, append a new key; reload.
            lines = keys.read_text().splitlines()
            fresh = _new_key_file(tmp_path / "more.keys", "haproxy").read_text().splitlines()[0]
            _replace(keys, "\n".join([*lines[1:], fresh, ""]).encode())
            assert daemon.reload_ticket_keys() == {"public": True}
            second = await client.connect(save="second.pem")
            assert second.ticket_name == _haproxy_encryption_name(keys) != first.ticket_name
            assert (await client.connect(resume="first.pem")).reused  # still in the file
            stats = tls_stats(daemon)
    assert stats["tickets"]["renewed"] == 1
    assert len(stats["tickets"]["keys"]) == 3
