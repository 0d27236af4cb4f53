"""Reading what the daemon reads from disk: the config file, the files it names, the pid file.

Used by ``gateproxy check``, ``run`` and ``reload`` and by the supervisor on SIGHUP, so that all
four validate exactly the same way: schema and cross-checks first, then every certificate, key and
ticket key file, each problem with the file and the dotted key path.
"""

from __future__ import annotations

from pathlib import Path

from gateproxy.core.config import Config, load_config_text
from gateproxy.errors import ConfigError, ConfigProblem, GateproxyError


def load_config_file(path: str) -> Config:
    """Read and validate a config file (schema and cross-checks; no certificate files)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError.single(path, "", f"cannot read config file: {exc.strerror}") from exc
    return load_config_text(text, source=path)


def certificate_problems(config: Config, *, base_dir: Path) -> list[ConfigProblem]:
    """Every problem with the certificate, key and ticket key files the config names."""
    from gateproxy.net.runtime import read_ticket_keys
    from gateproxy.tls.contexts import check_certificates, check_tls_settings

    problems: list[ConfigProblem] = []
    for i, listener in enumerate(config.listeners):
        if listener.tls is not None:
            where = f"listeners[{i}].tls"
            problems += check_tls_settings(
                listener.tls, path=where, degraded=config.tls_engine == "stdlib_only"
            )
            problems += check_certificates(listener.tls, base_dir=base_dir, path=where)
            problems += read_ticket_keys(listener.tls, base_dir=base_dir, now=0.0, path=where)[1]
    return problems


def load_and_check(path: Path) -> tuple[Config, str]:
    """Read, parse and validate ``path`` and every file it names; raise ConfigError with all."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError.single(str(path), "", f"cannot read config file: {exc.strerror}") from exc
    config = load_config_text(text, source=str(path))
    problems = certificate_problems(config, base_dir=path.resolve().parent)
    if problems:
        raise ConfigError(str(path), problems)
    return config, text


def read_pid_file(config: Config, *, base_dir: Path) -> int:
    """The supervisor pid from ``config.pid_file``; GateproxyError naming the problem if none."""
    if not config.pid_file:
        raise GateproxyError("the config sets no pid_file: pass --pid, or kill -HUP the process")
    path = Path(config.pid_file).expanduser()
    path = path if path.is_absolute() else base_dir / path
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError) as exc:
        raise GateproxyError(f"pid_file {path}: cannot read a pid ({exc})") from exc
