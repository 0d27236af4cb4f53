"""The supervisor's ticket-key rings: one per TLS listener that makes its own keys.

A listener with ``tickets.key_files`` reads its keys in each worker; a listener with stateful
tickets, tickets off or the degraded ``stdlib_only`` engine has no keys to share. Every other
TLS listener gets a rotating :class:`~gateproxy.core.ticket_keys.KeyRing` here, and the workers
receive its keys (``wire``), so all workers encrypt and decrypt with the same keys. A reload
keeps the ring of a listener whose name and rotation settings did not change, so tickets issued
before the reload still resume after it.
"""

from __future__ import annotations

import os

from gateproxy.core.config import Config, ListenerConfig
from gateproxy.core.ticket_keys import KeyRing, keys_to_wire


class SupervisorKeys:
    """Listener name -> rotating key ring, kept across reloads where the settings allow."""

    def __init__(self) -> None:
        self._rings: dict[str, tuple[tuple[float, int], KeyRing]] = {}

    def prepare(self, config: Config, *, now: float) -> None:
        """Rings for ``config``'s listeners: keep matching ones, make new ones, drop the rest."""
        rings = {}
        for lc in config.listeners:
            settings = _ring_settings(config, lc)
            if settings is None:
                continue
            kept = self._rings.get(lc.name)
            if kept is not None and kept[0] == settings:
                rings[lc.name] = kept
            else:
                ring = KeyRing(
                    rotate_every=settings[0], keep=settings[1], random_bytes=os.urandom, now=now
                )
                rings[lc.name] = (settings, ring)
        self._rings = rings

    def rotate_if_due(self, *, now: float) -> list[str]:
        """Rotate every ring that is due; the names of the listeners whose keys changed."""
        return [name for name, (_, ring) in self._rings.items() if ring.rotate_if_due(now=now)]

    def wire(self, *, now: float) -> dict[str, list[dict[str, object]]]:
        """Every ring's keys as the ``ticket_keys`` of a worker control message."""
        return {name: keys_to_wire(ring.keys(), now=now) for name, (_, ring) in self._rings.items()}

    def prefixes(self, name: str) -> list[str]:
        """The key name prefixes of one listener's ring (for log lines; never the keys)."""
        return [key.name_prefix() for key in self._rings[name][1].keys()]  # noqa: SIM118


def _ring_settings(config: Config, lc: ListenerConfig) -> tuple[float, int] | None:
    tls = lc.tls
    if tls is None or config.tls_engine != "full":
        return None
    tickets = tls.tickets
    if not tickets.enabled or not tickets.stateless or tickets.key_files:
        return None
    return (tickets.rotate_every, tickets.keep)
