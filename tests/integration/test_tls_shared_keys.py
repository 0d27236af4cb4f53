"""Two separate gateproxy processes sharing ticket key files resume each other's sessions, on
TLS 1.2 and 1.3, with nginx- and HAProxy-format files written by ``gateproxy keys new``; SIGHUP
makes a process re-read its files, and a broken file keeps the old keys.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import trio
import trustme
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CertPaths
from tests.helpers.clients import Response, https_request
from tests.helpers.proxy import tls_listener
from tests.helpers.supervised import Supervised, supervised, supervised_file
from tests.helpers.tls_sessions import session_of
from tests.helpers.upstreams import RecordingUpstream

LISTENERS = {"ng": "nginx", "hap": "haproxy"}


def _write_config(tmp: Path, name: str, cert: CertPaths, upstream: str) -> Path:
    listeners = [
        {
            "name": listener,
            "bind": "127.0.0.1:0",
            "tls": {
                "certificates": [{"cert": str(cert.cert), "key": str(cert.key)}],
                "session_cache": {"mode": "off"},  # only the shared tickets can resume
                "tickets": {"key_files": [f"{listener}.key"], "key_format": fmt},
            },
            "routes": [{"path_prefix": "/", "upstream": "app"}],
        }
        for listener, fmt in LISTENERS.items()
    ]
    config = {
        "listeners": listeners,
        "upstreams": {"app": {"servers": [upstream]}},
        "admin": None,
        "access_log": {"path": "off"},
        "shutdown_timeout": "2s",
    }
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


async def _keys_new(fmt: str, out: Path) -> None:
    await trio.run_process(
        [sys.executable, "-m", "gateproxy", "keys", "new", "--format", fmt, "--out", str(out)],
        capture_stdout=True,
    )


async def _get(
    proxy: Supervised, listener: str, ca: trustme.CA, version: str, **kw: Any
) -> Response:
    resp = await https_request(proxy.address(listener), ca=ca, tls_version=version, **kw)
    assert resp.status == 200
    return resp


async def test_two_processes_sharing_key_files_resume_each_others_sessions(
    tmp_path: Path, ca: trustme.CA, server_cert: CertPaths
) -> None:
    for listener, fmt in LISTENERS.items():
        await _keys_new(fmt, tmp_path / f"{listener}.key")
    async with RecordingUpstream() as up:
        config_a = _write_config(tmp_path, "a", server_cert, up.address)
        config_b = _write_config(tmp_path, "b", server_cert, up.address)
        async with supervised_file(config_a) as a, supervised_file(config_b) as b:
            assert a.address("ng") != b.address("ng")
            outcomes = {}
            with trio.fail_after(20):
                for listener in LISTENERS:
                    for version in ("TLSv1.2", "TLSv1.3"):
                        first = await _get(a, listener, ca, version)
                        on_b = await _get(b, listener, ca, version, session=session_of(first))
                        back_on_a = await _get(a, listener, ca, version, session=session_of(on_b))
                        outcomes[listener, version] = (
                            first.session_reused,
                            on_b.session_reused,
                            back_on_a.session_reused,
                        )
    assert outcomes == {key: (False, True, True) for key in outcomes}
    assert len(outcomes) == 4


async def test_sighup_rereads_the_key_files(
    tmp_path: Path, ca: trustme.CA, server_cert: CertPaths
) -> None:
    for listener, fmt in LISTENERS.items():
        await _keys_new(fmt, tmp_path / f"{listener}.key")
    async with RecordingUpstream() as up:
        config_a = _write_config(tmp_path, "a", server_cert, up.address)
        config_b = _write_config(tmp_path, "b", server_cert, up.address)
        async with supervised_file(config_a) as a, supervised_file(config_b) as b:
            with trio.fail_after(20):
                before = await _get(a, "ng", ca, "TLSv1.3")
                assert (
                    await _get(b, "ng", ca, "TLSv1.3", session=session_of(before))
                ).session_reused

                await _keys_new("nginx", tmp_path / "new.key")
                (tmp_path / "new.key").rename(tmp_path / "ng.key")
                b.process.send_signal(signal.SIGHUP)
                reloaded = await b.wait_event("reloaded")  # a new generation read the files

                # B forgot the old key: A's old ticket gets a full handshake on B ...
                stale = await _get(b, "ng", ca, "TLSv1.3", session=session_of(before))
                # ... while A, not reloaded, still resumes it; B's new tickets resume on B.
                on_a = await _get(a, "ng", ca, "TLSv1.3", session=session_of(before))
                again = await _get(b, "ng", ca, "TLSv1.3", session=session_of(stale))

                # A broken file on the next SIGHUP: B logs it and keeps the keys it has.
                (tmp_path / "ng.key").write_bytes(b"short")
                b.process.send_signal(signal.SIGHUP)
                failed = await b.wait_event("reload_failed")
                kept = await _get(b, "ng", ca, "TLSv1.3", session=session_of(again))
            assert b.process.returncode is None  # SIGHUP did not stop it
    assert (stale.session_reused, on_a.session_reused, again.session_reused) == (
        False,
        True,
        True,
    )
    assert reloaded["generation"] == 2
    [error] = [e for e in failed["errors"] if "key_files" in e]
    assert error.startswith(f"{tmp_path / 'b.yaml'}: listeners[0].tls.tickets.key_files[0]")
    assert "48 or 80 bytes, got 5" in error
    assert failed["kept_generation"] == 2
    assert kept.session_reused  # the running generation kept the keys it had


async def _key_ages(proxy: Supervised) -> dict[tuple[str, str], float]:
    """``gateproxy_tls_ticket_key_age_seconds`` from /metrics: (listener, key prefix) -> age."""
    status, body = await proxy.get("/metrics")
    assert status == 200, body
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    samples = families["gateproxy_tls_ticket_key_age_seconds"].samples
    return {(s.labels["listener"], s.labels["key"]): s.value for s in samples}


async def _reload(proxy: Supervised) -> dict[str, Any]:
    """SIGHUP; the supervisor's ``ticket_keys_reloaded`` line once the reload is done."""
    proxy.signal(signal.SIGHUP)
    await proxy.wait_event("reloaded")
    return await proxy.wait_event("ticket_keys_reloaded", where=lambda e: "worker" not in e)


async def test_key_age_is_the_key_files_age_and_survives_reloads(
    tmp_path: Path, server_cert: CertPaths
) -> None:
    key_file = tmp_path / "ng.key"
    await _keys_new("nginx", key_file)
    an_hour_ago = time.time() - 3600
    os.utime(key_file, (an_hour_ago, an_hour_ago))
    shared = tls_listener(
        cert=server_cert.cert,
        key=server_cert.key,
        name="ng",
        tls={"tickets": {"key_files": ["ng.key"]}},
    )
    rotating = tls_listener(cert=server_cert.cert, key=server_cert.key, name="rotating")
    config = {
        "workers": 2,
        "listeners": [shared, rotating],
        "upstreams": {"app": {"servers": ["127.0.0.1:9"]}},
        "admin": {"bind": "127.0.0.1:0"},
        "access_log": {"path": "off"},
        "shutdown_timeout": "2s",
    }
    old = ("ng", key_file.read_bytes()[:4].hex())
    async with supervised(config, tmp_path) as gp:
        with trio.fail_after(30):
            first = await _key_ages(gp)
            unchanged = await _reload(gp)  # the same files
            second = await _key_ages(gp)

            await _keys_new("nginx", tmp_path / "new.key")
            (tmp_path / "new.key").rename(key_file)
            changed = await _reload(gp)
            third = await _key_ages(gp)
    new = ("ng", key_file.read_bytes()[:4].hex())
    assert first[old] >= 3600 and second[old] >= 3600  # the key file's age
    rotating_key = next(k for k in first if k[0] == "rotating")
    for key in (old, rotating_key):  # a reload does not make a known key young again
        assert second[key] >= first[key] - 0.5
    assert (unchanged["listener"], unchanged["keys"]) == ("ng", [old[1]])
    assert (changed["listener"], changed["keys"]) == ("ng", [new[1]])
    assert third[new] < 60 and old not in third
