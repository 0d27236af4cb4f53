"""The supervisor's ticket-key rings: one per TLS listener whose workers share ticket keys.

A listener with stateful tickets, tickets off or the degraded ``stdlib_only`` engine has no keys
to share. Every other TLS listener gets a ring here, and the workers receive its keys (``wire``),
so all workers encrypt and decrypt with the same keys:

* a listener with ``tickets.key_files`` gets a fixed ring of the keys in its files, read here
  (so every worker of a generation gets the same keys, and a restarted worker the same ones as
  its siblings) and read again on each reload. A key is as old as its file, and a key that a
  reload reads again keeps the age it had;
* any other listener gets a rotating :class:`~gateproxy.core.ticket_keys.KeyRing`. A reload keeps
  the ring of a listener whose name and rotation settings did not change, so tickets issued
  before the reload still resume after it.

Keys travel to the workers with their age, so a new generation or a restarted worker reports
the same key ages as the workers before it.
"""

from __future__ import annotations

import os
from pathlib import Path

from gateproxy.core.config import Config, ListenerConfig
from gateproxy.core.ticket_keys import KeyRing, keep_known, keys_to_wire
from gateproxy.errors import ConfigError, ConfigProblem
from gateproxy.net.fleet_keys import FleetKeys
from gateproxy.net.runtime import read_ticket_keys

_FILES = "key_files"
_FLEET = "fleet"
_Settings = tuple[float, int] | str  # (rotate_every, keep) of a rotating ring, _FILES or _FLEET
_Entry = tuple[_Settings, KeyRing]


class SupervisorKeys:
    """Listener name -> shared key ring, kept across reloads where the settings allow."""

    def __init__(
        self,
        *,
        base_dir: Path = Path("."),
        source: str = "<config>",
        fleet: FleetKeys | None = None,
    ) -> None:
        """``base_dir``: the folder relative key file names are resolved against; ``fleet``:
        where ``tickets.source: fleet`` listeners get their keys (net.fleet_keys)."""
        self._base_dir = base_dir
        self._source = source
        self._fleet = fleet
        self._rings: dict[str, _Entry] = {}

    def prepare(self, config: Config, *, now: float) -> list[str]:
        """Rings for ``config``'s listeners: keep matching ones, make new ones, read the key
        files, drop the rest. Returns the names of the listeners whose keys were read from
        files. On any key file problem: ConfigError listing them all, and nothing changes."""
        rings: dict[str, _Entry] = {}
        problems: list[ConfigProblem] = []
        for index, lc in enumerate(config.listeners):
            settings = _ring_settings(config, lc)
            kept = self._rings.get(lc.name)
            if settings == _FILES:
                ring, found = self._read_files(lc, index=index, now=now, kept=kept)
                problems += found
                if ring is not None:
                    rings[lc.name] = (settings, ring)
            elif settings == _FLEET and self._fleet is not None:
                fleet_keys = self._fleet.ring_keys(lc.name, now=now)
                if fleet_keys:  # none before the first round: the workers make their own
                    rings[lc.name] = (settings, KeyRing.from_keys(fleet_keys))
            elif isinstance(settings, tuple):
                if kept is not None and kept[0] == settings:
                    rings[lc.name] = kept
                else:
                    ring = KeyRing(
                        rotate_every=settings[0], keep=settings[1], random_bytes=os.urandom, now=now
                    )
                    rings[lc.name] = (settings, ring)
        if problems:
            raise ConfigError(self._source, problems)
        self._rings = rings
        return [name for name, (settings, _) in rings.items() if settings == _FILES]

    def _read_files(
        self,
        lc: ListenerConfig,
        *,
        index: int,
        now: float,
        kept: _Entry | None,
    ) -> tuple[KeyRing | None, list[ConfigProblem]]:
        assert lc.tls is not None
        path = f"listeners[{index}].tls"
        keys, problems = read_ticket_keys(lc.tls, base_dir=self._base_dir, now=now, path=path)
        if problems or not keys:
            return None, problems
        if kept is not None:
            keys = keep_known(kept[1].keys(), keys)
        return KeyRing.from_keys(keys), []

    def take_fleet_keys(self, names: list[str], *, now: float) -> None:
        """Swap in the fleet's current keys for the ``names`` listeners (a slot boundary, a
        fetched next key, a fallback or a rejoin)."""
        for name in names:
            entry = self._rings.get(name)
            if entry is not None and entry[0] == _FLEET and self._fleet is not None:
                fleet_keys = self._fleet.ring_keys(name, now=now)
                if fleet_keys:
                    entry[1].replace(fleet_keys)

    def rotate_if_due(self, *, now: float) -> list[str]:
        """Rotate every ring that is due; the names of the listeners whose keys changed."""
        return [name for name, (_, ring) in self._rings.items() if ring.rotate_if_due(now=now)]

    def wire(self, *, now: float) -> dict[str, list[dict[str, object]]]:
        """Every ring's keys as the ``ticket_keys`` of a worker control message."""
        return {name: keys_to_wire(ring.keys(), now=now) for name, (_, ring) in self._rings.items()}

    def prefixes(self, name: str) -> list[str]:
        """The key name prefixes of one listener's ring (for log lines; never the keys)."""
        return [key.name_prefix() for key in self._rings[name][1].keys()]  # noqa: SIM118


def _ring_settings(config: Config, lc: ListenerConfig) -> _Settings | None:
    """``(rotate_every, keep)`` for a rotating ring, ``"key_files"``, or None: no shared keys."""
    tls = lc.tls
    if tls is None or config.tls_engine != "full":
        return None
    tickets = tls.tickets
    if not tickets.enabled or not tickets.stateless:
        return None
    if tickets.source == "fleet":
        return _FLEET
    if tickets.key_files:
        return _FILES
    return (tickets.rotate_every, tickets.keep)
