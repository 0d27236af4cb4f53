"""Reading what the daemon reads from disk: the config file, the files it names, the pid file.

Used by ``gateproxy check``, ``run`` and ``reload`` and by the supervisor on SIGHUP, so that all
four validate exactly the same way: schema and cross-checks first, then every certificate, key and
ticket key file, each problem with the file and the dotted key path.
"""

from __future__ import annotations

from pathlib import Path

from gateproxy.core.config import CheckedConfig, Config, check_config_text
from gateproxy.errors import ConfigError, ConfigProblem, GateproxyError


def check_config_file(path: Path) -> tuple[CheckedConfig, str]:
    """Read and validate ``path`` and every file it names; return the outcome and the text.

    Never raises for a bad config: the outcome lists every problem of every stage (schema,
    cross-checks, then the files named by each listener whose ``tls`` section validated).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else f"not UTF-8 text ({exc.reason})"
        return CheckedConfig(None, (ConfigProblem("", f"cannot read config file: {reason}"),)), ""
    checked = check_config_text(text)
    base_dir = path.resolve().parent
    return checked.with_problems(
        [*certificate_problems(checked, base_dir=base_dir), *fleet_problems(checked, base_dir)]
    ), text


def fleet_problems(checked: CheckedConfig, base_dir: Path) -> list[ConfigProblem]:
    """The problem with ``fleet.secret_file``, if the config has a fleet block."""
    from gateproxy.net.fleet_keys import read_fleet_secret

    if checked.config is None or checked.config.fleet is None:
        return []
    return read_fleet_secret(checked.config.fleet, base_dir=base_dir)[1]


def certificate_problems(checked: CheckedConfig, *, base_dir: Path) -> list[ConfigProblem]:
    """Every problem with the certificate, key and ticket key files the config names."""
    from gateproxy.net.runtime import read_ticket_keys
    from gateproxy.tls.contexts import check_certificates, check_tls_settings

    problems: list[ConfigProblem] = []
    for where, tls in checked.tls_sections():
        problems += check_tls_settings(tls, path=where, degraded=checked.degraded_tls)
        problems += check_certificates(tls, base_dir=base_dir, path=where)
        problems += read_ticket_keys(tls, base_dir=base_dir, now=0.0, path=where)[1]
    return problems


def load_and_check(path: Path) -> tuple[Config, str]:
    """Read, parse and validate ``path`` and every file it names; raise ConfigError with all."""
    checked, text = check_config_file(path)
    if checked.config is None:
        raise ConfigError(str(path), checked.problems)
    return checked.config, text


def read_pid_file(config: Config, *, base_dir: Path) -> int:
    """The supervisor pid from ``config.pid_file``; GateproxyError naming the problem if none."""
    if not config.pid_file:
        raise GateproxyError("the config sets no pid_file: pass --pid, or kill -HUP the process")
    path = Path(config.pid_file).expanduser()
    path = path if path.is_absolute() else base_dir / path
    try:
        pid = int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError) as exc:
        raise GateproxyError(f"pid_file {path}: cannot read a pid ({exc})") from exc
    if pid < 1:  # kill(0) and kill(-1) would signal whole process groups
        raise GateproxyError(f"pid_file {path}: expected a process id >= 1, got {pid}")
    return pid
