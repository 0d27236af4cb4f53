"""The supervisor's listening sockets: per bind address, one ``SO_REUSEPORT`` socket per worker.

Theory of operation
-------------------
The supervisor binds every listener and holds the sockets for the life of the process; worker
``i`` inherits socket ``i`` of each listener and accepts on it. The kernel spreads new
connections over the sockets of a ``SO_REUSEPORT`` group by a hash of the client's address and
port, so each worker gets its share without a thundering herd.

Because the supervisor keeps the sockets:

* a worker that dies leaves its socket open: connections queued on it wait in the backlog until
  the replacement worker accepts them (nothing is refused or reset);
* a reload hands the *same* sockets to the new generation of workers while the old generation
  stops accepting, so no connection attempt is refused during a reload;
* sockets are closed only for listeners a reload removed, or for slots above a smaller
  ``workers`` (connections still queued on such a socket are reset by the kernel).

Sockets are kept by :func:`slot_key`: the bind address, so a listener renamed by a reload keeps
its socket; for port 0 (tests) also the listener name, as every ``:0`` bind is a different port.

``SO_REUSEPORT`` would also let an unrelated process of the same user bind the same port and take
a share of the traffic; before binding a fresh address the supervisor therefore checks with a
plain socket that nobody else listens there (``open_guarded``; the admin listener does the same).

``bind_problems`` is what ``gateproxy check`` adds: it binds each address the way the daemon does
(``SO_REUSEADDR`` and ``SO_REUSEPORT``, no listen) and closes it at once. So an address another
program holds is reported, while one held by a running gateproxy of the same user (whose sockets
are all ``SO_REUSEPORT``) is not: checking the running config before a reload passes.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable

from gateproxy.core.config import split_hostport
from gateproxy.errors import ConfigProblem, GateproxyError

BACKLOG = 1024


class ListenError(GateproxyError):
    """An address could not be bound: names the key path (when known), the address and why."""

    def __init__(self, bind: str, reason: str, *, key_path: str = "") -> None:
        self.bind = bind
        self.reason = reason
        self.key_path = key_path
        where = f"{key_path}: " if key_path else ""
        super().__init__(f"{where}cannot listen on {bind}: {reason}")

    def at(self, key_path: str) -> ListenError:
        """The same error, named by ``key_path`` (a config key or a command-line option)."""
        return ListenError(self.bind, self.reason, key_path=key_path)


def slot_key(name: str, bind: str) -> str:
    """The key a listener's sockets are kept under (see the module docstring)."""
    return f"{name}@{bind}" if split_hostport(bind)[1] == 0 else bind


class ListenSlots:
    """Sockets by :func:`slot_key`, one per worker slot."""

    def __init__(self) -> None:
        self._by_key: dict[str, list[socket.socket]] = {}

    def ensure(self, key: str, *, slots: int, key_path: str = "") -> list[socket.socket]:
        """The first ``slots`` sockets kept under ``key``, opening what is missing; a
        ListenError names ``key_path`` (``listeners[0].bind``)."""
        sockets = self._by_key.get(key)
        if sockets is None:
            bind = key.rpartition("@")[2]
            sockets = [open_guarded(bind, ours=self._ports(), key_path=key_path)]
            self._by_key[key] = sockets
        while len(sockets) < slots:
            sockets.append(_open_more(sockets[0], key_path=key_path))
        return sockets[:slots]

    def fd(self, key: str, *, slot: int) -> int:
        """The file descriptor worker ``slot`` inherits for ``key``."""
        return self._by_key[key][slot].fileno()

    def address(self, key: str) -> tuple[str, int]:
        """The (host, port) actually bound (useful with port 0)."""
        name = self._by_key[key][0].getsockname()
        return str(name[0]), int(name[1])

    def keep_only(self, wanted: dict[str, int]) -> list[str]:
        """Close every socket not in ``wanted`` (key -> slots); returns the keys closed."""
        closed = []
        for bind, sockets in list(self._by_key.items()):
            slots = wanted.get(bind, 0)
            for sock in sockets[slots:]:
                sock.close()
            del sockets[slots:]
            if not sockets:
                del self._by_key[bind]
                closed.append(bind)
        return closed

    def _ports(self) -> set[int]:
        return {sockets[0].getsockname()[1] for sockets in self._by_key.values()}

    def close_all(self) -> None:
        self.keep_only({})

    def binds(self) -> list[str]:
        return list(self._by_key)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _new_socket(family: socket.AddressFamily, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.set_inheritable(False)
    return sock


def _bind(
    sock: socket.socket, address: tuple[str, int], bind: str, *, key_path: str, listen: bool
) -> socket.socket:
    try:
        sock.bind(address)
        if listen:
            sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(bind, str(exc), key_path=key_path) from exc
    return sock


def listening_socket(bind: str, *, reuse_port: bool, key_path: str = "") -> socket.socket:
    """A stdlib socket bound to ``bind`` (``host:port``, IPv6 as ``[::1]:8443``) and listening;
    ListenError names the address if that fails. Also what a single ``Daemon`` listens on."""
    host, port = split_hostport(bind)
    sock = _new_socket(_family(host), reuse_port=reuse_port)
    return _bind(sock, (host, port), bind, key_path=key_path, listen=True)


def open_guarded(bind: str, *, ours: Iterable[int] = (), key_path: str = "") -> socket.socket:
    """A listening ``SO_REUSEPORT`` socket on ``bind``, refused (ListenError) when anybody else
    listens there already: we never join somebody else's ``SO_REUSEPORT`` group. Ports in
    ``ours`` are skipped (a reload from 127.0.0.1:P to 0.0.0.0:P shares a port we hold)."""
    host, port = split_hostport(bind)
    if port != 0 and port not in set(ours):
        probe = _new_socket(_family(host), reuse_port=False)
        _bind(probe, (host, port), bind, key_path=key_path, listen=False).close()
    return listening_socket(bind, reuse_port=True, key_path=key_path)


def _open_more(first: socket.socket, *, key_path: str) -> socket.socket:
    name = first.getsockname()
    bind = f"{name[0]}:{name[1]}"
    sock = _new_socket(first.family, reuse_port=True)
    return _bind(sock, (name[0], name[1]), bind, key_path=key_path, listen=True)


def bind_problems(binds: Iterable[tuple[str, str]]) -> list[ConfigProblem]:
    """``gateproxy check``: bind (never listen on) each ``(key path, host:port)`` as the daemon
    would, close it at once, and report the addresses that cannot be bound. Port 0 is skipped."""
    problems: list[ConfigProblem] = []
    for key_path, bind in binds:
        host, port = split_hostport(bind)
        if port == 0:
            continue
        sock = _new_socket(_family(host), reuse_port=True)
        try:
            sock.bind((host, port))
        except OSError as exc:
            in_use = exc.errno == errno.EADDRINUSE
            message = (
                f"address {bind} is already in use" if in_use else f"cannot bind {bind}: {exc}"
            )
            problems.append(ConfigProblem(key_path, message))
        finally:
            sock.close()
    return problems
