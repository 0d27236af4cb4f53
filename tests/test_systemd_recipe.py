"""The README's systemd recipe, followed into a scratch root, and what the unit expects of it.

The recipe's own lines are read from README.md and run with bash, with every system path
(``/etc/``, ``/usr/local/``, ``/run/``, ``/var/``) moved under ``tmp_path`` by one substitution,
``useradd`` and ``systemctl`` replaced by stubs that record their arguments, the owner and group
mapped to the test's own, and the test's venv standing in for ``/opt/gateproxy`` (creating and
filling a venv would take a minute and the network). What systemd itself would do at start
(create ``RuntimeDirectory`` and ``LogsDirectory``) is done by the test from the unit's keys.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateproxy.config_files import load_and_check
from tests.conftest import CertPaths
from tests.test_systemd_unit import parse_unit

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
VENV_LINE = "python3 -m venv /opt/gateproxy && /opt/gateproxy/bin/pip install ."
SYSTEM_PATH = re.compile(r"(?<![\w./-])/(etc|usr/local|run|var)/")


def section(title: str) -> str:
    match = re.search(rf"^### {re.escape(title)}\n(.*?)(?=^### |^## )", README, re.M | re.S)
    assert match, f"README.md has no '### {title}' section"
    return match.group(1)


def recipe() -> list[str]:
    """The command lines of the systemd section's first ``sh`` block."""
    block = re.search(r"```sh\n(.*?)```", section("systemd"), re.S)
    assert block
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


@dataclass
class FakeRoot:
    root: Path
    calls: Path
    uid: int
    gid: int

    def path(self, system_path: str) -> Path:
        """Where ``system_path`` lands in the scratch root (other paths stay as they are)."""
        return Path(self.move(system_path))

    def move(self, text: str) -> str:
        return SYSTEM_PATH.sub(lambda m: f"{self.root}/{m.group(1)}/", text)

    def command(self, line: str) -> str:
        line = line.replace("/opt/gateproxy", sys.prefix)
        line = line.replace("-o root", f"-o {self.uid}").replace("-g gateproxy", f"-g {self.gid}")
        return self.move(line)


def _stub(folder: Path, name: str, calls: Path) -> None:
    script = folder / name
    script.write_text(f'#!/bin/sh\necho "{name} $*" >> {shlex.quote(str(calls))}\n')
    script.chmod(0o755)


@pytest.fixture
def installed(tmp_path: Path, server_cert: CertPaths) -> FakeRoot:
    """The scratch root after the README's recipe ran in it."""
    fake = FakeRoot(tmp_path / "root", tmp_path / "calls", os.getuid(), os.getgid())
    for folder in ("etc/systemd/system", "etc/logrotate.d", "usr/local/bin", "run", "var/log"):
        (fake.root / folder).mkdir(parents=True)
    certbot = fake.path("/etc/letsencrypt/live/example.com/")  # the user's certificate
    certbot.mkdir(parents=True)
    shutil.copy(server_cert.cert, certbot / "fullchain.pem")
    shutil.copy(server_cert.key, certbot / "privkey.pem")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name in ("useradd", "systemctl"):
        _stub(stubs, name, fake.calls)
    env = dict(os.environ, PATH=f"{stubs}:{fake.path('/usr/local/bin')}:{os.environ['PATH']}")
    lines = recipe()
    assert lines[0] == VENV_LINE  # not run: the test's venv is /opt/gateproxy
    for line in lines[1:]:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", fake.command(line)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, (line, done.stderr)
    return fake


def _unit(fake: FakeRoot) -> list[tuple[str, str]]:
    return parse_unit(fake.path("/etc/systemd/system/gateproxy.service").read_text())["Service"]


def _start_directories(fake: FakeRoot, service: list[tuple[str, str]]) -> set[str]:
    """What systemd creates when the unit starts: its RuntimeDirectory and LogsDirectory."""
    made = set()
    for key, base in (("RuntimeDirectory", "/run/"), ("LogsDirectory", "/var/log/")):
        for name in (v for k, v in service if k == key):
            made.add(base + name)
            fake.path(base + name).mkdir(parents=True, exist_ok=True)
    return made


def test_recipe_installs_the_files_the_unit_and_the_config_name(installed: FakeRoot) -> None:
    fake = installed
    assert fake.calls.read_text().splitlines() == [
        "useradd --system --home /nonexistent --shell /usr/sbin/nologin gateproxy",
        "systemctl daemon-reload",
        "systemctl enable --now gateproxy",
        "systemctl reload gateproxy",
    ]
    unit = fake.path("/etc/systemd/system/gateproxy.service")
    assert unit.read_bytes() == (REPO / "config" / "gateproxy.service").read_bytes()
    service = _unit(fake)
    created = _start_directories(fake, service)
    for key, value in service:
        if key.startswith("Exec"):
            argv = shlex.split(value)
            assert fake.path(argv[0]).exists(), (key, argv[0])
            if "-c" in argv:
                assert fake.path(argv[argv.index("-c") + 1]).is_file(), (key, value)
        if key == "ReadWritePaths":  # ProtectSystem=strict refuses to start without them
            assert all(fake.path(p).is_dir() and p in created for p in value.split()), value
    script = fake.path("/usr/local/bin/gateproxy")
    assert script.is_symlink() and script.resolve() == Path(sys.executable).with_name("gateproxy")


def test_installed_config_passes_the_units_check_and_its_paths_exist(
    installed: FakeRoot,
) -> None:
    fake = installed
    service = _unit(fake)
    created = _start_directories(fake, service)
    config_path = fake.path("/etc/gateproxy/gateproxy.yaml")
    # the addresses are the host's business (a check may bind them): port 0 here
    text = re.sub(r'bind: "[^"]+"', 'bind: "127.0.0.1:0"', config_path.read_text())
    config_path.write_text(text)
    [pre] = [shlex.split(v) for k, v in service if k == "ExecStartPre"]
    check = subprocess.run(
        [fake.move(word) for word in pre], capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode == 0 and ": OK (" in check.stdout, check.stderr
    config = load_and_check(config_path)[0]
    assert config.pid_file and config.access_log.path.startswith("/")
    assert str(Path(config.pid_file).parent) in created  # /run/gateproxy: RuntimeDirectory
    assert str(Path(config.access_log.path).parent) in created  # /var/log/gateproxy
    folder = fake.path("/etc/gateproxy")
    files = [config_path]
    for listener in config.listeners:
        assert listener.tls is not None
        for pair in listener.tls.certificates:
            files += [folder / pair.cert, folder / pair.key]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750 and folder.stat().st_gid == fake.gid
    for file in files:  # readable by the service's group, by nobody else, written by root only
        assert (stat.S_IMODE(file.stat().st_mode), file.stat().st_gid) == (0o640, fake.gid), file


def test_logrotate_rotates_the_configured_log_and_signals_the_main_process(
    installed: FakeRoot,
) -> None:
    fake = installed
    text = fake.path("/etc/logrotate.d/gateproxy").read_text()
    assert text == (REPO / "config" / "gateproxy.logrotate").read_text()
    config = load_and_check(fake.path("/etc/gateproxy/gateproxy.yaml"))[0]
    assert re.search(rf"^{re.escape(config.access_log.path)} {{$", text, re.M)
    directives = {line.split()[0] for line in text.splitlines() if line.startswith("    ")}
    assert "create" in directives and "copytruncate" not in directives
    service = _unit(fake)
    user = next(v for k, v in service if k == "User")
    assert re.search(rf"^\s+su {user} {user}$", text, re.M)  # the log folder is the service's


def _postrotate() -> str:
    text = (REPO / "config" / "gateproxy.logrotate").read_text()
    match = re.search(r"postrotate\n(.*?)\n\s*endscript", text, re.S)
    assert match
    return match.group(1)


@pytest.mark.parametrize("running", [True, False])
def test_postrotate_signals_the_main_pid_and_nothing_while_stopped(
    tmp_path: Path, running: bool
) -> None:
    """With the unit stopped, MainPID is 0: ``kill -USR1 0`` would hit logrotate's own group."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    with subprocess.Popen(  # the supervisor's stand-in: exits 0 on SIGUSR1, 1 after 20 s
        [
            sys.executable,
            "-c",
            "import signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1});"
            "print('ready', flush=True);"
            "sys.exit(0 if signal.sigtimedwait({signal.SIGUSR1}, 20) else 1)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    ) as waiter:
        assert waiter.stdout is not None and waiter.stdout.readline() == "ready\n"
        main_pid = waiter.pid if running else 0
        (stubs / "systemctl").write_text(f"#!/bin/sh\necho {main_pid}\n")
        (stubs / "systemctl").chmod(0o755)
        script = subprocess.run(
            ["sh", "-c", _postrotate()],
            env=dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}"),
            start_new_session=True,  # a kill 0 would stay in this group
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert script.returncode == 0, (script.returncode, script.stderr)
        if not running:
            assert waiter.poll() is None  # not signalled
            waiter.send_signal(signal.SIGUSR1)
        assert waiter.wait(timeout=20) == 0


def test_readme_hardening_names_only_what_the_unit_sets() -> None:
    """Every unit setting the README's systemd paragraph names is in the unit, with its value."""
    prose = section("systemd").split("```", 1)[0]
    service = parse_unit((REPO / "config" / "gateproxy.service").read_text())["Service"]
    settings = dict(service)
    left_off = set(re.findall(r"`([A-Z]\w+)` is left\s+off", prose))
    named = re.findall(r"`([A-Z][a-z]+[A-Z][A-Za-z]*)(?:=([^`]+))?`", prose)
    assert {"SystemCallFilter", "RestrictAddressFamilies", "RestrictNamespaces"} <= {
        n for n, _ in named
    }
    for name, value in named:
        if name in left_off:
            assert name not in settings, name
        else:
            assert name in settings, name
            assert not value or value in settings[name].split(), (name, value, settings[name])


def test_unit_comments_name_paths_the_recipe_makes(installed: FakeRoot) -> None:
    fake = installed
    text = (REPO / "config" / "gateproxy.service").read_text()
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    created = _start_directories(fake, _unit(fake))
    paths = set(re.findall(r"(?<![\w.])(/(?:etc|usr|run|var|opt)/[\w./-]*\w)", comments))
    assert "/etc/gateproxy/gateproxy.yaml" in paths
    for path in paths:
        if path.startswith("/opt/gateproxy"):
            path = path.replace("/opt/gateproxy", sys.prefix)
        assert fake.path(path).exists() or str(Path(path).parent) in created, path
