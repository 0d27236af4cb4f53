"""One listener's shared TLS session cache in one worker: lookups before the handshake, writes
after it, through one long-lived coredis client.

Theory of operation
-------------------
OpenSSL's session callbacks are synchronous and stay local (tls/session_callbacks.py). What the
fleet shares is moved around them:

* **Lookup** (:meth:`SharedSessions.on_hello`): ``ServerTLSStream.do_handshake`` reads the
  client's first flight into its memory BIO before OpenSSL sees it and hands the parsed hello
  here. ``core.shared_sessions.decide_lookup`` says whether a store round trip can matter; if
  so, one ``GET <prefix>:sessions:<listener>:<hex id>`` under ``shared_timeout`` (default 20 ms).
  A session that comes back is opened (AES-GCM under a key from the fleet secret, the store key
  as associated data: a value copied to another key, or a desynchronised reply, never opens) and
  put into the local ``SessionCache`` for this client, where OpenSSL's get callback finds it.
  "No such key" goes to the negative cache. An error or a timeout is a miss that feeds the
  circuit breaker; while it is open no lookup goes out (half-open trial after a cool-down).
* **Write** (:meth:`SharedSessions.publish`): the TLS 1.2 session a connection made is written
  once the connection is known not to be a prober: at the machine's first request that is not a
  health check (``ReleaseTickets``, the point deferred TLS 1.3 tickets leave). A connection
  from ``probe_clients`` gets the stateless probe context (no session at all); one that asked
  only health checks, or nothing, ends with its session unwritten (:meth:`drop_unwritten`,
  counted as ``writes_skipped_probe``). Writes are queued (bounded; full or breaker not closed:
  dropped, counted) and run by :meth:`run`: ``SET key sealed EX <remaining lifetime>``, each
  under ``fleet.redis.timeout``.

The client lives for the worker's life (:meth:`run`); if coredis cannot even enter (an
ExceptionGroup from ``async with``), it is retried after the breaker's cool-down. Redis is never
needed: every failure is a full handshake, never a failed one.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Final

import coredis
import trio

from gateproxy.core.breaker import Breaker, BreakerState
from gateproxy.core.client_hello import HelloResult
from gateproxy.core.config import Config, ListenerConfig
from gateproxy.core.config_fleet import FleetConfig
from gateproxy.core.fleet_seal import NONCE_LEN, SESSIONS_LABEL, Sealer, SealError
from gateproxy.core.session_ids import SessionIds
from gateproxy.core.shared_sessions import (
    Lookup,
    NegativeCache,
    SharedStats,
    decide_lookup,
    session_store_key,
    write_ttl,
)
from gateproxy.errors import ConfigError
from gateproxy.logs import event
from gateproxy.tls.engine import ListenerTLSEngine

__all__ = ["SharedSessions", "shared_secret_for"]

BREAKER_FAILURES: Final = 5
"""Consecutive store failures (errors or timeouts) that open the breaker."""
BREAKER_COOLDOWN: Final = 1.0
"""Seconds the breaker stays open before one trial lookup."""
NEGATIVE_ENTRIES: Final = 4096
NEGATIVE_TTL: Final = 30.0
"""Seconds a session id the store did not have is not asked for again."""
WRITE_QUEUE: Final = 1024
"""Sessions waiting to be written, at most (more are dropped and counted)."""


class _Local:
    """The engine's cache as the ``in`` test ``decide_lookup`` wants."""

    __slots__ = ("engine",)

    def __init__(self, engine: ListenerTLSEngine) -> None:
        self.engine = engine

    def __contains__(self, session_id: object) -> bool:
        return isinstance(session_id, bytes) and self.engine.holds_session(session_id)


class SharedSessions:
    """The shared session cache of one listener in this worker (see the module docstring)."""

    def __init__(
        self,
        *,
        listener: ListenerConfig,
        fleet: FleetConfig,
        secret: bytes,
        ids: SessionIds,
        engine: ListenerTLSEngine,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        assert listener.tls is not None
        self._name = listener.name
        self._tls = listener.tls
        self._fleet = fleet
        self._engine = engine
        self._clock = clock
        self.ids = ids
        self._sealer = Sealer(secret, label=SESSIONS_LABEL)
        self.breaker = Breaker(failures=BREAKER_FAILURES, cooldown=BREAKER_COOLDOWN)
        self.negative = NegativeCache(max_entries=NEGATIVE_ENTRIES, ttl=NEGATIVE_TTL)
        self.counters = SharedStats()
        self.skipped_by_reason: dict[str, int] = {}
        self._local = _Local(engine)
        self._client: coredis.Redis[bytes] | None = None
        self._queue_in, self._queue_out = trio.open_memory_channel[tuple[bytes, bytes, float]](
            WRITE_QUEUE
        )

    # --- lookups --------------------------------------------------------------------------------

    async def on_hello(self, hello: HelloResult, *, client: str) -> None:
        """Before OpenSSL reads ``hello``: fetch its session from the store if that can matter."""
        tls = self._tls
        decision = decide_lookup(
            hello,
            ids=self.ids,
            allows_tls13=tls.max_version == "1.3",
            accepts_tickets=tls.tickets.enabled,
            stateful_tls13=tls.tickets.enabled and not tls.tickets.stateless,
            local=self._local,
            negative=self.negative,
            breaker=self.breaker,
            now=self._clock(),
        )
        if not isinstance(decision, Lookup):
            if decision.reason == "forged":
                self.counters.forged += 1
            else:
                self.counters.skipped += 1
                by = self.skipped_by_reason
                by[decision.reason] = by.get(decision.reason, 0) + 1
            return
        await self._lookup(decision.session_id, client=client)

    async def _lookup(self, session_id: bytes, *, client: str) -> None:
        counters = self.counters
        counters.lookups += 1
        key = self._key(session_id)
        redis = self._client
        value: bytes | None = None
        with trio.move_on_after(self._tls.session_cache.shared_timeout) as scope:
            try:
                if redis is None:
                    raise ConnectionError("no Redis client (starting, or reconnecting)")
                value = await redis.get(key)
            except Exception:  # every store failure is a miss (coredis may raise a group)
                counters.errors += 1
                self._failed("lookup failed")
                return
        if scope.cancelled_caught:
            counters.timeouts += 1
            self._failed("lookup timed out")
            return
        self._succeeded()
        if value is None:
            counters.misses += 1
            self.negative.add(session_id, now=self._clock())
            return
        try:
            der = self._sealer.open_bytes(value, store_key=key)
        except SealError:
            counters.errors += 1
            return
        self._engine.hold_prefetched(session_id, der, client=client)
        counters.hits += 1

    # --- writes ---------------------------------------------------------------------------------

    def publish(self, ssl_object: ssl.SSLObject) -> None:
        """The connection is no prober: queue the sessions it made (if any) for writing."""
        for fresh in self._engine.take_new_sessions(ssl_object):
            if not self.breaker.allow(now=self._clock()):  # open: dropped; past the cool-down,
                self.counters.writes_dropped += 1  # this write is the half-open trial
                continue
            try:
                self._queue_in.send_nowait(fresh)
            except trio.WouldBlock:
                self.counters.writes_dropped += 1

    def drop_unwritten(self, ssl_object: ssl.SSLObject) -> None:
        """The connection ends without having been published: a prober's sessions stay local."""
        self.counters.writes_skipped_probe += len(self._engine.take_new_sessions(ssl_object))

    async def _write(self, redis: coredis.Redis[bytes], fresh: tuple[bytes, bytes, float]) -> None:
        session_id, der, made_at = fresh
        key = self._key(session_id)
        value = self._sealer.seal_bytes(der, store_key=key, nonce=os.urandom(NONCE_LEN))
        ttl = write_ttl(timeout=self._tls.session_cache.timeout, age=self._clock() - made_at)
        try:
            with trio.fail_after(self._fleet.redis.timeout):
                await redis.set(key, value, ex=ttl)
        except Exception:  # trio.TooSlowError, coredis errors, groups: all the same failure
            self.counters.write_errors += 1
            self._failed("write failed")
            return
        self.counters.writes += 1
        self._succeeded()

    # --- the client -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Forever: hold the worker's client open and write queued sessions through it."""
        redis_conf = self._fleet.redis
        while True:
            redis: coredis.Redis[bytes] = coredis.Redis.from_url(
                redis_conf.url,
                decode_responses=False,
                connect_timeout=redis_conf.timeout,
                stream_timeout=redis_conf.timeout,
            )
            try:
                async with redis:
                    self._client = redis
                    async for fresh in self._queue_out:
                        await self._write(redis, fresh)
            except Exception as exc:  # an unreachable server: an ExceptionGroup from coredis
                self._failed(f"client: {_describe(exc)}")
            finally:
                self._client = None
            await trio.sleep(self.breaker.cooldown)

    def _failed(self, reason: str) -> None:
        """A store failure: feeds the breaker; its opening is logged once."""
        opens = self.breaker.opens
        self.breaker.failure(now=self._clock())
        if self.breaker.opens != opens:
            event("shared_sessions_breaker_open", listener=self._name, reason=reason)

    def _succeeded(self) -> None:
        was_closed = self.breaker.state is BreakerState.CLOSED
        self.breaker.success()
        if not was_closed:
            event("shared_sessions_breaker_closed", listener=self._name)

    def stats(self) -> dict[str, object]:
        """``tls.session_cache.shared`` of this listener in /stats."""
        return self.counters.tree(skipped_by_reason=self.skipped_by_reason, breaker=self.breaker)

    def _key(self, session_id: bytes) -> str:
        return session_store_key(
            prefix=self._fleet.redis.key_prefix, listener=self._name, session_id=session_id
        )


def shared_secret_for(
    config: Config, listener: ListenerConfig, *, base_dir: Path, source: str
) -> bytes | None:
    """The fleet secret when the listener shares sessions (``tls.session_cache.shared``)."""
    if listener.tls is None or not listener.tls.session_cache.shared:
        return None
    if config.fleet is None:  # the config check refuses this already
        raise ConfigError.single(source, "fleet", "shared: true needs a fleet: block")
    from gateproxy.net.fleet_keys import read_fleet_secret

    secret, problems = read_fleet_secret(config.fleet, base_dir=base_dir)
    if problems:
        raise ConfigError(source, problems)
    return secret


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
