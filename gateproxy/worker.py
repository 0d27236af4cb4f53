"""A worker process: one :class:`~gateproxy.daemon.Daemon` run under the supervisor's control.

The supervisor starts ``python -m gateproxy.worker --control-fd N`` with the listening sockets and
one end of a socketpair inherited. Everything else arrives over that control channel, one JSON
object per line (``gateproxy.net.control``):

supervisor -> worker
    ``setup``   (first message) config text, its source and base directory, worker index and
                generation, ``listeners`` (name -> inherited fd), ``ticket_keys`` (name -> keys),
                ``shared_fd`` (the inherited memfd of the generation's shared tables,
                ``net.shared``) and ``verdicts`` (the active checks' verdicts so far)
    ``keys``    new ticket keys after a rotation (name -> keys, encryption key first)
    ``health``  an active check's changed verdict: ``upstream``, ``server``, ``healthy`` (the
                supervisor runs the checks, once for the whole daemon)
    ``stats``   ask for this worker's stats tree; answered with ``stats_reply`` and the same ``id``
    ``retire``  a reload replaced this worker: stop accepting, finish what is open
    ``stop``    stop (SIGTERM semantics: the ``shutdown_delay`` lame duck, then the drain); with
                ``hurry`` (a further signal on the supervisor) end the delay now, or once
                draining cancel what is left; with ``at_once`` cancel what is left now. A
                worker's own SIGTERM/SIGINT stops it too but never hurries: under systemd's
                default KillMode both the signal and the supervisor's ``stop`` arrive
    ``reopen_logs``  reopen the access log (SIGUSR1 on the supervisor)

worker -> supervisor
    ``ready``     listening and serving
    ``draining``  no longer accepting (sent after a ``retire``, or a ``stop`` and its delay)
    ``stats_reply``

End of stream on the control channel means the supervisor is gone: the worker drains and exits,
so no worker outlives its supervisor by more than ``shutdown_delay`` + ``shutdown_timeout``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from gateproxy.core.config import load_config_text
from gateproxy.core.health import Verdict
from gateproxy.core.ticket_keys import TicketKey, keys_from_wire
from gateproxy.daemon import Daemon
from gateproxy.errors import GateproxyError
from gateproxy.logs import event, set_event_context
from gateproxy.net.control import ControlChannel, ControlError, Message
from gateproxy.net.shared import SharedState


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateproxy-worker")
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        trio.run(_run, args.control_fd)
    except GateproxyError as exc:
        print(f"gateproxy worker: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


async def _run(control_fd: int) -> None:
    channel = ControlChannel.from_socket(socket.socket(fileno=control_fd))
    setup = await channel.receive()
    if setup is None or setup["op"] != "setup":
        raise ControlError("the supervisor sent no setup message")
    daemon = _daemon_from_setup(setup)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve)
        await channel.send({"op": "ready", "pid": os.getpid()})
        nursery.start_soon(_follow_supervisor, channel, daemon)
        nursery.start_soon(_report_draining, channel, daemon)
        await daemon.stopped.wait()
        nursery.cancel_scope.cancel()


def _daemon_from_setup(setup: Message) -> Daemon:
    set_event_context(worker=setup["index"], generation=setup["generation"], pid=os.getpid())
    config = load_config_text(setup["config_text"], source=setup["source"])
    inherited = {name: socket.socket(fileno=fd) for name, fd in setup["listeners"].items()}
    shared_fd = setup.get("shared_fd")
    return Daemon(
        config,
        base_dir=Path(setup["base_dir"]),
        source=setup["source"],
        role="worker",
        inherited=inherited,
        ticket_keys=_keys(setup.get("ticket_keys") or {}),
        shared_state=None if shared_fd is None else SharedState.attach(shared_fd, config),
        verdicts=[_verdict(v) for v in setup.get("verdicts") or ()],
    )


def _verdict(message: Message) -> Verdict:
    return Verdict(str(message["upstream"]), str(message["server"]), bool(message["healthy"]))


def _keys(wire: dict[str, list[dict[str, object]]]) -> dict[str, list[TicketKey]]:
    now = trio.current_time()
    return {name: keys_from_wire(items, now=now) for name, items in wire.items()}


async def _follow_supervisor(channel: ControlChannel, daemon: Daemon) -> None:
    """Carry out the supervisor's messages until it goes away (then drain)."""
    while True:
        message = await channel.receive()
        if message is None:
            event("supervisor_gone")
            daemon.request_stop()
            return
        op = message["op"]
        if op == "stats":
            reply = {"op": "stats_reply", "id": message["id"], "stats": daemon.stats()}
            await _send_quietly(channel, reply)
        elif op == "keys":
            daemon.install_ticket_keys(_keys(message["ticket_keys"]))
        elif op == "health":
            daemon.apply_verdict(_verdict(message))
        elif op == "retire":
            daemon.retire()
        elif op == "stop" and message.get("hurry"):
            daemon.hurry()
        elif op == "stop":
            daemon.request_stop(at_once=bool(message.get("at_once")))
        elif op == "reopen_logs":
            daemon.reopen_logs()


async def _report_draining(channel: ControlChannel, daemon: Daemon) -> None:
    await daemon.stopped_accepting.wait()
    await _send_quietly(channel, {"op": "draining"})


async def _send_quietly(channel: ControlChannel, message: Message) -> None:
    # the supervisor may be gone: _follow_supervisor then sees the end of stream and drains
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await channel.send(message)


if __name__ == "__main__":
    raise SystemExit(main())
