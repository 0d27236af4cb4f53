"""Two separate gateproxy processes sharing ticket key files resume each other's sessions, on
TLS 1.2 and 1.3, with nginx- and HAProxy-format files written by ``gateproxy keys new``; SIGHUP
makes a process re-read its files, and a broken file keeps the old keys.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import trio
import trustme

from tests.conftest import CertPaths
from tests.helpers.clients import Response, https_request
from tests.helpers.supervised import Supervised, supervised_file
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
