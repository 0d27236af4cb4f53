"""The supervisor's fleet ticket keys: slot keys fetched from (or made in) Redis, through coredis.

The decisions (which slots to hold, which key encrypts, when to fall back to a local key) are
``core.fleet_keys.FleetKeyState``'s; this module runs the store round trips they ask for:

* for the current and the next slot, ``SET <prefix>:ticket-keys:<listener>:<slot> <sealed
  candidate> NX EX <ttl>``: whoever gets there first makes the slot's key; everybody else's
  ``SET`` fails and it ``GET``\\ s the winner's. Values are sealed (``core.fleet_seal``) under the
  fleet secret with the store key as associated data;
* for previous slots (a host that starts, or rejoins), only ``GET``.

One round is one short connection (``async with coredis.Redis``), bounded by
``fleet.redis.timeout``; any failure (refused, timeout, a value that does not open) counts as a
Redis error for every listener the round was for, and a listener whose current slot then has no
key makes a local random one (logged ``fleet_fallback``). Rounds run when a slot is missing:
right after every boundary for the new next slot, every ``retry`` seconds while Redis is
unreachable (``fleet_rejoined`` is logged once a round works again).

Slots are wall-clock time (``time.time()``): every host must agree on them; the keys handed to
the workers carry ages, never clock readings.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import coredis
import trio
from coredis.tokens import PureToken

from gateproxy.core.config import Config
from gateproxy.core.config_fleet import FleetConfig, fleet_listeners
from gateproxy.core.fleet_keys import FleetKeyState, key_ttl, slot_start, store_key
from gateproxy.core.fleet_seal import MIN_SECRET_LEN, NONCE_LEN, Sealer, SealError
from gateproxy.core.ticket_keys import TicketKey, new_ticket_key
from gateproxy.errors import ConfigProblem
from gateproxy.logs import event

__all__ = ["FleetKeys", "read_fleet_secret"]

RETRY = 1.0
"""Seconds between rounds while a slot is missing (Redis down, or a round failed)."""


def read_fleet_secret(fleet: FleetConfig, *, base_dir: Path) -> tuple[bytes, list[ConfigProblem]]:
    """The bytes of ``fleet.secret_file`` (relative to ``base_dir``), or the problem."""
    path = Path(fleet.secret_file).expanduser()
    path = path if path.is_absolute() else base_dir / path
    try:
        secret = path.read_bytes()
    except OSError as exc:
        reason = f"cannot read the fleet secret {path}: {exc.strerror or exc}"
        return b"", [ConfigProblem("fleet.secret_file", reason)]
    if len(secret) < MIN_SECRET_LEN:
        reason = (
            f"{path}: expected at least {MIN_SECRET_LEN} bytes, got {len(secret)} "
            f"(make one with: head -c {MIN_SECRET_LEN} /dev/urandom > {path.name})"
        )
        return b"", [ConfigProblem("fleet.secret_file", reason)]
    return secret, []


class FleetKeys:
    """Fleet key state of every ``source: fleet`` listener, and the Redis rounds that feed it."""

    def __init__(
        self,
        *,
        base_dir: Path,
        wall_clock: Callable[[], float] = time.time,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._base_dir = base_dir
        self._wall = wall_clock
        self._random = random_bytes
        self._fleet: FleetConfig | None = None
        self._sealer: Sealer | None = None
        self._states: dict[str, FleetKeyState] = {}
        self._handed: dict[str, tuple[bytes, ...]] = {}
        self._down = False
        self._lock = trio.Lock()

    @property
    def listeners(self) -> list[str]:
        return list(self._states)

    def configure(self, config: Config) -> None:
        """Track ``config``'s fleet listeners; a listener whose slot settings did not change
        keeps its keys. The secret file was checked with the config (``config_files``)."""
        states: dict[str, FleetKeyState] = {}
        names = set(fleet_listeners(config))
        for lc in config.listeners:
            if lc.name not in names or lc.tls is None:
                continue
            tickets = lc.tls.tickets
            kept = self._states.get(lc.name)
            if kept is not None and (kept.rotate_every, kept.keep) == (
                tickets.rotate_every,
                tickets.keep,
            ):
                states[lc.name] = kept
            else:
                states[lc.name] = FleetKeyState(
                    lc.name, rotate_every=tickets.rotate_every, keep=tickets.keep
                )
        if config.fleet is not None and config.fleet != self._fleet:
            secret, problems = read_fleet_secret(config.fleet, base_dir=self._base_dir)
            self._sealer = Sealer(secret) if not problems else None
        self._fleet = config.fleet
        self._states = states
        self._handed = {name: self._handed[name] for name in states if name in self._handed}

    def ring_keys(self, name: str, *, now: float) -> list[TicketKey]:
        """``name``'s keys, encryption key first, ``created`` on the caller's clock ``now``."""
        wall = self._wall()
        keys = self._states[name].ring_keys(now=wall)
        return [dataclasses.replace(k, created=now - max(0.0, wall - k.created)) for k in keys]

    def changed(self) -> list[str]:
        """Listeners whose key list differs from what was last handed out (and mark it handed)."""
        wall, names = self._wall(), []
        for name, state in self._states.items():
            handed = tuple(k.name for k in state.ring_keys(now=wall))
            if handed and handed != self._handed.get(name):
                self._handed[name] = handed
                names.append(name)
        return names

    def seconds_to_next_round(self) -> float:
        """How long the runner may sleep: until the next slot boundary of any listener (just
        after it), or ``RETRY`` while something is missing."""
        wall = self._wall()
        if any(state.missing(now=wall) for state in self._states.values()):
            return RETRY
        boundary = min((s.next_boundary(now=wall) for s in self._states.values()), default=None)
        if boundary is None:
            return RETRY
        return min(RETRY * 60, max(0.0, boundary - wall) + 0.01)

    def stats(self) -> dict[str, dict[str, object]]:
        """Listener name -> what /stats shows under ``tls.tickets.fleet``."""
        wall = self._wall()
        return {name: state.describe(now=wall) for name, state in self._states.items()}

    async def refresh(self) -> list[str]:
        """One round for every listener that misses a slot; the listeners whose keys changed."""
        async with self._lock:
            wall = self._wall()
            due = {n: s for n, s in self._states.items() if s.missing(now=wall)}
            if due:
                await self._round(due)
            return self.changed()

    async def _round(self, due: dict[str, FleetKeyState]) -> None:
        assert self._fleet is not None
        try:
            if self._sealer is None:
                raise SealError("the fleet secret could not be read")
            with trio.fail_after(self._fleet.redis.timeout):
                await self._fetch(due)
        except Exception as exc:  # every store failure is the same miss: a Redis error
            self._failed(due, reason=_describe(exc))
            return
        if self._down:
            self._down = False
            event("fleet_rejoined", listeners=sorted(due))

    async def _fetch(self, due: dict[str, FleetKeyState]) -> None:
        assert self._fleet is not None
        redis = self._fleet.redis
        client: coredis.Redis[bytes] = coredis.Redis.from_url(
            redis.url,
            decode_responses=False,
            connect_timeout=redis.timeout,
            stream_timeout=redis.timeout,
        )
        async with client:
            for name, state in due.items():
                for slot in state.missing(now=self._wall()):
                    await self._fetch_slot(client, name, state, slot)

    async def _fetch_slot(
        self, client: coredis.Redis[bytes], name: str, state: FleetKeyState, slot: int
    ) -> None:
        assert self._fleet is not None and self._sealer is not None
        key_name = store_key(prefix=self._fleet.redis.key_prefix, listener=name, slot=slot)
        wall = self._wall()
        created = slot_start(slot, rotate_every=state.rotate_every)
        if state.may_create(slot, now=wall):
            candidate = new_ticket_key(random_bytes=self._random, now=created)
            sealed = self._sealer.seal(
                candidate, store_key=key_name, nonce=self._random(NONCE_LEN)
            )
            ttl = key_ttl(rotate_every=state.rotate_every, keep=state.keep)
            if await client.set(key_name, sealed, condition=PureToken.NX, ex=ttl):
                state.learn(slot, candidate, now=wall, created_here=True)
                return
        value = await client.get(key_name)
        if value is None:
            if not state.may_create(slot, now=wall):
                state.absent(slot, now=wall)
                return
            raise SealError(f"{key_name}: vanished between SET NX and GET")
        state.learn(
            slot,
            self._sealer.open(value, store_key=key_name, created=created),
            now=wall,
            created_here=False,
        )

    def _failed(self, due: dict[str, FleetKeyState], *, reason: str) -> None:
        wall = self._wall()
        fallen = [
            name
            for name, state in due.items()
            if state.store_failed(now=wall, reason=reason, random_bytes=self._random)
        ]
        if not self._down:
            self._down = True
            event("fleet_redis_unreachable", listeners=sorted(due), error=reason)
        if fallen:
            event("fleet_fallback", listeners=fallen, error=reason)

    async def run(self, on_change: Callable[[list[str]], Awaitable[None]]) -> None:
        """Forever: sleep until a round is due, run it, hand the listeners whose keys changed
        to ``on_change``. A listener's keys change at every slot boundary, even when no round
        was due (the next slot's key becomes the encryption key)."""
        while True:
            await trio.sleep(self.seconds_to_next_round())
            changed = await self.refresh()
            if changed:
                await on_change(changed)


def _describe(exc: BaseException) -> str:
    """One line for a failed round (coredis raises inside its nursery: an ExceptionGroup)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"
