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
plain socket that nobody else listens there.
"""

from __future__ import annotations

import socket

from gateproxy.core.config import split_hostport
from gateproxy.errors import GateproxyError

BACKLOG = 1024


class ListenError(GateproxyError):
    """A listener address could not be bound."""


def slot_key(name: str, bind: str) -> str:
    """The key a listener's sockets are kept under (see the module docstring)."""
    return f"{name}@{bind}" if split_hostport(bind)[1] == 0 else bind


class ListenSlots:
    """Sockets by :func:`slot_key`, one per worker slot."""

    def __init__(self) -> None:
        self._by_key: dict[str, list[socket.socket]] = {}

    def ensure(self, key: str, *, slots: int) -> list[socket.socket]:
        """The first ``slots`` sockets kept under ``key``, opening what is missing."""
        sockets = self._by_key.get(key)
        if sockets is None:
            sockets = [_open_first(key.rpartition("@")[2], ours=self._ports())]
            self._by_key[key] = sockets
        while len(sockets) < slots:
            sockets.append(_open_more(sockets[0]))
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


def _bind_listen(sock: socket.socket, address: tuple[str, int], bind: str) -> socket.socket:
    try:
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {bind}: {exc.strerror or exc}") from exc
    return sock


def listening_socket(bind: str, *, reuse_port: bool) -> socket.socket:
    """A stdlib socket bound to ``bind`` (``host:port``, IPv6 as ``[::1]:8443``) and listening;
    ListenError names the address if that fails. Also what a single ``Daemon`` listens on."""
    host, port = split_hostport(bind)
    return _bind_listen(_new_socket(_family(host), reuse_port=reuse_port), (host, port), bind)


def _open_first(bind: str, *, ours: set[int]) -> socket.socket:
    host, port = split_hostport(bind)
    family = _family(host)
    if port != 0 and port not in ours:  # refuse to join somebody else's SO_REUSEPORT group
        # (a port we hold already, e.g. a reload from 127.0.0.1:P to 0.0.0.0:P, is ours to share)
        probe = _new_socket(family, reuse_port=False)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ListenError(f"cannot listen on {bind}: {exc.strerror or exc}") from exc
        finally:
            probe.close()
    return listening_socket(bind, reuse_port=True)


def _open_more(first: socket.socket) -> socket.socket:
    name = first.getsockname()
    bind = f"{name[0]}:{name[1]}"
    sock = _new_socket(first.family, reuse_port=True)
    return _bind_listen(sock, (name[0], name[1]), bind)
