"""config/gateproxy.service: the operational requirements, read from the unit file itself."""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trustme

from gateproxy.core.config import Config
from gateproxy.core.units import parse_duration
from tests.conftest import CertPaths
from tests.helpers import seccomp
from tests.helpers.clients import https_request
from tests.helpers.proxy import tls_listener
from tests.helpers.supervised import supervised
from tests.helpers.tls_sessions import session_of
from tests.helpers.upstreams import RecordingUpstream

UNIT = Path(__file__).resolve().parents[1] / "config" / "gateproxy.service"
SCRIPT = Path(sys.executable).with_name("gateproxy")

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> Unit:
    """systemd's unit syntax: sections, repeated keys kept in order, ``#``/``;`` comments,
    backslash line continuations."""
    sections: Unit = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a key=value line in a section: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


@pytest.fixture(scope="module")
def service() -> list[tuple[str, str]]:
    return parse_unit(UNIT.read_text())["Service"]


def values(service: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in service if k == key]


def one(service: list[tuple[str, str]], key: str) -> str:
    found = values(service, key)
    assert len(found) == 1, f"{key}: expected exactly one, got {found}"
    return found[0]


def _config_path(command: str) -> str:
    argv = shlex.split(command)
    return argv[argv.index("-c") + 1]


def test_parser_keeps_repeated_keys_and_continuations() -> None:
    unit = parse_unit("# c\n[Service]\nA=1\n; c\nA=2\nB=x \\\n  y\n[Install]\nC=3\n")
    assert unit == {"Service": [("A", "1"), ("A", "2"), ("B", "x y")], "Install": [("C", "3")]}


def test_start_is_validated_first_and_runs_the_same_config(
    service: list[tuple[str, str]],
) -> None:
    pre = shlex.split(one(service, "ExecStartPre"))
    start = shlex.split(one(service, "ExecStart"))
    assert pre[0] == start[0] and Path(start[0]).is_absolute()
    assert (pre[1], start[1]) == ("check", "run")
    assert _config_path(one(service, "ExecStartPre")) == _config_path(one(service, "ExecStart"))
    assert one(service, "Type") == "notify"  # the supervisor sends READY=1 (net/sd_notify.py)
    assert values(service, "NotifyAccess") in ([], ["main"])  # the supervisor is the main pid


def test_reload_validates_then_sends_hup_to_the_main_process(
    service: list[tuple[str, str]],
) -> None:
    reloads = values(service, "ExecReload")
    assert shlex.split(reloads[-1]) == ["/bin/kill", "-HUP", "$MAINPID"]
    for command in reloads[:-1]:  # anything before the HUP only checks the same config
        assert shlex.split(command)[1] == "check"
        assert _config_path(command) == _config_path(one(service, "ExecStart"))


def test_stop_gives_the_drain_time_to_finish(service: list[tuple[str, str]]) -> None:
    fields = Config.model_fields
    default_stop = fields["shutdown_delay"].default + fields["shutdown_timeout"].default
    assert parse_duration(one(service, "TimeoutStopSec")) > default_stop
    assert one(service, "KillSignal") == "SIGTERM"
    assert one(service, "KillMode") == "mixed"  # SIGTERM to the supervisor only
    assert one(service, "Restart") == "on-failure"


def test_runs_unprivileged_with_only_the_low_port_capability(
    service: list[tuple[str, str]],
) -> None:
    assert one(service, "User") not in {"root", "0", ""}
    assert one(service, "Group") not in {"root", "0", ""}
    assert "CAP_NET_BIND_SERVICE" in one(service, "AmbientCapabilities").split()
    assert one(service, "CapabilityBoundingSet").split() == ["CAP_NET_BIND_SERVICE"]
    assert one(service, "NoNewPrivileges") == "yes"
    assert one(service, "ProtectSystem") == "strict"
    assert int(one(service, "LimitNOFILE")) >= 65536


def test_sandbox_still_allows_what_gateproxy_needs(service: list[tuple[str, str]]) -> None:
    families = one(service, "RestrictAddressFamilies").split()
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families)  # AF_UNIX: worker control channel
    assert one(service, "LogsDirectory") == "gateproxy"
    assert "/var/log/gateproxy" in values(service, "ReadWritePaths")
    assert values(service, "MemoryDenyWriteExecute") in ([], ["no"])  # libffi closures: see unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify also checks that the commands exist: point them at this checkout's script
    script = Path(sys.executable).with_name("gateproxy")
    if not script.exists():
        pytest.skip(f"{script} not installed")
    copy = tmp_path / "gateproxy.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/gateproxy", str(script)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "gateproxy.service" in line  # unknown keys and bad values are only warnings
    ]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


REPO = UNIT.parents[1]


def _filtered(service: list[tuple[str, str]]) -> list[str]:
    """The command prefix that runs the console script under the unit's system-call filter."""
    groups = [g for line in values(service, "SystemCallFilter") for g in line.split()]
    assert groups and not any(g.startswith("~") for g in groups)  # an allow-list
    helper = REPO / "tests" / "helpers" / "seccomp.py"
    error = one(service, "SystemCallErrorNumber")
    return [sys.executable, str(helper), error, *groups, "--", str(SCRIPT)]


async def _resumes(address: str, *, ca: trustme.CA, tls_version: str) -> bool:
    """A session from one connection resumes on another. A session-ID cache is per worker, so
    this tries up to 20 connections with it: the kernel spreads them over the workers."""
    first = await https_request(address, ca=ca, tls_version=tls_version)
    assert first.status == 200
    for _ in range(20):
        again = await https_request(
            address, ca=ca, tls_version=tls_version, session=session_of(first)
        )
        assert again.status == 200
        if again.session_reused:
            return True
    return False


def _seccomp_mode(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("Seccomp:"))


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not seccomp.available(),
    reason="needs systemd-analyze (the groups) and libseccomp (the filter)",
)
async def test_gateproxy_works_under_the_units_system_call_filter(
    service: list[tuple[str, str]], tmp_path: Path, ca: trustme.CA, server_cert: CertPaths
) -> None:
    command = _filtered(service)
    cached = {"tickets": {"enabled": False}}  # TLS 1.2 resumes through the lru cache callbacks
    async with RecordingUpstream() as up:
        config = {
            "workers": "auto",  # as gateproxy.prod.yaml: the CPU count (sched_getaffinity)
            "listeners": [
                tls_listener(cert=server_cert.cert, key=server_cert.key),
                tls_listener(cert=server_cert.cert, key=server_cert.key, name="cached", tls=cached),
            ],
            "upstreams": {"app": {"servers": [up.address]}},
            "admin": {"bind": "127.0.0.1:0"},
            "access_log": {"path": str(tmp_path / "access.log")},
        }
        (tmp_path / "check.yaml").write_text(json.dumps(config))
        check = await trio.run_process(  # ExecStartPre / ExecReload
            [*command, "check", "-c", str(tmp_path / "check.yaml")],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert check.returncode == 0 and b"OK" in check.stdout, check.stderr
        async with supervised(config, tmp_path, command=command) as gp:
            for listener, version in (
                ("public", "TLSv1.3"),
                ("public", "TLSv1.2"),
                ("cached", "TLSv1.2"),
            ):
                assert await _resumes(gp.address(listener), ca=ca, tls_version=version)
            gp.signal(signal.SIGHUP)
            await gp.wait_event("reloaded")
            assert (await https_request(gp.address(), ca=ca)).status == 200
            gp.signal(signal.SIGUSR1)
            await gp.wait_event("logs_reopened")
            stats = await gp.stats()
            ready = [w["pid"] for w in stats["workers"] if w["state"] == "ready"]
            assert ready and {_seccomp_mode(pid) for pid in [gp.process.pid, *ready]} == {"2"}
    assert stats["supervisor"]["reloads"] == 1
