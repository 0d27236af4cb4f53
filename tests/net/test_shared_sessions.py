"""SharedSessions in one process: real engines, a real redis-server, and a store that never
answers (a loopback listener that accepts and stays silent)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio
import trustme

from gateproxy.core.client_hello import ClientHello
from gateproxy.core.config import ListenerConfig, RouteConfig
from gateproxy.core.config_fleet import FleetConfig
from gateproxy.core.session_ids import SessionIds
from gateproxy.net.shared_sessions import BREAKER_FAILURES, SharedSessions
from tests.helpers.redis_server import running_redis
from tests.tls.tlsutil import Server, client_context, handshake, make_server, tls_config

SECRET = b"a fleet secret of at least 32 bytes!"
IDS = SessionIds(SECRET, listener="public")


def _listener() -> ListenerConfig:
    """The listener the engines of ``make_server(mode="lru", tickets=False)`` stand for."""
    return ListenerConfig(
        name="public",
        bind="127.0.0.1:0",
        tls=tls_config(mode="lru", tickets=False),
        routes=(RouteConfig(path_prefix="/", upstream="app"),),
    )


def _shared(server: Server, url: str) -> SharedSessions:
    fleet = FleetConfig.model_validate(
        {"redis": {"url": url, "key_prefix": "t", "timeout": "300ms"}, "secret_file": "x"}
    )
    return SharedSessions(
        listener=_listener(), fleet=fleet, secret=SECRET, ids=IDS, engine=server.engine
    )


def _hello(session_id: bytes) -> ClientHello:
    return ClientHello(
        legacy_version=0x0303, session_id=session_id, offers_tls13=False, offers_ticket=False
    )


@asynccontextmanager
async def running(shared: SharedSessions) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shared.run)
        yield
        nursery.cancel_scope.cancel()


async def test_a_session_written_by_one_host_is_a_hit_on_another(
    tmp_path: Path, ca: trustme.CA
) -> None:
    host_a = make_server(ca, mode="lru", tickets=False, session_ids=IDS)
    host_b = make_server(ca, mode="lru", tickets=False, session_ids=IDS)
    client = client_context(ca, version="1.2", no_ticket=True)
    async with running_redis(tmp_path) as redis:
        shared_a, shared_b = _shared(host_a, redis.url), _shared(host_b, redis.url)
        async with running(shared_a), running(shared_b):
            made = handshake(host_a, client, after_handshake=shared_a.publish)
            assert made.session is not None
            session_id = made.session.id
            with trio.fail_after(5):
                while True:
                    if redis.keys("t:sessions:public:*") == [
                        f"t:sessions:public:{session_id.hex()}"
                    ]:
                        break
                    await trio.sleep(0.01)
            assert shared_a.counters.writes == 1
            await shared_b.on_hello(_hello(session_id), client="192.0.2.9")
            assert (shared_b.counters.lookups, shared_b.counters.hits) == (1, 1)
            assert host_b.engine.holds_session(session_id)
            assert handshake(host_b, client, session=made.session).reused
            await shared_b.on_hello(_hello(session_id), client="192.0.2.9")  # local now
            assert shared_b.counters.lookups == 1
            missing = IDS.issue(b"m" * 16)
            for _ in range(2):  # a miss, then the negative cache
                await shared_b.on_hello(_hello(missing), client="192.0.2.9")
            assert (shared_b.counters.lookups, shared_b.counters.misses) == (2, 1)
            assert shared_b.skipped_by_reason == {"local": 1, "negative": 1}


async def test_a_silent_store_times_out_and_opens_the_breaker(ca: trustme.CA) -> None:
    host = make_server(ca, mode="lru", tickets=False, session_ids=IDS)
    held: list[trio.SocketStream] = []

    async def silent(stream: trio.SocketStream) -> None:
        held.append(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        shared = _shared(host, f"redis://127.0.0.1:{port}/0")
        async with running(shared):
            for i in range(BREAKER_FAILURES + 2):
                started = trio.current_time()
                await shared.on_hello(_hello(IDS.issue(bytes([i]) * 16)), client="192.0.2.9")
                assert trio.current_time() - started < 0.5  # shared_timeout (20 ms), not more
            counters = shared.counters
            assert counters.timeouts + counters.errors == BREAKER_FAILURES
            assert shared.stats()["breaker_open"] == 1
            assert shared.skipped_by_reason == {"breaker_open": 2}
        nursery.cancel_scope.cancel()
