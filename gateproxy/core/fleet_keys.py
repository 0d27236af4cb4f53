"""Fleet ticket keys: one key per time slot, shared by every host through a store (Redis).

Theory of operation
-------------------
Time is cut into *slots* of ``rotate_every`` seconds of wall-clock time:
``slot = floor(now / rotate_every)``. Every host of a fleet encrypts new tickets with the key of
the current slot and decrypts with the keys of the ``keep`` previous slots and of the **next**
slot, which it fetches ahead of the boundary and holds decrypt-only (Cloudflare's scheme). So a
host whose clock runs up to one slot ahead issues tickets its peers can already read, and one
that runs behind still accepts its peers' tickets: clock skew below ``rotate_every`` never
fails a resumption (with ``keep >= 1``).

The key of a slot is made once, by whichever host gets there first (the shell does an atomic
``SET NX`` of a random candidate, then reads back what won), so all hosts agree on it.

:class:`FleetKeyState` is the sans-IO memory of one listener: which slots it holds a key for
and where each came from. The shell asks :meth:`FleetKeyState.missing` which slots to fetch,
reports each result with :meth:`~FleetKeyState.learn` or :meth:`~FleetKeyState.store_failed`,
and hands :meth:`~FleetKeyState.ring_keys` (encryption key first) to the same key ring the ticket
callback uses. When the store cannot be reached the state keeps what it holds; only a slot it
holds no key for gets a *local* random key (resumption across hosts is lost for that slot,
nothing breaks on the host), counted in ``fallbacks``. A later fetch that works brings the
fleet key back as the encryption key; the local key stays decrypt-only until its slot leaves the
window, so tickets issued during the outage still resume on this host.

Time (``now``, wall-clock seconds) and randomness (``random_bytes``) are parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from gateproxy.core.ticket_keys import NAME_LEN, TicketKey, new_ticket_key

__all__ = [
    "FleetKeyState",
    "FleetStats",
    "SlotKey",
    "key_ttl",
    "slot_of",
    "slot_start",
    "store_key",
    "wanted_slots",
]

Origin = Literal["fleet", "local"]


def slot_of(*, now: float, rotate_every: float) -> int:
    """The slot ``now`` falls in: ``floor(now / rotate_every)``."""
    if not rotate_every > 0:
        raise ValueError(f"rotate_every: expected seconds > 0, got {rotate_every!r}")
    return math.floor(now / rotate_every)


def slot_start(slot: int, *, rotate_every: float) -> float:
    """The wall-clock time ``slot`` begins."""
    return slot * rotate_every


def wanted_slots(*, now: float, rotate_every: float, keep: int) -> tuple[int, ...]:
    """The slots a host holds a key for at ``now``: next, current, then ``keep`` previous."""
    current = slot_of(now=now, rotate_every=rotate_every)
    return tuple(range(current + 1, current - keep - 1, -1))


def key_ttl(*, rotate_every: float, keep: int) -> int:
    """Seconds a slot's key lives in the store: it is wanted from one slot before its own until
    ``keep`` slots after, plus one slot of margin for skewed clocks."""
    return max(1, math.ceil((keep + 3) * rotate_every))


def store_key(*, prefix: str, listener: str, slot: int) -> str:
    """The store key of one listener's key for ``slot`` (keys are scoped per listener)."""
    return f"{prefix}:ticket-keys:{listener}:{slot}"


@dataclass(frozen=True, eq=False)
class SlotKey:
    """A ticket key held for one slot, and whether it came from the store or was made here.

    The key bytes live in one ``bytearray`` that :meth:`wipe` overwrites with zeros when the slot
    leaves the window. That is as far as Python lets us go: the :class:`TicketKey` values made
    from it (``key``) hold immutable ``bytes`` copies, which the ring, the wire and OpenSSL's
    parameter buffers keep until they are dropped and collected; they cannot be overwritten.
    """

    slot: int
    origin: Origin
    created: float
    material: bytearray = field(repr=False)

    @classmethod
    def of(cls, slot: int, key: TicketKey, *, origin: Origin) -> SlotKey:
        return cls(slot, origin, key.created, bytearray(key.name + key.aes_key + key.hmac_key))

    @property
    def key(self) -> TicketKey:
        raw = bytes(self.material)
        half = (len(raw) - NAME_LEN) // 2
        return TicketKey(
            name=raw[:NAME_LEN],
            aes_key=raw[NAME_LEN : NAME_LEN + half],
            hmac_key=raw[NAME_LEN + half :],
            created=self.created,
        )

    @property
    def name(self) -> bytes:
        return bytes(self.material[:NAME_LEN])

    def wipe(self) -> None:
        """Overwrite the held key bytes with zeros (the slot left the window)."""
        self.material[:] = bytes(len(self.material))


@dataclass
class FleetStats:
    """Counters of one listener's fleet keys.

    ``fetched``: slot keys read from the store; ``created``: slot keys this host won the
    ``SET NX`` for; ``redis_errors``: failed store round trips (unreachable, timeout, a value
    that does not decrypt); ``fallbacks``: local random keys made because the store failed;
    ``rejoins``: store round trips that worked again after failing; ``wiped``: slot keys
    overwritten with zeros as they left the window.
    """

    fetched: int = 0
    created: int = 0
    redis_errors: int = 0
    fallbacks: int = 0
    rejoins: int = 0
    wiped: int = 0
    last_error: str | None = None


@dataclass
class FleetKeyState:
    """The slot keys one listener holds (see the module docstring)."""

    listener: str
    rotate_every: float
    keep: int
    stats: FleetStats = field(default_factory=FleetStats)
    _fleet: dict[int, SlotKey] = field(default_factory=dict)
    _local: dict[int, SlotKey] = field(default_factory=dict)
    _asked: set[int] = field(default_factory=set)
    _store_down: bool = False

    def __post_init__(self) -> None:
        if not self.rotate_every > 0:
            raise ValueError(f"rotate_every: expected seconds > 0, got {self.rotate_every!r}")
        if self.keep < 0:
            raise ValueError(f"keep: expected an integer >= 0, got {self.keep!r}")

    def current_slot(self, *, now: float) -> int:
        return slot_of(now=now, rotate_every=self.rotate_every)

    def next_boundary(self, *, now: float) -> float:
        """When the next slot begins (the shell wakes then to switch encryption keys)."""
        return slot_start(self.current_slot(now=now) + 1, rotate_every=self.rotate_every)

    def missing(self, *, now: float) -> tuple[int, ...]:
        """Slots to ask the store for, most urgent first: the current and the next slot until
        a fleet key is held for them (a slot held only locally is asked again: rejoining), then
        previous slots not asked yet (their keys are only read, never made)."""
        current = self.current_slot(now=now)
        wanted = wanted_slots(now=now, rotate_every=self.rotate_every, keep=self.keep)
        order = sorted(wanted, key=lambda slot: (slot != current, -slot))
        return tuple(
            slot
            for slot in order
            if slot not in self._fleet and (slot >= current or slot not in self._asked)
        )

    def may_create(self, slot: int, *, now: float) -> bool:
        """Whether this host may make the key of ``slot`` (SET NX): only the current and the
        next slot; a past slot's key that nobody made was never used for a ticket."""
        return slot >= self.current_slot(now=now)

    def absent(self, slot: int, *, now: float) -> None:
        """The store holds no key for a past ``slot``: do not ask again."""
        self._asked.add(slot)
        self._forget_old(now=now)

    def learn(self, slot: int, key: TicketKey, *, now: float, created_here: bool) -> None:
        """The store's key for ``slot`` (``created_here``: this host's candidate won)."""
        self._fleet[slot] = SlotKey.of(slot, key, origin="fleet")
        self._asked.add(slot)
        self.store_worked()
        if created_here:
            self.stats.created += 1
        else:
            self.stats.fetched += 1
        self._forget_old(now=now)

    def store_worked(self) -> None:
        """A store round trip worked: after failures, that is a rejoin (counted once)."""
        if self._store_down:
            self._store_down = False
            self.stats.rejoins += 1

    @property
    def store_down(self) -> bool:
        """True from a failed store round trip until one works again."""
        return self._store_down

    def store_failed(
        self, *, now: float, reason: str, random_bytes: Callable[[int], bytes]
    ) -> bool:
        """A store round trip failed. Count it; if the current slot has no key at all, make a
        local one (a fallback). Returns True when a local key was made."""
        self.stats.redis_errors += 1
        self.stats.last_error = reason
        self._store_down = True
        self._forget_old(now=now)
        current = self.current_slot(now=now)
        if current in self._fleet or current in self._local:
            return False
        key = new_ticket_key(random_bytes=random_bytes, now=now)
        self._local[current] = SlotKey.of(current, key, origin="local")
        self.stats.fallbacks += 1
        return True

    def encryption_key(self, *, now: float) -> SlotKey | None:
        """The fleet key of the current slot, else its local key; None while neither exists."""
        current = self.current_slot(now=now)
        return self._fleet.get(current) or self._local.get(current)

    def source(self, *, now: float) -> str:
        """``fleet`` (encrypting with the shared key), ``local`` (fallback) or ``none``."""
        held = self.encryption_key(now=now)
        return "none" if held is None else held.origin

    def ring_keys(self, *, now: float) -> list[TicketKey]:
        """The keys to install, encryption key first, then every other held key of the window
        (next slot first, older ones after). Empty while the current slot has no key: the
        shell then keeps whatever ring it has."""
        encrypt = self.encryption_key(now=now)
        if encrypt is None:
            return []
        window = set(wanted_slots(now=now, rotate_every=self.rotate_every, keep=self.keep))
        held = [k for k in (*self._fleet.values(), *self._local.values()) if k.slot in window]
        others = sorted((k for k in held if k is not encrypt), key=lambda k: (-k.slot, k.origin))
        return [encrypt.key, *(k.key for k in others if k.name != encrypt.name)]

    def describe(self, *, now: float) -> dict[str, object]:
        """What /stats shows for this listener's fleet keys (never key bytes)."""
        current = self.current_slot(now=now)
        encrypt = self.encryption_key(now=now)
        return {
            "source": self.source(now=now),
            "slot": current,
            "rotate_every_s": self.rotate_every,
            "keep": self.keep,
            "key_age_s": round(now - slot_start(current, rotate_every=self.rotate_every), 3)
            if encrypt is not None
            else None,
            "key": encrypt.name[:4].hex() if encrypt is not None else None,
            "slots": [
                {"slot": k.slot, "origin": k.origin, "key": k.name[:4].hex()}
                for k in sorted(
                    (*self._fleet.values(), *self._local.values()), key=lambda k: -k.slot
                )
            ],
            "fetched": self.stats.fetched,
            "created": self.stats.created,
            "redis_errors": self.stats.redis_errors,
            "fallbacks": self.stats.fallbacks,
            "rejoins": self.stats.rejoins,
            "store_down": self._store_down,
            "wiped": self.stats.wiped,
            "last_error": self.stats.last_error,
        }

    def _forget_old(self, *, now: float) -> None:
        oldest = self.current_slot(now=now) - self.keep
        for table in (self._fleet, self._local):
            for slot in [s for s in table if s < oldest]:
                table.pop(slot).wipe()
                self.stats.wiped += 1
        self._asked = {slot for slot in self._asked if slot >= oldest}
