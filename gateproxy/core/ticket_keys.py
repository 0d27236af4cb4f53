"""Session-ticket keys and the key ring the TLS bridge encrypts and decrypts tickets with.

Theory of operation
-------------------
A TLS session ticket is ``key_name[16] | iv[16] | AES-CBC ciphertext | HMAC-SHA256[32]``. Whoever
holds the key can decrypt every session resumed with it, so keys must change: the ring holds one
*encryption* key (the newest) and up to ``keep`` older *decryption-only* keys, the grace window in
which a client holding an older ticket still resumes (the bridge then answers 2 and OpenSSL sends
a renewed ticket under the current key). A ticket naming a key that has left the ring gets a
clean full handshake.

Two kinds of ring:

* **rotating** (``KeyRing(rotate_every=..., keep=..., random_bytes=..., now=...)``): the ring makes
  its own keys from the injected ``random_bytes``; the daemon's timer calls ``rotate_if_due(now=)``.
* **fixed** (``KeyRing.from_keys(keys)``): the keys come from key files (see ``key_files``), the
  first one encrypts, nothing rotates automatically; a SIGHUP re-reads the files and calls
  ``replace(keys)``.

A key's age (``describe``, the ``tls_ticket_key_age_seconds`` metric) is ``now - created``, on
the caller's clock. It must not restart when nothing changed, or "rotation stopped" alerts never
fire: a key read from a file is as old as its file (``key_files.parse_key_files(created=)``),
:func:`keep_known` keeps the ``created`` of keys a reload reads again, and keys travel between
processes (whose clocks differ) with their age (:func:`keys_to_wire`).

The ring's state is one immutable :class:`_Snapshot` (the key tuple and a name index built from
it) replaced by a single attribute assignment, so a ticket callback that reads it once per call
always sees a consistent ring, even if a rotation happens between two callbacks. ``lookup`` is one
dict probe. This module is sans-IO: time is the ``now`` argument, randomness is injected, and no
OpenSSL object is created here (the bridge builds its cipher/MAC parameters from the key bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "KeyInfo",
    "KeyRing",
    "TicketKey",
    "TicketStats",
    "keep_known",
    "keys_from_wire",
    "keys_to_wire",
    "new_ticket_key",
]

NAME_LEN = 16
"""Length of a ticket key name, the first bytes of every ticket."""

_CIPHERS = {32: "aes-256-cbc", 16: "aes-128-cbc"}


@dataclass(frozen=True)
class TicketKey:
    """One ticket key: 16-byte name, AES key and HMAC-SHA256 key.

    Two shapes are valid: AES-256 with a 32-byte HMAC key (80-byte files, and the keys gateproxy
    makes) and AES-128 with a 16-byte HMAC key (48-byte files). The key bytes are left out of
    ``repr`` so that a key never lands in a log by accident.
    """

    name: bytes
    aes_key: bytes = field(repr=False)
    hmac_key: bytes = field(repr=False)
    created: float

    def __post_init__(self) -> None:
        if len(self.name) != NAME_LEN:
            raise ValueError(f"ticket key name: expected {NAME_LEN} bytes, got {len(self.name)}")
        if len(self.aes_key) not in _CIPHERS:
            raise ValueError(f"ticket AES key: expected 16 or 32 bytes, got {len(self.aes_key)}")
        if len(self.hmac_key) != len(self.aes_key):
            raise ValueError(
                f"ticket HMAC key: expected {len(self.aes_key)} bytes to go with a "
                f"{len(self.aes_key)}-byte AES key, got {len(self.hmac_key)}"
            )

    @property
    def cipher(self) -> str:
        """``"aes-256-cbc"`` or ``"aes-128-cbc"``; the MAC is always HMAC-SHA256."""
        return _CIPHERS[len(self.aes_key)]

    def name_prefix(self) -> str:
        """The first 4 bytes of the name in hex: enough to tell keys apart in stats and logs."""
        return self.name[:4].hex()


def new_ticket_key(*, random_bytes: Callable[[int], bytes], now: float) -> TicketKey:
    """A fresh AES-256-CBC / HMAC-SHA256 key from ``random_bytes`` (``secrets.token_bytes``)."""
    return TicketKey(
        name=random_bytes(NAME_LEN),
        aes_key=random_bytes(32),
        hmac_key=random_bytes(32),
        created=now,
    )


def keep_known(old: Sequence[TicketKey], new: Sequence[TicketKey]) -> list[TicketKey]:
    """``new`` with every key already in ``old`` (same name and material) kept as it was, so a
    reload that re-reads an unchanged key does not make it young again."""
    known = {(k.name, k.aes_key, k.hmac_key): k for k in old}
    return [known.get((k.name, k.aes_key, k.hmac_key), k) for k in new]


def keys_to_wire(keys: Sequence[TicketKey], *, now: float) -> list[dict[str, object]]:
    """Keys as JSON-able dicts (hex bytes, age instead of a clock reading) for a worker.

    The supervisor hands its keys to its workers this way over a private socketpair; an age
    travels between processes where a monotonic timestamp would not.
    """
    return [
        {
            "name": key.name.hex(),
            "aes": key.aes_key.hex(),
            "hmac": key.hmac_key.hex(),
            "age_s": max(0.0, now - key.created),
        }
        for key in keys
    ]


def keys_from_wire(items: Sequence[Mapping[str, object]], *, now: float) -> list[TicketKey]:
    """The inverse of :func:`keys_to_wire`; ``created`` is ``now - age_s`` on this clock."""
    keys = []
    for item in items:
        age = item.get("age_s", 0.0)
        keys.append(
            TicketKey(
                name=bytes.fromhex(str(item["name"])),
                aes_key=bytes.fromhex(str(item["aes"])),
                hmac_key=bytes.fromhex(str(item["hmac"])),
                created=now - (float(age) if isinstance(age, int | float) else 0.0),
            )
        )
    return keys


@dataclass(frozen=True)
class KeyInfo:
    """What stats show about one key: never the key itself."""

    name_prefix: str
    role: str  # "encrypt" | "decrypt"
    age_s: float


@dataclass
class TicketStats:
    """Mutable counters the bridge increments from its ticket callback.

    ``issued``: tickets encrypted; ``decrypted``: tickets accepted under the current key;
    ``renewed``: tickets accepted under an older key (a new ticket follows); ``rejected``: tickets
    naming an unknown or dropped key (a full handshake follows).
    """

    issued: int = 0
    renewed: int = 0
    rejected: int = 0
    decrypted: int = 0


@dataclass(frozen=True)
class _Snapshot:
    keys: tuple[TicketKey, ...]
    by_name: Mapping[bytes, tuple[TicketKey, bool]]

    @classmethod
    def of(cls, keys: Sequence[TicketKey]) -> _Snapshot:
        keys = tuple(keys)
        if not keys:
            raise ValueError("a ticket key ring needs at least one key")
        by_name: dict[bytes, tuple[TicketKey, bool]] = {}
        for index, key in enumerate(keys):
            if key.name in by_name:
                raise ValueError(
                    f"ticket key names must be unique; {key.name_prefix()}... appears twice"
                )
            by_name[key.name] = (key, index == 0)
        return cls(keys, by_name)


class KeyRing:
    """The current encryption key and the older keys still accepted for decryption."""

    _snapshot: _Snapshot
    _rotate_every: float | None
    _keep: int
    _random_bytes: Callable[[int], bytes] | None
    _next_rotation: float | None

    def __init__(
        self,
        *,
        rotate_every: float,
        keep: int,
        random_bytes: Callable[[int], bytes],
        now: float,
    ) -> None:
        """A rotating ring: one fresh key made ``now``, next rotation ``rotate_every`` later."""
        if not rotate_every > 0:
            raise ValueError(f"rotate_every: expected seconds > 0, got {rotate_every!r}")
        if keep < 0:
            raise ValueError(f"keep: expected an integer >= 0, got {keep!r}")
        self._rotate_every = float(rotate_every)
        self._keep = keep
        self._random_bytes = random_bytes
        self._snapshot = _Snapshot.of([new_ticket_key(random_bytes=random_bytes, now=now)])
        self._next_rotation = now + self._rotate_every

    @classmethod
    def from_keys(cls, keys: Sequence[TicketKey]) -> KeyRing:
        """A fixed ring fed by key files: ``keys[0]`` encrypts, all decrypt, nothing rotates."""
        ring = cls.__new__(cls)
        ring._rotate_every = None
        ring._keep = 0
        ring._random_bytes = None
        ring._next_rotation = None
        ring._snapshot = _Snapshot.of(keys)
        return ring

    @property
    def rotating(self) -> bool:
        """True when the ring makes and rotates its own keys."""
        return self._rotate_every is not None

    @property
    def keep(self) -> int | None:
        """How many older keys a rotating ring keeps; None for a fixed ring."""
        return self._keep if self.rotating else None

    @property
    def rotate_every(self) -> float | None:
        """The rotation period of a rotating ring; None for a fixed ring."""
        return self._rotate_every

    def rotate_if_due(self, *, now: float) -> bool:
        """Rotate once if the rotation time has come (even if several periods passed).

        The new key is created ``now`` and the next rotation is due ``rotate_every`` later.
        A fixed ring never rotates and always returns False.
        """
        if self._next_rotation is None or now < self._next_rotation:
            return False
        self.rotate(now=now)
        return True

    def rotate(self, *, now: float) -> TicketKey:
        """Make a new encryption key now; keep at most ``keep`` older ones. Returns the new key."""
        if self._random_bytes is None or self._rotate_every is None:
            raise ValueError(
                "this ticket key ring is fed by key files and cannot rotate itself; "
                "write new key files and replace() the keys"
            )
        new = new_ticket_key(random_bytes=self._random_bytes, now=now)
        old = self._snapshot.keys[: self._keep]
        self._snapshot = _Snapshot.of((new, *old))
        self._next_rotation = now + self._rotate_every
        return new

    def replace(self, keys: Sequence[TicketKey]) -> None:
        """Swap in a new key list (``keys[0]`` encrypts) in one assignment.

        Meant for fixed rings on SIGHUP. On a rotating ring the list is cut to ``keep + 1`` keys
        and the rotation schedule is unchanged.
        """
        if self.rotating:
            keys = tuple(keys)[: self._keep + 1]
        self._snapshot = _Snapshot.of(keys)

    def encryption_key(self) -> TicketKey:
        """The key new tickets are encrypted with."""
        return self._snapshot.keys[0]

    def lookup(self, name: bytes) -> tuple[TicketKey, bool] | None:
        """``(key, is_current_encryption_key)`` for a ticket's key name; None if unknown/dropped."""
        return self._snapshot.by_name.get(name)

    def keys(self) -> tuple[TicketKey, ...]:
        """The current key first, then the older ones, newest first."""
        return self._snapshot.keys

    def describe(self, *, now: float) -> list[KeyInfo]:
        """Name prefix, role and age of every key, for stats (never the key bytes)."""
        return [
            KeyInfo(
                name_prefix=key.name_prefix(),
                role="encrypt" if index == 0 else "decrypt",
                age_s=max(0.0, now - key.created),
            )
            for index, key in enumerate(self._snapshot.keys)
        ]

    def next_rotation_at(self) -> float | None:
        """When ``rotate_if_due`` will next rotate; None for a fixed ring."""
        return self._next_rotation

    def __len__(self) -> int:
        return len(self._snapshot.keys)

    def __repr__(self) -> str:
        kind = "rotating" if self.rotating else "fixed"
        names = ", ".join(key.name_prefix() for key in self._snapshot.keys)
        return f"<KeyRing {kind} [{names}]>"
