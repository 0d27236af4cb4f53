"""TLS session facts for the session-hygiene integration tests: the proxy's TLS stats, waiting
until its connections are gone, and ``openssl s_client`` sessions whose tickets we can read.

A saved session is read back with ``openssl sess_id -text``: the ``TLS session ticket`` hex dump
starts with the 16-byte name of the key that encrypted it (gateproxy's ticket layout, and
OpenSSL's own), so a test can tell which key made a ticket without any of gateproxy's code.
"""

from __future__ import annotations

import re
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from gateproxy.daemon import Daemon
from tests.helpers.clients import Response

_HEXDUMP_LINE = re.compile(r"^\s*[0-9a-f]{4} - ((?:[0-9a-f]{2}[ -]){1,16})")


def session_of(resp: Response) -> ssl.SSLSession:
    """The stdlib session a ``https_request`` response came with (to resume or inspect)."""
    assert isinstance(resp.session, ssl.SSLSession), resp.session
    return resp.session


def tls_stats(daemon: Daemon, name: str = "public") -> dict[str, Any]:
    """``/stats`` ``listeners.<name>.tls`` of an in-process daemon."""
    listener: dict[str, Any] = daemon.stats()["listeners"][name]  # type: ignore[index]
    return dict(listener["tls"])


async def connections_closed(daemon: Daemon, name: str = "public", *, within: float = 5) -> None:
    """Wait until the listener has no open connection (the server side finished too).

    Polls the counter the proxy exposes (there is no event to wait on), under a deadline."""
    with trio.fail_after(within):
        while True:
            if not daemon.stats()["listeners"][name]["connections"]["open"]:  # type: ignore[index]
                return
            await trio.sleep(0.005)


@dataclass(frozen=True)
class SClientSession:
    """What one ``openssl s_client`` connection saw."""

    reused: bool
    version: str
    http_status: bytes
    ticket_name: bytes | None  # first 16 bytes of the ticket saved in ``sess_out``, if any
    output: bytes
    closed_cleanly: bool  # False: s_client saw the connection end without a close_notify


def ticket_name(session_file: Path) -> bytes | None:
    """The key name (first 16 bytes) of the ticket in a PEM session file; None if no ticket
    (or no file: s_client saves only sessions it was told are new)."""
    if not session_file.exists():
        return None
    text = subprocess.run(
        ["openssl", "sess_id", "-in", str(session_file), "-text", "-noout"],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip() == "TLS session ticket:":
            first = _HEXDUMP_LINE.match(lines[index + 1])
            if first is None:
                return None
            return bytes.fromhex(first.group(1).replace("-", " "))[:16]
    return None


async def s_client(
    host: str,
    port: int,
    *,
    ca_file: Path,
    version: str,
    sess_out: Path | None = None,
    sess_in: Path | None = None,
    path: str = "/",
    no_ticket: bool = False,
) -> SClientSession:
    """One ``GET path`` over ``openssl s_client`` (``version``: ``"1.2"`` or ``"1.3"``).

    ``sess_out`` saves the session (with its ticket) for a later ``sess_in``; ``no_ticket``
    offers no ticket extension. The request says
    ``Connection: close`` and ``-ign_eof`` waits for the answer, so TLS 1.3 tickets sent after
    the handshake or with the response are received before s_client saves the session.
    """
    args = [
        "openssl",
        "s_client",
        "-connect",
        f"{host}:{port}",
        "-servername",
        "localhost",
        "-CAfile",
        str(ca_file),
        "-verify_return_error",
        "-tls1_3" if version == "1.3" else "-tls1_2",
        "-ign_eof",
    ]
    if no_ticket:  # no session ticket extension: TLS 1.2 resumes by session id only
        args.append("-no_ticket")
    if sess_out is not None:
        args += ["-sess_out", str(sess_out)]
    if sess_in is not None:
        args += ["-sess_in", str(sess_in)]
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    with trio.fail_after(10):
        done = await trio.run_process(
            args, stdin=request, capture_stdout=True, capture_stderr=True, check=False
        )
    out = done.stdout
    status = re.search(rb"HTTP/1\.1 (\d{3})", out)
    proto = re.search(rb"^(New|Reused), (TLSv1\.[23])", out, re.MULTILINE)
    assert proto is not None, (out + done.stderr).decode(errors="replace")
    name = None
    if sess_out is not None:
        name = await trio.to_thread.run_sync(ticket_name, sess_out)
    return SClientSession(
        reused=proto.group(1) == b"Reused",
        version=proto.group(2).decode(),
        http_status=status.group(1) if status else b"",
        ticket_name=name,
        output=out + done.stderr,
        closed_cleanly=done.returncode == 0 and b"unexpected eof" not in done.stderr,
    )
