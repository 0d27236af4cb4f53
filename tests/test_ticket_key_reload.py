"""``Daemon.reload_ticket_keys`` (what SIGHUP runs): new keys in, a broken file keeps the old
keys and says why, unchanged keys keep their age, listeners without key files are left alone.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from gateproxy.core.key_files import new_key_file
from gateproxy.daemon import Daemon
from tests.conftest import CertPaths
from tests.helpers.proxy import proxy_config, running_proxy, tls_listener


def _key(path: Path, fmt: str = "nginx") -> bytes:
    data = new_key_file(fmt=fmt, random_bytes=os.urandom, now=0.0)
    path.write_bytes(data)
    return data


def _config(server_cert: CertPaths, **tickets: Any) -> dict[str, Any]:
    keyed = tls_listener(cert=server_cert.cert, key=server_cert.key, tls={"tickets": tickets})
    plain = tls_listener(cert=server_cert.cert, key=server_cert.key, name="rotating")
    off = tls_listener(
        cert=server_cert.cert,
        key=server_cert.key,
        name="off",
        tls={"tickets": {**tickets, "enabled": False}},  # files read, but no ring to reload
    )
    return proxy_config([keyed, plain, off], {"app": {"servers": ["127.0.0.1:9"]}})


def _names(daemon: Daemon, index: int = 0) -> list[bytes]:
    engine = daemon.runtime.listeners[index].engine
    assert engine is not None and engine.keyring is not None
    keys = engine.keyring.keys()
    return [key.name for key in keys]


def _events(err: str, name: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [r for r in records if r["event"] == name]


async def test_reload_swaps_keys_and_keeps_the_age_of_unchanged_ones(
    server_cert: CertPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _key(tmp_path / "a.key")
    second = _key(tmp_path / "b.key")
    config = _config(server_cert, key_files=["a.key", "b.key"])
    async with running_proxy(config, base_dir=tmp_path) as daemon:
        assert _names(daemon) == [first[:16], second[:16]]
        rotating_before = _names(daemon, 1)
        engine = daemon.runtime.listeners[0].engine
        assert engine is not None and engine.keyring is not None
        created_b = engine.keyring.keys()[1].created

        newest = _key(tmp_path / "a.key")  # a new current key; b.key unchanged
        assert daemon.reload_ticket_keys() == {"public": True}
        assert _names(daemon) == [newest[:16], second[:16]]
        assert engine.keyring.keys()[1].created == created_b  # same key: same age
        assert _names(daemon, 1) == rotating_before  # a rotating ring is not touched
    reloaded = _events(capsys.readouterr().err, "ticket_keys_reloaded")
    assert reloaded == [
        {**reloaded[0], "listener": "public", "keys": [newest[:4].hex(), second[:4].hex()]}
    ]


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("delete", "cannot read ticket key file"),
        ("truncate", "must be exactly 48 or 80 bytes, got 40"),
        ("duplicate", "repeats the name"),
    ],
)
async def test_a_broken_reload_keeps_the_old_keys(
    server_cert: CertPaths,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    breakage: str,
    expected: str,
) -> None:
    first = _key(tmp_path / "a.key")
    second = _key(tmp_path / "b.key")
    config = _config(server_cert, key_files=["a.key", "b.key"])
    async with running_proxy(config, base_dir=tmp_path) as daemon:
        if breakage == "delete":
            (tmp_path / "b.key").unlink()
        elif breakage == "truncate":
            (tmp_path / "b.key").write_bytes(second[:40])
        else:
            (tmp_path / "b.key").write_bytes(first)
        assert daemon.reload_ticket_keys() == {"public": False}
        assert _names(daemon) == [first[:16], second[:16]]
    [failed] = _events(capsys.readouterr().err, "reload_failed")
    assert failed["listener"] == "public" and failed["what"] == "ticket_keys"
    assert failed["kept"] == [first[:4].hex(), second[:4].hex()]
    [error] = failed["errors"]
    assert error.startswith("<test>: listeners[0].tls.tickets.key_files[1]: ")
    assert expected in error


async def test_haproxy_file_reload(server_cert: CertPaths, tmp_path: Path) -> None:
    _key(tmp_path / "t.keys", "haproxy")
    config = _config(server_cert, key_files=["t.keys"], key_format="haproxy")
    async with running_proxy(config, base_dir=tmp_path) as daemon:
        before = _names(daemon)
        fresh = _key(tmp_path / "t.keys", "haproxy")
        assert daemon.reload_ticket_keys() == {"public": True}
        after = _names(daemon)
    assert len(before) == len(after) == 3 and not set(before) & set(after)
    penultimate = fresh.decode().splitlines()[-2]
    assert after[0] == base64.b64decode(penultimate)[:16]


async def test_without_key_files_nothing_is_reloaded(server_cert: CertPaths) -> None:
    async with running_proxy(_config(server_cert)) as daemon:
        before = _names(daemon)
        assert daemon.reload_ticket_keys() == {}
        assert _names(daemon) == before


async def test_a_key_is_as_old_as_its_file(server_cert: CertPaths, tmp_path: Path) -> None:
    _key(tmp_path / "t.keys", "haproxy")
    then = time.time() - 1000.0
    os.utime(tmp_path / "t.keys", (then, then))
    config = _config(server_cert, key_files=["t.keys"], key_format="haproxy")
    async with running_proxy(config, base_dir=tmp_path) as daemon:
        engine = daemon.runtime.listeners[0].engine
        assert engine is not None and engine.keyring is not None
        ages = [info.age_s for info in engine.keyring.describe(now=trio.current_time())]
        assert daemon.reload_ticket_keys() == {"public": True}  # the same file, read again
        again = [info.age_s for info in engine.keyring.describe(now=trio.current_time())]
    assert len(ages) == 3 and all(1000.0 <= age < 1100.0 for age in ages)
    assert all(b >= a for a, b in zip(ages, again, strict=True))
