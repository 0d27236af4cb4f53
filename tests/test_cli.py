"""The gateproxy command: check, keys, run (with a SIGTERM drain) and demo, as a user runs them."""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
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
from tests.helpers.clients import https_request
from tests.helpers.console import SCRIPT, demo_and_its_curl_line, gateproxy, message_lines
from tests.helpers.sockets import busy_port, free_port
from tests.helpers.supervised import supervised_file
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
    bind: "127.0.0.1:0"
    tls:
      certificates:
        - {{cert: {server_cert.cert}, key: {second_cert.key}}}
        - {{cert: missing.pem, key: missing-key.pem}}
    routes: [{{path_prefix: /, upstream: app}}]
upstreams:
  app: {{servers: ["127.0.0.1:8080"]}}
admin: null
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
    bind: "127.0.0.1:0"
    limits: {max_body_bytes: "lots", keepalive_timout: 5s}
    routes: [{path_prefix: /, upstream: ap}]
upstreams:
  app: {servers: ["127.0.0.1:8080"], keepalive: -1}
admin: null
""",
    )
    assert main(["check", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{config}: listeners[0].limits.max_body_bytes: expected a size" in err
    assert f"{config}: listeners[0].limits.keepalive_timout: unknown key" in err
    assert f"{config}: upstreams.app.keepalive: Input should be greater than or equal to 0" in err


def _plain_config(path: Path, *, binds: list[str], admin: str | None, **top: object) -> Path:
    """A config of plain listeners ``l0``, ``l1``... on ``binds`` (JSON is YAML)."""
    listeners = [
        {"name": f"l{i}", "bind": bind, "routes": [{"upstream": "app"}]}
        for i, bind in enumerate(binds)
    ]
    config = {
        "listeners": listeners,
        "upstreams": {"app": {"servers": ["127.0.0.1:1"]}},
        "admin": None if admin is None else {"bind": admin},
        "access_log": {"path": "off"},
        **top,
    }
    return _write(path, json.dumps(config))


def test_check_reports_schema_and_cross_reference_problems_in_one_run(
    tmp_path: Path, server_cert: CertPaths
) -> None:
    config = _write(
        tmp_path / "bad.yaml",
        f"""
listeners:
  - name: public
    bind: "127.0.0.1:0"
    tls:
      certificates: [{{cert: {server_cert.cert}, key: {server_cert.key}}}]
      session_cache: {{max_entries: -5}}
    routes: [{{path_prefix: /, upstream: ap}}]
  - name: public
    bind: "127.0.0.1:0"
    tls:
      certificates: [{{cert: missing.pem, key: {server_cert.key}}}]
    routes: [{{path_prefix: /, upstream: app}}]
upstreams:
  app: {{servers: ["127.0.0.1:8080"], keepalive: -1}}
""",
    )
    done = gateproxy("check", "-c", str(config))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"{config}: listeners[0].tls.session_cache.max_entries: "
        "Input should be greater than or equal to 1, got -5",
        f"{config}: upstreams.app.keepalive: Input should be greater than or equal to 0, got -1",
        f"{config}: listeners[0].routes[0].upstream: unknown upstream 'ap' (known: ['app'])",
        f"{config}: listeners[1].name: duplicate listener name 'public' (also listeners[0])",
        f"{config}: listeners[1].tls.certificates[0].cert: cannot read certificate file "
        f"'{tmp_path / 'missing.pem'}': No such file or directory",
    ]


def test_check_names_the_line_of_a_yaml_syntax_error(tmp_path: Path) -> None:
    config = _write(tmp_path / "bad.yaml", "listeners:\n  - name: a\n    bind: x: y\n")
    done = gateproxy("check", "-c", str(config))
    assert done.returncode == 1
    assert done.stderr == f"{config}:3:12: not valid YAML: mapping values are not allowed here\n"


def test_check_reports_addresses_already_in_use(tmp_path: Path) -> None:
    with busy_port() as taken, busy_port() as admin_taken:
        config = _plain_config(
            tmp_path / "gp.yaml",
            binds=["127.0.0.1:0", f"127.0.0.1:{taken}"],
            admin=f"127.0.0.1:{admin_taken}",
            wrokers=2,
        )
        done = gateproxy("check", "-c", str(config))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"{config}: wrokers: unknown key (check the spelling; see config/gateproxy.example.yaml)",
        f"{config}: listeners[1].bind: address 127.0.0.1:{taken} is already in use",
        f"{config}: admin.bind: address 127.0.0.1:{admin_taken} is already in use",
    ]


def test_check_binds_free_addresses_and_leaves_them_free(tmp_path: Path) -> None:
    port = free_port()
    config = _plain_config(tmp_path / "gp.yaml", binds=[f"127.0.0.1:{port}"], admin=None)
    done = gateproxy("check", "-c", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{config}: OK (1 listener(s), 1 upstream(s))\n"
    with socket.socket() as again:  # closed at once: nothing of check's is left on the port
        again.bind(("127.0.0.1", port))


async def test_check_passes_while_the_same_config_runs(tmp_path: Path) -> None:
    """What systemd's ExecReload does: check the running config, then SIGHUP."""
    config = _plain_config(
        tmp_path / "gp.yaml",
        binds=[f"127.0.0.1:{free_port()}"],
        admin=f"127.0.0.1:{free_port()}",
        workers=2,
    )
    async with supervised_file(config):
        done = await trio.run_process(
            [str(SCRIPT), "check", "-c", str(config)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert b"OK" in done.stdout


@pytest.mark.parametrize("busy", ["admin", "second listener"])
def test_run_on_a_busy_address_is_one_line_and_starts_no_worker(tmp_path: Path, busy: str) -> None:
    with busy_port() as taken:
        bind = f"127.0.0.1:{taken}"
        if busy == "admin":
            config = _plain_config(tmp_path / "gp.yaml", binds=["127.0.0.1:0"], admin=bind)
            key = "admin.bind"
        else:
            config = _plain_config(
                tmp_path / "gp.yaml", binds=["127.0.0.1:0", bind], admin="127.0.0.1:0"
            )
            key = "listeners[1].bind"
        done = gateproxy("run", "-c", str(config))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert message_lines(done.stderr + done.stdout) == [
        f"gateproxy: {key}: cannot listen on {bind}: [Errno 98] Address already in use"
    ]
    assert "worker_started" not in done.stderr
    assert '"exit_status":1' in done.stderr  # the last event says how it ended


@pytest.mark.parametrize("option", ["--port", "--admin-port"])
def test_demo_on_a_busy_port_is_one_line(option: str) -> None:
    with busy_port() as taken:
        ports = {"--port": "0", "--admin-port": "0", option: str(taken)}
        done = gateproxy("demo", *(x for pair in ports.items() for x in pair))
    assert done.returncode == 1
    assert message_lines(done.stderr) == [
        f"gateproxy: {option}: cannot listen on 127.0.0.1:{taken}: "
        "[Errno 98] Address already in use"
    ]


# A regressed reload could signal a whole process group (kill(0)) or, as root, every process on
# the machine (kill(-1)): these tests run the command alone in a new pid namespace and session.
ISOLATE = ["unshare", "--pid", "--fork"] if os.geteuid() == 0 and shutil.which("unshare") else None
isolated = pytest.mark.skipif(ISOLATE is None, reason="needs root and unshare(1) to be safe")


def _reload_isolated(*args: str) -> subprocess.CompletedProcess[str]:
    """``gateproxy reload ARGS...`` where whatever it signals can only be its own processes."""
    assert ISOLATE is not None
    return subprocess.run(
        [*ISOLATE, str(SCRIPT), "reload", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        start_new_session=True,
    )


@isolated
def test_reload_with_a_stale_pid_file_is_one_line(tmp_path: Path) -> None:
    pid = 4321  # no such process in the command's fresh pid namespace (where it is pid 1)
    _write(tmp_path / "gp.pid", f"{pid}\n")
    config = _plain_config(
        tmp_path / "gp.yaml", binds=["127.0.0.1:0"], admin=None, pid_file="gp.pid"
    )
    done = _reload_isolated("-c", str(config))
    assert done.returncode == 1
    assert done.stderr == (
        f"gateproxy: not reloading: no process {pid} (from pid_file gp.pid): "
        "gateproxy is not running, or the pid_file is stale\n"
    )


@isolated
@pytest.mark.parametrize("pid", ["0", "-1"])
def test_reload_never_signals_a_process_group(tmp_path: Path, pid: str) -> None:
    pid_file = _write(tmp_path / "gp.pid", f"{pid}\n")
    config = _plain_config(
        tmp_path / "gp.yaml", binds=["127.0.0.1:0"], admin=None, pid_file=str(pid_file)
    )
    from_file = _reload_isolated("-c", str(config))
    assert from_file.returncode == 1
    assert from_file.stderr == (
        f"gateproxy: pid_file {pid_file}: expected a process id >= 1, got {pid}\n"
    )
    from_option = _reload_isolated("-c", str(config), f"--pid={pid}")
    assert from_option.returncode == 2
    assert f"argument --pid: expected a process id >= 1, got '{pid}'" in from_option.stderr


def _without_cap_kill() -> None:
    """preexec_fn: drop CAP_KILL from the bounding set, so root signals only its own uid."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(24, 5, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_KILL
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_KILL)")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as another user")
def test_reload_of_a_process_it_may_not_signal_is_one_line(tmp_path: Path) -> None:
    config = _plain_config(tmp_path / "gp.yaml", binds=["127.0.0.1:0"], admin=None)
    target = subprocess.Popen(["sleep", "30"], user=65534)  # ours, running as nobody
    try:
        done = gateproxy(
            "reload", "-c", str(config), "--pid", str(target.pid), preexec_fn=_without_cap_kill
        )
        assert target.poll() is None  # not signalled
    finally:
        target.kill()
        target.wait()
    assert done.returncode == 1
    assert done.stderr == (
        f"gateproxy: not reloading: not permitted to signal process {target.pid} (from --pid): "
        "run this as the user gateproxy runs as, or as root\n"
    )


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
    status, result = await demo_and_its_curl_line(
        [sys.executable, "-m", "gateproxy", "demo", "--port", "0", "--admin-port", "0"]
    )
    assert status == 0
    assert result.returncode == 0, result.stderr
    assert b"Hello from the gateproxy demo upstream" in result.stdout
