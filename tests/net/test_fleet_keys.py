"""net.fleet_keys against a real redis-server: each slot's key is made once (SET NX) by whichever
host gets there first and read by the others; Redis holds sealed values, never key bytes; Redis
down is a bounded, counted miss and a local fallback; Redis back is a counted rejoin.

The two ``FleetKeys`` here are two hosts in one test process; their wall clock is a parameter
(``WallClock``), so the test moves time across slot boundaries without waiting for it.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from gateproxy.core.config import Config, load_config_data
from gateproxy.core.fleet_keys import slot_of
from gateproxy.net.fleet_keys import FleetKeys
from tests.conftest import CertPaths
from tests.helpers.proxy import proxy_config, tls_listener
from tests.helpers.redis_server import RedisServer, running_redis

# coredis 6.9 makes a connection's anyio memory streams in its __init__ and closes them only
# from a connection that ran: one that never connected (Redis down) leaves them to the collector,
# which warns. That is coredis's, harmless (nothing is open), and not what these tests check.
pytestmark = pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning")

ROTATE = 10.0
PREFIX = "gateproxy:ticket-keys:public"


@dataclass
class WallClock:
    """The hosts' wall clock, moved by the test."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def _config(
    cert: CertPaths, redis: RedisServer, tmp_path: Path, *, timeout: str = "300ms"
) -> Config:
    secret = tmp_path / "fleet.secret"
    if not secret.exists():
        secret.write_bytes(os.urandom(32))
    tickets = {"source": "fleet", "rotate_every": f"{ROTATE}s", "keep": 1}
    listener = tls_listener(cert=cert.cert, key=cert.key, tls={"tickets": tickets})
    fleet = {"redis": {"url": redis.url, "timeout": timeout}, "secret_file": str(secret)}
    raw = proxy_config([listener], {"app": {"servers": ["127.0.0.1:9"]}}, fleet=fleet)
    return load_config_data(raw, source="<test>")


def _hosts(config: Config, tmp_path: Path, clock: WallClock) -> tuple[FleetKeys, FleetKeys]:
    hosts = (
        FleetKeys(base_dir=tmp_path, wall_clock=clock),
        FleetKeys(base_dir=tmp_path, wall_clock=clock),
    )
    for host in hosts:
        host.configure(config)
    return hosts


def _names(host: FleetKeys) -> list[bytes]:
    return [key.name for key in host.ring_keys("public", now=0.0)]


async def test_each_slot_key_is_made_once_and_both_hosts_hold_the_same_keys(
    tmp_path: Path, server_cert: CertPaths
) -> None:
    async with running_redis(tmp_path) as redis:
        clock = WallClock()
        a, b = _hosts(_config(server_cert, redis, tmp_path), tmp_path, clock)
        changed: dict[str, list[str]] = {}
        async with trio.open_nursery() as nursery:  # both race for the same SET NX
            nursery.start_soon(_refresh_into, changed, "a", a)
            nursery.start_soon(_refresh_into, changed, "b", b)
        assert changed == {"a": ["public"], "b": ["public"]}
        sa, sb = a.stats()["public"], b.stats()["public"]
        made = (sa["created"], sb["created"], sa["fetched"], sb["fetched"])
        assert made in ((2, 0, 0, 2), (0, 2, 2, 0), (1, 1, 1, 1))  # current + next, once each
        assert _names(a) == _names(b) and len(_names(a)) == 2
        current = slot_of(now=clock.now, rotate_every=ROTATE)
        assert sorted(redis.keys(f"{PREFIX}:*")) == [
            f"{PREFIX}:{current}",
            f"{PREFIX}:{current + 1}",
        ]
        assert (sa["source"], sa["slot"]) == ("fleet", current)
        assert sa["key"] == _names(a)[0][:4].hex()


async def _refresh_into(out: dict[str, list[str]], name: str, host: FleetKeys) -> None:
    out[name] = await host.refresh()


async def test_redis_holds_sealed_values_with_a_ttl_not_key_bytes(
    tmp_path: Path, server_cert: CertPaths
) -> None:
    async with running_redis(tmp_path) as redis:
        clock = WallClock()
        (a, _) = _hosts(_config(server_cert, redis, tmp_path), tmp_path, clock)
        await a.refresh()
        current = slot_of(now=clock.now, rotate_every=ROTATE)
        raw = redis.command("GET", f"{PREFIX}:{current}")
        encrypting = a.ring_keys("public", now=0.0)[0]
        assert raw.startswith(b"$") and b"gpk1" in raw
        for part in (encrypting.name, encrypting.aes_key, encrypting.hmac_key):
            assert part not in raw
        ttl = int(redis.command("TTL", f"{PREFIX}:{current}")[1:-2])
        assert 0 < ttl <= (1 + 3) * ROTATE  # keep + 3 slots (core.fleet_keys.key_ttl)


async def test_redis_down_is_a_bounded_counted_miss_then_a_fallback_then_a_rejoin(
    tmp_path: Path, server_cert: CertPaths
) -> None:
    async with running_redis(tmp_path) as redis:
        clock = WallClock()
        a, b = _hosts(_config(server_cert, redis, tmp_path, timeout="200ms"), tmp_path, clock)
        await a.refresh()
        await b.refresh()
        held = _names(a)
        await redis.kill()

        clock.now += ROTATE  # the next slot's key is held: encrypt with it, ask for the one after
        started = trio.current_time()
        assert await a.refresh() == ["public"]
        assert trio.current_time() - started < 1.0  # bounded by fleet.redis.timeout
        stats = a.stats()["public"]
        assert (stats["source"], stats["redis_errors"], stats["fallbacks"]) == ("fleet", 1, 0)
        assert _names(a)[0] == held[1]  # ring: current first, then next; now next encrypts
        assert stats["store_down"] is True and stats["last_error"]

        clock.now += ROTATE  # no key at all for this slot: a local one
        assert await a.refresh() == ["public"]
        assert await b.refresh() == ["public"]
        stats = a.stats()["public"]
        assert (stats["source"], stats["redis_errors"], stats["fallbacks"]) == ("local", 2, 1)
        assert _names(a)[0] != _names(b)[0]  # each host its own key: no resumption across
        local_a = _names(a)[0]

        await redis.start()  # same port, empty
        assert await a.refresh() == ["public"]
        assert await b.refresh() == ["public"]
        sa, sb = a.stats()["public"], b.stats()["public"]
        assert (sa["source"], sa["rejoins"], sa["store_down"]) == ("fleet", 1, False)
        assert (sb["source"], sb["rejoins"]) == ("fleet", 1)
        assert _names(a)[0] == _names(b)[0] != local_a
        assert local_a in _names(a)  # the outage's tickets still resume here, decrypt-only


async def test_a_redis_that_accepts_but_never_answers_is_cut_at_the_timeout(
    tmp_path: Path, server_cert: CertPaths
) -> None:
    async with running_redis(tmp_path) as redis:
        clock = WallClock()
        (a, _) = _hosts(_config(server_cert, redis, tmp_path, timeout="200ms"), tmp_path, clock)
        assert redis.process is not None
        redis.process.send_signal(signal.SIGSTOP)  # the kernel still accepts: no answer comes
        try:
            started = trio.current_time()
            assert await a.refresh() == ["public"]  # a local key: the host has none
            took = trio.current_time() - started
        finally:
            redis.process.send_signal(signal.SIGCONT)
        stats = a.stats()["public"]
        assert 0.15 <= took < 1.0, took
        assert (stats["source"], stats["fallbacks"], stats["last_error"]) == (
            "local",
            1,
            "timed out",
        )


async def test_a_host_with_another_secret_cannot_open_the_keys_and_falls_back(
    tmp_path: Path, server_cert: CertPaths
) -> None:
    async with running_redis(tmp_path) as redis:
        clock = WallClock()
        (a, _) = _hosts(_config(server_cert, redis, tmp_path), tmp_path, clock)
        await a.refresh()
        other_dir = tmp_path / "other"
        other_dir.mkdir()
        other = _hosts(_config(server_cert, redis, other_dir), other_dir, clock)[0]
        assert await other.refresh() == ["public"]
        stats = other.stats()["public"]
        assert (stats["source"], stats["fallbacks"], stats["redis_errors"]) == ("local", 1, 1)
        assert "does not open with this fleet secret" in str(stats["last_error"])
        assert _names(other)[0] not in _names(a)
