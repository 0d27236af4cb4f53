"""SupervisorKeys: which listeners get a shared ring, reload survival, rotation, wire, and the
key files it reads (ages from the files, kept across reloads)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from gateproxy.core.config import Config, load_config_data
from gateproxy.core.key_files import new_key_file
from gateproxy.core.ticket_keys import keys_from_wire
from gateproxy.errors import ConfigError
from gateproxy.net.key_rings import SupervisorKeys
from tests.conftest import CertPaths
from tests.helpers.proxy import proxy_config, tls_listener
from tests.helpers.rawhttp import plain_listener

UPSTREAMS = {"app": {"servers": ["127.0.0.1:9"]}}


def _config(listeners: list[dict[str, Any]], **top: Any) -> Config:
    return load_config_data(proxy_config(listeners, UPSTREAMS, **top), source="<test>")


def _tls(cert: CertPaths, *, name: str = "public", **tickets: Any) -> dict[str, Any]:
    tls: dict[str, Any] = {"tickets": tickets} if tickets else {}
    return tls_listener(cert=cert.cert, key=cert.key, name=name, tls=tls)


def _material(keys: SupervisorKeys, name: str, *, now: float) -> list[tuple[str, str, str]]:
    return [(str(k["name"]), str(k["aes"]), str(k["hmac"])) for k in keys.wire(now=now)[name]]


def test_a_tls_listener_with_default_tickets_gets_a_ring(server_cert: CertPaths) -> None:
    keys = SupervisorKeys()
    keys.prepare(_config([_tls(server_cert)]), now=100.0)
    wire = keys.wire(now=100.0)
    assert list(wire) == ["public"]
    (item,) = wire["public"]
    assert item["age_s"] == 0.0
    (key,) = keys_from_wire(wire["public"], now=0.0)
    assert key.cipher == "aes-256-cbc"
    assert keys.prefixes("public") == [key.name_prefix()]


@pytest.mark.parametrize(
    ("tickets", "top"),
    [
        ({"enabled": False}, {}),
        ({"stateless": False}, {}),
        ({}, {"tls_engine": "stdlib_only"}),
        ({"key_files": ["missing.key"], "enabled": False}, {}),  # files unused: not read here
    ],
    ids=["tickets_off", "stateful", "stdlib_only", "key_files_unused"],
)
def test_listeners_without_keys_to_share_get_no_ring(
    server_cert: CertPaths, tickets: dict[str, Any], top: dict[str, Any]
) -> None:
    keys = SupervisorKeys()
    keys.prepare(_config([_tls(server_cert, **tickets)], **top), now=0.0)
    assert keys.wire(now=0.0) == {}
    assert keys.rotate_if_due(now=1e9) == []
    with pytest.raises(KeyError):
        keys.prefixes("public")


def test_a_plain_listener_gets_no_ring(server_cert: CertPaths) -> None:
    keys = SupervisorKeys()
    keys.prepare(_config([plain_listener(), _tls(server_cert, name="secure")]), now=0.0)
    assert list(keys.wire(now=0.0)) == ["secure"]


def test_each_tls_listener_gets_its_own_ring(server_cert: CertPaths) -> None:
    keys = SupervisorKeys()
    keys.prepare(_config([_tls(server_cert, name="a"), _tls(server_cert, name="b")]), now=0.0)
    wire = keys.wire(now=0.0)
    assert sorted(wire) == ["a", "b"]
    assert _material(keys, "a", now=0.0) != _material(keys, "b", now=0.0)


def test_prepare_with_the_same_settings_keeps_the_keys(server_cert: CertPaths) -> None:
    keys = SupervisorKeys()
    config = _config([_tls(server_cert, rotate_every="10s", keep=1)])
    keys.prepare(config, now=0.0)
    before = _material(keys, "public", now=0.0)
    # a reload that changes something unrelated to the tickets
    reloaded = _config(
        [_tls(server_cert, rotate_every="10s", keep=1), plain_listener()], shutdown_timeout="9s"
    )
    keys.prepare(reloaded, now=5.0)
    assert _material(keys, "public", now=5.0) == before
    assert keys.wire(now=5.0)["public"][0]["age_s"] == 5.0
    # the rotation schedule survived too: due at 10, not at 15
    assert keys.rotate_if_due(now=10.0) == ["public"]


@pytest.mark.parametrize(
    "changed",
    [{"rotate_every": "20s", "keep": 1}, {"rotate_every": "10s", "keep": 3}],
    ids=["rotate_every", "keep"],
)
def test_prepare_with_changed_rotation_settings_makes_new_keys(
    server_cert: CertPaths, changed: dict[str, Any]
) -> None:
    keys = SupervisorKeys()
    keys.prepare(_config([_tls(server_cert, rotate_every="10s", keep=1)]), now=0.0)
    before = _material(keys, "public", now=0.0)
    keys.prepare(_config([_tls(server_cert, **changed)]), now=5.0)
    after = _material(keys, "public", now=5.0)
    assert len(after) == 1 and after[0] not in before
    assert keys.wire(now=5.0)["public"][0]["age_s"] == 0.0


def test_prepare_drops_removed_and_renamed_listeners(server_cert: CertPaths) -> None:
    keys = SupervisorKeys()
    keys.prepare(_config([_tls(server_cert, name="old"), _tls(server_cert, name="kept")]), now=0.0)
    old = _material(keys, "old", now=0.0)
    keys.prepare(_config([_tls(server_cert, name="kept"), _tls(server_cert, name="new")]), now=1.0)
    assert sorted(keys.wire(now=1.0)) == ["kept", "new"]
    assert _material(keys, "new", now=1.0) != old
    with pytest.raises(KeyError):
        keys.prefixes("old")


def test_switching_tickets_off_and_on_again_makes_new_keys(server_cert: CertPaths) -> None:
    keys = SupervisorKeys()
    keys.prepare(_config([_tls(server_cert)]), now=0.0)
    before = _material(keys, "public", now=0.0)
    keys.prepare(_config([_tls(server_cert, enabled=False)]), now=1.0)
    assert keys.wire(now=1.0) == {}
    keys.prepare(_config([_tls(server_cert)]), now=2.0)
    assert _material(keys, "public", now=2.0) != before


def test_rotate_if_due_names_the_rotated_listeners(server_cert: CertPaths) -> None:
    keys = SupervisorKeys()
    config = _config(
        [
            _tls(server_cert, name="fast", rotate_every="10s"),
            _tls(server_cert, name="slow", rotate_every="25s"),
            plain_listener(),
        ]
    )
    keys.prepare(config, now=100.0)
    assert keys.rotate_if_due(now=109.999) == []
    assert keys.rotate_if_due(now=110.0) == ["fast"]
    assert keys.rotate_if_due(now=110.0) == []
    assert keys.rotate_if_due(now=119.0) == []
    assert keys.rotate_if_due(now=125.0) == ["fast", "slow"]
    # late by several periods: one rotation, the next one period after now
    assert keys.rotate_if_due(now=200.0) == ["fast", "slow"]
    assert keys.rotate_if_due(now=209.0) == []
    assert keys.rotate_if_due(now=210.0) == ["fast"]


def test_wire_carries_keep_plus_one_keys_after_enough_rotations(server_cert: CertPaths) -> None:
    keys = SupervisorKeys()
    keys.prepare(_config([_tls(server_cert, rotate_every="10s", keep=2)]), now=0.0)
    seen: list[tuple[str, str, str]] = []
    counts = []
    for step in range(1, 6):
        now = 10.0 * step
        seen.insert(0, _material(keys, "public", now=now)[0])
        assert keys.rotate_if_due(now=now) == ["public"]
        counts.append(len(keys.wire(now=now)["public"]))
    assert counts == [2, 3, 3, 3, 3]
    wire = keys.wire(now=55.0)["public"]
    assert [item["age_s"] for item in wire] == [5.0, 15.0, 25.0]
    material = _material(keys, "public", now=55.0)
    assert material[1:] == seen[:2]  # newest first, the oldest dropped
    assert len({m[0] for m in material}) == 3


def test_prefixes_match_the_wire_names(server_cert: CertPaths) -> None:
    keys = SupervisorKeys()
    keys.prepare(_config([_tls(server_cert, rotate_every="10s", keep=3)]), now=0.0)
    for now in (10.0, 20.0, 30.0):
        keys.rotate_if_due(now=now)
    names = [str(item["name"]) for item in keys.wire(now=30.0)["public"]]
    assert len(names) == 4
    assert keys.prefixes("public") == [name[:8] for name in names]


def _key_file(path: Path, *, age: float) -> str:
    """A fresh nginx key file last modified ``age`` seconds ago; its key's name prefix."""
    data = new_key_file(fmt="nginx", random_bytes=os.urandom, now=0.0)
    path.write_bytes(data)
    then = time.time() - age
    os.utime(path, (then, then))
    return data[:4].hex()


def _ages(keys: SupervisorKeys, name: str, *, now: float) -> dict[str, float]:
    return {str(k["name"])[:8]: float(str(k["age_s"])) for k in keys.wire(now=now)[name]}


def test_key_files_are_read_here_and_a_key_is_as_old_as_its_file(
    server_cert: CertPaths, tmp_path: Path
) -> None:
    old = _key_file(tmp_path / "old.key", age=1000.0)
    config = _config([_tls(server_cert, key_files=["old.key"]), _tls(server_cert, name="r")])
    keys = SupervisorKeys(base_dir=tmp_path)
    assert keys.prepare(config, now=50.0) == ["public"]
    assert keys.prefixes("public") == [old]
    assert 1000.0 <= _ages(keys, "public", now=50.0)[old] < 1100.0
    assert keys.rotate_if_due(now=1e9) == ["r"]  # a key-file ring never rotates itself


def test_a_reload_keeps_the_age_of_keys_it_reads_again(
    server_cert: CertPaths, tmp_path: Path
) -> None:
    old = _key_file(tmp_path / "a.key", age=1000.0)
    keys = SupervisorKeys(base_dir=tmp_path)
    keys.prepare(_config([_tls(server_cert, key_files=["a.key"])]), now=0.0)
    before = _ages(keys, "public", now=10.0)[old]
    (tmp_path / "a.key").rename(tmp_path / "b.key")  # a rotation: a new current, the old second
    new = _key_file(tmp_path / "a.key", age=0.0)
    os.utime(tmp_path / "b.key")  # even when the old key's file was touched
    config = _config([_tls(server_cert, key_files=["a.key", "b.key"])])
    assert keys.prepare(config, now=10.0) == ["public"]
    assert keys.prefixes("public") == [new, old]
    ages = _ages(keys, "public", now=10.0)
    assert ages[old] == before and ages[new] < 60.0


def test_a_broken_key_file_raises_and_keeps_the_rings(
    server_cert: CertPaths, tmp_path: Path
) -> None:
    old = _key_file(tmp_path / "a.key", age=0.0)
    config = _config([_tls(server_cert, key_files=["a.key"])])
    keys = SupervisorKeys(base_dir=tmp_path, source="gp.yaml")
    keys.prepare(config, now=0.0)
    (tmp_path / "a.key").write_bytes(b"short")
    with pytest.raises(ConfigError, match=r"gp.yaml: listeners\[0\].tls.tickets.key_files\[0\]"):
        keys.prepare(config, now=1.0)
    assert keys.prefixes("public") == [old]
