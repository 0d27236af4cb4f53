"""The ``gateproxy`` command: run, check, reload, demo, gen-cert, schema, keys, fleet.

Parsing only; every command calls the daemon or a core function. Bad configs exit non-zero
with every problem on its own line (file and dotted key path).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateproxy import __version__
from gateproxy.certgen import add_gen_cert_arguments
from gateproxy.compiled import build_description
from gateproxy.errors import ConfigError, GateproxyError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except GateproxyError as exc:
        print(f"gateproxy: {exc}", file=sys.stderr)
        return 1
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateproxy",
        description="TLS-terminating HTTP/1.1 reverse proxy with hard session hygiene.",
    )
    parser.add_argument(
        "--version", action="version", version=f"gateproxy {__version__}, {build_description()}"
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the proxy in the foreground")
    run.add_argument("-c", "--config", required=True, help="YAML config file")
    run.set_defaults(func=_cmd_run)
    check = sub.add_parser(
        "check", help="validate a config and that its addresses are free (bind, no listen)"
    )
    check.add_argument("-c", "--config", required=True, help="YAML config file")
    check.set_defaults(func=_cmd_check)
    reload = sub.add_parser(
        "reload", help="validate the config, then tell the running gateproxy to reload it"
    )
    reload.add_argument("-c", "--config", required=True, help="YAML config file (with pid_file)")
    reload.add_argument("--pid", type=_pid, help="signal this pid instead of the pid_file's")
    reload.set_defaults(func=_cmd_reload)
    demo = sub.add_parser("demo", help="zero-set-up demo on https://127.0.0.1:8443")
    demo.add_argument("--port", type=int, default=8443, help="proxy port (default 8443)")
    demo.add_argument("--admin-port", type=int, default=9901, help="admin port (default 9901)")
    demo.set_defaults(func=_cmd_demo)
    gen = sub.add_parser(
        "gen-cert",
        help="write a self-signed certificate and key",
        description="Write a self-signed server certificate and its key (development only).",
    )
    add_gen_cert_arguments(gen)
    gen.set_defaults(func=_cmd_gen_cert)
    schema = sub.add_parser(
        "schema", help="print the config's JSON Schema (for editors: yaml-language-server)"
    )
    schema.set_defaults(func=_cmd_schema)
    keys = sub.add_parser("keys", help="session-ticket key files")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="write a fresh ticket key file (mode 0600)")
    new.add_argument("--format", choices=["nginx", "haproxy"], default="nginx")
    new.add_argument("--out", required=True, help="file to write")
    new.set_defaults(func=_cmd_keys_new)
    fleet = sub.add_parser("fleet", help="fleet ticket keys shared through Redis")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", required=True)
    status = fleet_sub.add_parser(
        "status", help="what this host's running gateproxy sees (asks its admin /stats)"
    )
    status.add_argument("-c", "--config", required=True, help="YAML config file")
    status.add_argument("--admin", help="HOST:PORT of the admin listener (default: admin.bind)")
    status.add_argument("--json", action="store_true", help="print the fleet branches as JSON")
    status.set_defaults(func=_cmd_fleet_status)
    return parser


def _pid(text: str) -> int:
    if not text.isdigit() or int(text) < 1:  # kill(0) and kill(-1) signal whole groups
        raise argparse.ArgumentTypeError(f"expected a process id >= 1, got {text!r}")
    return int(text)


def _cmd_check(args: argparse.Namespace) -> int:
    from gateproxy.config_files import check_config_file
    from gateproxy.net.listen_slots import bind_problems

    checked, _ = check_config_file(Path(args.config))
    checked = checked.with_problems(bind_problems(checked.binds()))
    config = checked.config
    if config is None:
        print(ConfigError(args.config, checked.problems), file=sys.stderr)
        return 1
    print(
        f"{args.config}: OK ({len(config.listeners)} listener(s), "
        f"{len(config.upstreams)} upstream(s))"
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import trio

    from gateproxy.config_files import load_and_check
    from gateproxy.supervisor import Supervisor
    from gateproxy.tls.selftest import run_self_test

    try:
        config, text = load_and_check(Path(args.config))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if config.tls_engine == "full" and any(lc.tls for lc in config.listeners):
        run_self_test()  # one clear line here rather than one per worker
    supervisor = Supervisor(config, text, path=Path(args.config))
    return trio.run(supervisor.run)


def _cmd_reload(args: argparse.Namespace) -> int:
    import signal

    from gateproxy.config_files import load_and_check, read_pid_file

    try:
        config, _ = load_and_check(Path(args.config))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print("gateproxy: not reloading: the running config stays", file=sys.stderr)
        return 1
    if args.pid:
        pid, origin = args.pid, "--pid"
    else:
        pid = read_pid_file(config, base_dir=Path(args.config).resolve().parent)
        origin = f"pid_file {config.pid_file}"
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise GateproxyError(
            f"not reloading: no process {pid} (from {origin}): gateproxy is not running, "
            "or the pid_file is stale"
        ) from None
    except PermissionError:
        raise GateproxyError(
            f"not reloading: not permitted to signal process {pid} (from {origin}): "
            "run this as the user gateproxy runs as, or as root"
        ) from None
    print(f"gateproxy: reload signalled to pid {pid} (the outcome is logged there)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateproxy.quickstart import run_demo

    return run_demo(port=args.port, admin_port=args.admin_port)


def _cmd_gen_cert(args: argparse.Namespace) -> int:
    from gateproxy.certgen import gen_cert_command

    return gen_cert_command(args)


def _cmd_schema(_args: argparse.Namespace) -> int:
    from gateproxy.core.config_schema import config_schema

    print(json.dumps(config_schema(), indent=2, sort_keys=True))
    return 0


def _cmd_keys_new(args: argparse.Namespace) -> int:
    import time

    from gateproxy.core.key_files import new_key_file

    data = new_key_file(fmt=args.format, random_bytes=os.urandom, now=time.time())
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(args.out, 0o600)
    print(f"wrote {args.format} ticket key file {args.out} (mode 0600)")
    return 0


def _cmd_fleet_status(args: argparse.Namespace) -> int:
    from gateproxy.fleet_status import fleet_status

    report, status = fleet_status(Path(args.config), admin=args.admin, as_json=args.json)
    print(report)
    return status
