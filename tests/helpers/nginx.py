"""A real nginx for interop tests, on a port bound here (port 0) and handed to nginx.

nginx runs from a temporary prefix with its own config, pid and logs, in the foreground. The
listening socket is bound by the test and passed through the ``NGINX`` environment variable (the
inheritance nginx uses for binary upgrades), so no port is guessed and nothing races for it. With
inherited sockets nginx needs ``master_process on`` (nginx 1.22 crashes in single-process mode);
run as root, its worker drops to ``nobody`` after the master read the certificates and keys.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from tests.conftest import CertPaths


def nginx_binary() -> str | None:
    """The nginx executable (also outside PATH, as /usr/sbin often is), or None."""
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


@dataclass(frozen=True)
class NginxServer:
    """One ``server`` block: its certificates (in order), ticket key file and session cache."""

    certificates: Sequence[CertPaths]
    ticket_key: Path
    server_name: str = "_"
    session_cache: str | None = None  # the ``ssl_session_cache`` value; None = nginx's default


def _server_block(port: int, server: NginxServer) -> str:
    certs = "".join(
        f"    ssl_certificate {c.cert};\n    ssl_certificate_key {c.key};\n"
        for c in server.certificates
    )
    cache = f"    ssl_session_cache {server.session_cache};\n" if server.session_cache else ""
    return (
        f"  server {{\n    listen 127.0.0.1:{port} ssl;\n    server_name {server.server_name};\n"
        f"{certs}    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_tickets on;\n"
        f"    ssl_session_ticket_key {server.ticket_key};\n{cache}"
        '    location / { return 200 "nginx\\n"; }\n  }\n'
    )


def _config(prefix: Path, port: int, servers: Sequence[NginxServer]) -> str:
    temps = "".join(
        f"  {kind}_temp_path {prefix}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    blocks = "".join(_server_block(port, server) for server in servers)
    return (
        f"daemon off;\nmaster_process on;\nworker_processes 1;\npid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log notice;\nevents {{ worker_connections 64; }}\n"
        f"http {{\n  access_log off;\n{temps}{blocks}}}\n"
    )


@asynccontextmanager
async def running_nginx(
    prefix: Path, servers: Sequence[NginxServer]
) -> AsyncIterator[tuple[str, int]]:
    """Start nginx with ``servers`` (the first is the default) and yield its (host, port)."""
    binary = nginx_binary()
    assert binary is not None, "nginx is not installed"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.set_inheritable(True)
    port = listener.getsockname()[1]
    conf = _write_prefix(prefix, _config(prefix, port, servers))
    argv = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    env = dict(os.environ, NGINX=f"{listener.fileno()};")
    with listener:
        process = await trio.lowlevel.open_process(argv, env=env, pass_fds=(listener.fileno(),))
    try:
        await _started(process, prefix)
        yield "127.0.0.1", port
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


def _write_prefix(prefix: Path, config: str) -> Path:
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(config)
    return conf


def _pid_file_written(prefix: Path) -> bool:
    return (prefix / "nginx.pid").exists()


async def _started(process: trio.Process, prefix: Path) -> None:
    """Wait (under a deadline) for the pid file that nginx writes once it has its sockets."""
    with trio.fail_after(10):
        while not _pid_file_written(prefix):
            if process.poll() is not None:
                log = (prefix / "error.log").read_bytes().decode(errors="replace")
                raise AssertionError(f"nginx exited with {process.returncode}: {log}")
            await trio.sleep(0.01)
