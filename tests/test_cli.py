"""The gateproxy command: check, keys, run (with a SIGTERM drain) and demo, as a user runs them."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme

from gateproxy.cli import main
from gateproxy.core.key_files import parse_haproxy_keys, parse_nginx_key
from tests.conftest import CertPaths
from tests.helpers.clients import curl, https_request
from tests.helpers.upstreams import RecordingUpstream


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_check_lists_every_problem_with_file_and_key_path(
    tmp_path: Path,
    server_cert: CertPaths,
    second_cert: CertPaths,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _write(
        tmp_path / "bad.yaml",
        f"""
listeners:
  - name: public
    bind: "127.0.0.1:8443"
    tls:
      certificates:
        - {{cert: {server_cert.cert}, key: {second_cert.key}}}
        - {{cert: missing.pem, key: missing-key.pem}}
    routes: [{{path_prefix: /, upstream: app}}]
upstreams:
  app: {{servers: ["127.0.0.1:8080"]}}
""",
    )
    assert main(["check", "-c", str(config)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert any(
        line.startswith(f"{config}: listeners[0].tls.certificates[0].key") and "match" in line
        for line in err
    ), err
    assert any(line.startswith(f"{config}: listeners[0].tls.certificates[1].cert") for line in err)


@pytest.mark.parametrize(
    ("engine", "curves", "message"),
    [
        ("full", "X25519:P-256:nope", "OpenSSL does not know the group(s) nope"),
        ("stdlib_only", "X25519:P-256", "tls_engine: stdlib_only can restrict the groups to one"),
    ],
)
def test_check_refuses_unknown_curves_at_their_key_path(
    tmp_path: Path,
    server_cert: CertPaths,
    capsys: pytest.CaptureFixture[str],
    engine: str,
    curves: str,
    message: str,
) -> None:
    config = _write(
        tmp_path / "curves.yaml",
        f"""
tls_engine: {engine}
listeners:
  - name: public
    bind: "127.0.0.1:8443"
    tls:
      certificates: [{{cert: {server_cert.cert}, key: {server_cert.key}}}]
      curves: "{curves}"
    routes: [{{path_prefix: /, upstream: app}}]
upstreams:
  app: {{servers: ["127.0.0.1:8080"]}}
""",
    )
    assert main(["check", "-c", str(config)]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{config}: listeners[0].tls.curves: {message}"), line


def test_check_reports_schema_errors_all_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(
        tmp_path / "bad.yaml",
        """
listeners:
  - name: public
    bind: "127.0.0.1:8443"
    limits: {max_body_bytes: "lots", keepalive_timout: 5s}
    routes: [{path_prefix: /, upstream: ap}]
upstreams:
  app: {servers: ["127.0.0.1:8080"], keepalive: -1}
""",
    )
    assert main(["check", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{config}: listeners[0].limits.max_body_bytes: expected a size" in err
    assert f"{config}: listeners[0].limits.keepalive_timout: unknown key" in err
    assert f"{config}: upstreams.app.keepalive: Input should be greater than or equal to 0" in err


def test_check_accepts_the_shipped_configs(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[1]
    for name in ("minimal.yaml", "gateproxy.example.yaml"):
        assert main(["check", "-c", str(root / "config" / name)]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["nginx", "haproxy"])
def test_keys_new_writes_a_private_parseable_file(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"ticket.{fmt}"
    assert main(["keys", "new", "--format", fmt, "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    if fmt == "nginx":
        assert parse_nginx_key(out.read_bytes(), path=str(out), now=0.0).cipher == "aes-256-cbc"
    else:
        assert len(parse_haproxy_keys(out.read_text(), path=str(out), now=0.0)) == 3


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert re.match(r"gateproxy \d+\.\d+", capsys.readouterr().out)


async def _read_event(
    stream: trio.abc.ReceiveStream, name: str, buffer: bytearray
) -> dict[str, object]:
    """Read JSON event lines from the daemon's stderr until the named one."""
    with trio.fail_after(20):
        while True:
            while b"\n" in buffer:
                line, _, rest = bytes(buffer).partition(b"\n")
                buffer[:] = rest
                if line.startswith(b"{") and json.loads(line).get("event") == name:
                    return dict(json.loads(line))
            chunk = await stream.receive_some(4096)
            if not chunk:
                raise AssertionError(f"daemon exited before '{name}'")
            buffer += chunk


async def test_run_drains_an_in_flight_request_on_sigterm_and_exits_0(
    tmp_path: Path, ca: trustme.CA, server_cert: CertPaths
) -> None:
    hold = trio.Event()
    async with RecordingUpstream(hold=hold, body=b"slow answer\n") as up:
        config = _write(
            tmp_path / "gp.yaml",
            f"""
shutdown_timeout: 10s
listeners:
  - name: public
    bind: "127.0.0.1:0"
    tls: {{certificates: [{{cert: {server_cert.cert}, key: {server_cert.key}}}]}}
    routes: [{{path_prefix: /, upstream: app}}]
upstreams:
  app: {{servers: ["{up.address}"]}}
admin: null
access_log: {{path: "off"}}
""",
        )
        async with trio.open_nursery() as nursery:
            proc = await nursery.start(
                partial(
                    trio.run_process,
                    [sys.executable, "-m", "gateproxy", "run", "-c", str(config)],
                    stderr=subprocess.PIPE,
                    check=False,
                )
            )
            assert proc.stderr is not None
            buffer = bytearray()
            started = await _read_event(proc.stderr, "started", buffer)
            port = started["listeners"]["public"][1]  # type: ignore[index]
            answers: list[int] = []

            async def slow_request() -> None:
                resp = await https_request(f"127.0.0.1:{port}", ca=ca)
                answers.append(resp.status)

            nursery.start_soon(slow_request)
            await up.wait_for(lambda: len(up.requests) == 1)
            proc.send_signal(signal.SIGTERM)
            await _read_event(proc.stderr, "draining", buffer)
            with pytest.raises(OSError):  # no longer accepting
                await trio.open_tcp_stream("127.0.0.1", port)
            hold.set()  # the in-flight request may now finish
            with trio.fail_after(10):
                await proc.wait()
    assert answers == [200]
    assert proc.returncode == 0


async def test_demo_prints_a_working_curl_line() -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(
            partial(
                trio.run_process,
                [sys.executable, "-m", "gateproxy", "demo", "--port", "0", "--admin-port", "0"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                check=False,
                env=env,
            )
        )
        assert proc.stdout is not None
        out = b""
        with trio.fail_after(20):
            while b"/healthz" not in out:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, out
                out += chunk
        match = re.search(rb"curl --cacert (\S+) (https://localhost:\d+/)\n", out)
        assert match, out
        result = await curl(["-sS", "--cacert", match.group(1).decode(), match.group(2).decode()])
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            await proc.wait()
    assert result.returncode == 0, result.stderr
    assert b"Hello from the gateproxy demo upstream" in result.stdout
