"""The shared session cache's decisions: when to ask the fleet's store for a session. Sans-IO.

Theory of operation
-------------------
A TLS 1.2 client without tickets resumes by session id, and the id names a session held by
whichever host made it. Before the handshake's bytes reach OpenSSL, the shell reads the
ClientHello (``core.client_hello``) and asks :func:`decide_lookup` whether fetching the session
from the store could matter. Only then is there a store round trip; the answer lands in the local
``SessionCache`` (its cap, LRU and per-client budget apply to it like to any other entry), where
OpenSSL's synchronous get-session callback finds it. The rules, in order (first match skips):

``no_hello``      the bytes are not a ClientHello this reader accepts (OpenSSL judges them).
``tls13``         the hello offers TLS 1.3 and the listener allows it, with stateless tickets:
                  TLS 1.3 never resumes by session id (its legacy id is a random echo). With
                  stateful tickets (``tickets.stateless: false``) the ticket *is* a session id:
                  the first pre_shared_key identity is looked up instead.
``no_session_id`` an empty id (or no PSK identity): nothing to resume.
``ticket``        the hello carries a session ticket and the listener accepts tickets: OpenSSL
                  tries the ticket and never looks the id up.
``forged``        the id does not carry gateproxy's MAC (``core.session_ids``): made up, or
                  another server's; never sent to the store.
``local``         this worker holds the session already.
``negative``      the store said "no such session" for this id a moment ago
                  (:class:`NegativeCache`).
``breaker_open``  the store is failing (``core.breaker``): no lookups until the trial succeeds.

Writes need no decision here: a new session is written once its connection is known not to be
a prober (the machine's first non-health request, ``ReleaseTickets``); a connection from
``probe_clients`` or one that asked only health checks never writes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass, fields
from typing import Final

from gateproxy.core.breaker import Breaker, BreakerState
from gateproxy.core.client_hello import ClientHello, HelloResult
from gateproxy.core.session_ids import SessionIds

__all__ = [
    "SKIP_REASONS",
    "Lookup",
    "NegativeCache",
    "SharedStats",
    "Skip",
    "decide_lookup",
    "session_store_key",
    "write_ttl",
]

SKIP_REASONS: Final = (
    "no_hello",
    "tls13",
    "no_session_id",
    "ticket",
    "forged",
    "local",
    "negative",
    "breaker_open",
)


@dataclass(frozen=True, slots=True)
class Lookup:
    """Fetch ``session_id`` from the store (under the shared timeout) before the handshake."""

    session_id: bytes


@dataclass(frozen=True, slots=True)
class Skip:
    """No store round trip, for ``reason`` (one of :data:`SKIP_REASONS`)."""

    reason: str


def decide_lookup(
    hello: HelloResult,
    *,
    ids: SessionIds,
    allows_tls13: bool,
    accepts_tickets: bool,
    stateful_tls13: bool = False,
    local: Container[bytes],
    negative: NegativeCache,
    breaker: Breaker,
    now: float,
) -> Lookup | Skip:
    """Whether this hello's session is worth a store lookup (rules in the module docstring).

    ``breaker.allow`` is asked last, so a half-open trial is spent only on a real lookup."""
    if not isinstance(hello, ClientHello):
        return Skip("no_hello")
    if hello.offers_tls13 and allows_tls13:
        if not stateful_tls13:
            return Skip("tls13")
        session_id = hello.psk_identities[0] if hello.psk_identities else b""
    else:
        session_id = hello.session_id
        if session_id and hello.offers_ticket and accepts_tickets:
            return Skip("ticket")
    if not session_id:
        return Skip("no_session_id")
    if not ids.is_ours(session_id):
        return Skip("forged")
    if session_id in local:
        return Skip("local")
    if negative.holds(session_id, now=now):
        return Skip("negative")
    if not breaker.allow(now=now):
        return Skip("breaker_open")
    return Lookup(session_id)


class NegativeCache:
    """Session ids the store did not have, remembered for ``ttl`` seconds, at most
    ``max_entries`` of them (the oldest is forgotten first). O(1) per call."""

    __slots__ = ("_ids", "max_entries", "ttl")

    def __init__(self, *, max_entries: int, ttl: float) -> None:
        if max_entries < 1 or not ttl > 0:
            raise ValueError(
                f"negative cache: expected max_entries >= 1 and ttl > 0, got "
                f"{max_entries!r}, {ttl!r}"
            )
        self.max_entries = max_entries
        self.ttl = float(ttl)
        self._ids: OrderedDict[bytes, float] = OrderedDict()  # id -> expiry, in insert order

    def add(self, session_id: bytes, *, now: float) -> None:
        self._ids.pop(session_id, None)
        while len(self._ids) >= self.max_entries:
            self._ids.popitem(last=False)
        self._ids[session_id] = now + self.ttl
        # insert order is expiry order (one ttl): drop what already expired at the front
        while self._ids and next(iter(self._ids.values())) <= now:
            self._ids.popitem(last=False)

    def holds(self, session_id: bytes, *, now: float) -> bool:
        expires = self._ids.get(session_id)
        if expires is None:
            return False
        if expires <= now:
            del self._ids[session_id]
            return False
        return True

    def __len__(self) -> int:
        return len(self._ids)


@dataclass
class SharedStats:
    """One listener's shared-cache counters in one worker (``tls.session_cache.shared``)."""

    lookups: int = 0  # store GETs sent
    hits: int = 0  # a session came back and was put into the local cache
    misses: int = 0  # the store had no such session
    timeouts: int = 0  # no answer within shared_timeout (a miss)
    errors: int = 0  # the store failed, or a value did not open (a miss)
    forged: int = 0  # ids without gateproxy's MAC: never looked up
    skipped: int = 0  # every other hello that needed no lookup (see skipped_by_reason)
    writes: int = 0  # sessions written to the store
    write_errors: int = 0
    writes_skipped_probe: int = 0  # new sessions of probers, never written
    writes_dropped: int = 0  # not written: the breaker was open or the queue full

    def tree(self, *, skipped_by_reason: dict[str, int], breaker: Breaker) -> dict[str, object]:
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["skipped_by_reason"] = dict(skipped_by_reason)
        out["breaker_open"] = int(breaker.state is not BreakerState.CLOSED)
        out["breaker_opens"] = breaker.opens
        return out


def session_store_key(*, prefix: str, listener: str, session_id: bytes) -> str:
    """The store key of a session: ``<prefix>:sessions:<listener>:<hex id>``."""
    return f"{prefix}:sessions:{listener}:{session_id.hex()}"


def write_ttl(*, timeout: float, age: float) -> int:
    """Seconds a session written ``age`` seconds after it was made still lives (>= 1), so the
    store forgets it when OpenSSL would refuse it anyway."""
    return max(1, int(timeout - max(0.0, age)))
