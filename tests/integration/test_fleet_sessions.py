"""Two ``gateproxy run`` daemons and one real redis-server share TLS 1.2 session-id sessions
(``tls.session_cache.shared``): a session made on host A resumes on host B; forged ids cause no
Redis GET; probers write nothing; Redis killed: no failed handshake, the breaker opens; Redis
back: writes and lookups resume.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio
import trustme

from tests.conftest import CertPaths
from tests.helpers.clients import Response, https_request, split_address
from tests.helpers.redis_server import RedisServer, running_redis
from tests.helpers.supervised import Supervised, supervised_file
from tests.helpers.tls_sessions import s_client, session_of
from tests.helpers.upstreams import RecordingUpstream

PREFIX = "gpt"


def _config(tmp: Path, name: str, cert: CertPaths, *, upstream: str, redis: RedisServer) -> Path:
    def listener(lname: str, tickets: object = None, **extra: object) -> dict[str, object]:
        tls: dict[str, object] = {
            "certificates": [{"cert": str(cert.cert), "key": str(cert.key)}],
            "session_cache": {"shared": True},
        }
        if tickets is not None:
            tls["tickets"] = tickets
        return {
            "name": lname,
            "bind": "127.0.0.1:0",
            "tls": tls,
            "health_checks": [{"path": "/healthz"}],
            "routes": [{"path_prefix": "/", "upstream": "app"}],
            **extra,
        }

    config = {
        "listeners": [
            listener("public"),
            listener("probed", probe_clients=["127.0.0.1/32"]),
            listener("stateful", tickets={"stateless": False}),
        ],
        "upstreams": {"app": {"servers": [upstream]}},
        "admin": {"bind": "127.0.0.1:0"},
        "access_log": {"path": "off"},
        "shutdown_timeout": "2s",
        "fleet": {
            "redis": {"url": redis.url, "key_prefix": PREFIX, "timeout": "300ms"},
            "secret_file": "fleet.secret",
        },
    }
    (tmp / "fleet.secret").write_bytes(b"a fleet secret of at least 32 bytes!")
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@asynccontextmanager
async def fleet(
    tmp_path: Path, cert: CertPaths
) -> AsyncIterator[tuple[Supervised, Supervised, RedisServer]]:
    """Redis, an upstream, and hosts A and B with the same fleet block."""
    async with running_redis(tmp_path) as redis, RecordingUpstream() as up:
        path_a = _config(tmp_path, "a", cert, upstream=up.address, redis=redis)
        path_b = _config(tmp_path, "b", cert, upstream=up.address, redis=redis)
        async with supervised_file(path_a) as a, supervised_file(path_b) as b:
            yield a, b, redis


def no_ticket_client(ca: trustme.CA) -> ssl.SSLContext:
    """A TLS 1.2 client without tickets: it can resume only by session id."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


async def get(host: Supervised, ctx: ssl.SSLContext, **kw: Any) -> Response:
    resp = await https_request(host.address(), ca=ctx, **kw)
    assert resp.status == 200, resp
    assert resp.tls_version == "TLSv1.2"
    return resp


def session_key(resp: Response) -> str:
    return f"{PREFIX}:sessions:public:{session_of(resp).id.hex()}"


async def stored(redis: RedisServer, key: str, *, within: float = 5.0) -> bool:
    """Poll until ``key`` exists (the write is asynchronous); False after ``within``."""
    with trio.move_on_after(within):
        while True:
            if key in redis.keys(f"{PREFIX}:*"):
                return True
            await trio.sleep(0.01)
    return False


def get_calls(redis: RedisServer) -> int:
    stats = redis.command("INFO", "commandstats").decode()
    found = re.search(r"cmdstat_get:calls=(\d+)", stats)
    return int(found.group(1)) if found else 0


async def shared_stats(host: Supervised, listener: str = "public") -> dict[str, Any]:
    stats = await host.stats()
    tls = stats["listeners"][listener]["tls"]
    return dict(tls["session_cache"]["shared"], handshakes=tls["handshakes"])


async def test_a_tls12_session_made_on_a_resumes_on_b(
    tmp_path: Path, ca: trustme.CA, ca_pem_path: Path, server_cert: CertPaths
) -> None:
    """stdlib ssl; then openssl s_client -tls1_2 -no_ticket: -sess_out on A, -sess_in on B."""
    ctx = no_ticket_client(ca)
    async with fleet(tmp_path, server_cert) as (a, b, redis):
        first = await get(a, ctx)
        assert not first.session_reused
        assert await stored(redis, session_key(first))
        ttl = int(redis.command("TTL", session_key(first)).split(b":")[1])
        assert 290 <= ttl <= 300  # the session's lifetime (session_cache.timeout 300s)
        assert b"BEGIN" not in redis.command("GET", session_key(first))  # sealed
        on_b = await get(b, ctx, session=first.session)
        assert on_b.session_reused
        again = await get(b, ctx, session=first.session)  # now local on B: no second GET
        assert again.session_reused
        stats = await shared_stats(b)
        assert (stats["lookups"], stats["hits"], stats["misses"]) == (1, 1, 0)
        assert stats["skipped_by_reason"].get("local") == 1
        assert (await shared_stats(a))["writes"] == 1
        memory = int(redis.command("MEMORY", "USAGE", session_key(first)).split(b":")[1])
        assert memory < 1024  # what the README tells an operator sizing maxmemory

        session = tmp_path / "sess.pem"
        host, port = split_address(a.address())
        made = await s_client(
            host, port, ca_file=ca_pem_path, version="1.2", sess_out=session, no_ticket=True
        )
        assert (made.reused, made.http_status) == (False, b"200")
        with trio.fail_after(5):
            while True:
                if len(redis.keys(f"{PREFIX}:sessions:public:*")) == 2:
                    break
                await trio.sleep(0.01)
        host, port = split_address(b.address())
        resumed = await s_client(
            host, port, ca_file=ca_pem_path, version="1.2", sess_in=session, no_ticket=True
        )
        assert (resumed.reused, resumed.http_status) == (True, b"200")


async def test_a_tls13_stateful_ticket_from_a_resumes_on_b(
    tmp_path: Path, ca: trustme.CA, server_cert: CertPaths
) -> None:
    """``tickets.stateless: false``: the TLS 1.3 ticket is a session id, shared the same way."""
    async with fleet(tmp_path, server_cert) as (a, b, redis):
        first = await https_request(a.address("stateful"), ca=ca, tls_version="TLSv1.3")
        assert first.status == 200 and session_of(first).has_ticket
        with trio.fail_after(5):
            while True:
                if redis.keys(f"{PREFIX}:sessions:stateful:*"):
                    break
                await trio.sleep(0.01)
        on_b = await https_request(
            b.address("stateful"), ca=ca, tls_version="TLSv1.3", session=session_of(first)
        )
        assert (on_b.status, on_b.tls_version, on_b.session_reused) == (200, "TLSv1.3", True)
        stats = await shared_stats(b, "stateful")
        assert (stats["lookups"], stats["hits"]) == (1, 1)


def _foreign_session(ctx: ssl.SSLContext, port: int) -> ssl.SSLSession:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.recv(1)
            assert tls.session is not None and tls.session.id
            return tls.session


async def test_forged_session_ids_cause_no_redis_get(
    tmp_path: Path, ca: trustme.CA, server_cert: CertPaths
) -> None:
    """A session id from another TLS server (OpenSSL's random ids, no gateproxy MAC)."""
    other = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    other.load_cert_chain(server_cert.cert, server_cert.key)
    other.maximum_version = ssl.TLSVersion.TLSv1_2

    async def serve(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.send_all(b"x")
        await stream.aclose()

    ctx = no_ticket_client(ca)
    async with fleet(tmp_path, server_cert) as (a, b, redis), trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_ssl_over_tcp, serve, 0, other, host="127.0.0.1")
        )
        port = listeners[0].transport_listener.socket.getsockname()[1]
        foreign = await trio.to_thread.run_sync(_foreign_session, ctx, port)
        before = get_calls(redis)
        for _ in range(5):
            resp = await get(b, ctx, session=foreign)
            assert not resp.session_reused
        assert get_calls(redis) == before
        stats = await shared_stats(b)
        assert (stats["forged"], stats["lookups"]) == (5, 0)
        real = await get(a, ctx)  # control: a real id from A does reach Redis
        assert await stored(redis, session_key(real))
        assert (await get(b, ctx, session=real.session)).session_reused
        assert get_calls(redis) == before + 1
        nursery.cancel_scope.cancel()


async def test_a_prober_storm_and_bad_hellos_write_nothing_to_redis(
    tmp_path: Path, ca: trustme.CA, server_cert: CertPaths
) -> None:
    ctx = no_ticket_client(ca)
    async with fleet(tmp_path, server_cert) as (a, _b, redis):
        for _ in range(15):  # health-only connections: TLS 1.2 sessions made, never written
            resp = await https_request(a.address(), ca=ctx, path="/healthz")
            assert resp.status == 200
        for _ in range(15):  # probe_clients: the stateless probe context, no session at all
            resp = await https_request(a.address("probed"), ca=ctx, path="/")
            assert resp.status == 200
        assert redis.keys(f"{PREFIX}:*") == []
        stats = await shared_stats(a)
        assert stats["writes"] == 0
        assert stats["writes_skipped_probe"] == 15
        await _bad_hellos(a)
        assert redis.keys(f"{PREFIX}:*") == []
        real = await get(a, ctx)  # control: a real request's session is written
        assert await stored(redis, session_key(real))


async def _bad_hellos(host_a: Supervised) -> None:
    """What the hello reader sees first: garbage, a cut hello, an endless one, silence + EOF:
    each fails its own handshake only, with no lookup."""
    endless = b"\x16\x03\x01\x00\x01\x01" * 4000  # one-byte records, never a whole hello
    before = await shared_stats(host_a)
    host, port = split_address(host_a.address())
    for wire in (b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00\x01", endless, b""):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            if wire:
                await stream.send_all(wire)
            await stream.send_eof()
            with trio.fail_after(5):
                while await stream.receive_some(65536):
                    pass
    after = await shared_stats(host_a)
    assert after["handshakes"]["failed"] - before["handshakes"]["failed"] == 4
    assert after["lookups"] == before["lookups"] == 0


async def test_redis_killed_then_restarted(
    tmp_path: Path, ca: trustme.CA, server_cert: CertPaths
) -> None:
    ctx = no_ticket_client(ca)
    async with fleet(tmp_path, server_cert) as (a, b, redis):
        failed: list[BaseException] = []

        async def load(host: Supervised, session: ssl.SSLSession | None) -> None:
            for _ in range(6):
                try:
                    await get(host, ctx, session=session)
                except Exception as exc:  # each failure is collected
                    failed.append(exc)

        warm = await get(a, ctx)
        assert await stored(redis, session_key(warm))
        async with trio.open_nursery() as nursery:  # Redis dies under load
            for host in (a, b, a, b):
                nursery.start_soon(load, host, session_of(warm))
            await redis.kill()
        assert failed == []
        sessions = [await get(a, ctx) for _ in range(8)]  # made while Redis is down
        for made in sessions:  # B looks each up (our MAC, not local): errors, then the breaker
            resp = await get(b, ctx, session=made.session)
            assert not resp.session_reused
        stats_b = await shared_stats(b)
        assert stats_b["handshakes"]["failed"] == 0
        assert stats_b["errors"] + stats_b["timeouts"] >= 1  # (B's own writes fail too)
        assert stats_b["errors"] + stats_b["timeouts"] + stats_b["write_errors"] >= 5
        assert stats_b["breaker_open"] == 1 and stats_b["breaker_opens"] >= 1
        assert stats_b["skipped_by_reason"].get("breaker_open", 0) >= 1
        stats_a = await shared_stats(a)
        assert stats_a["handshakes"]["failed"] == 0
        assert stats_a["write_errors"] >= 1  # the rest wait in the write queue or were dropped
        _, body = await b.get("/metrics")
        assert b'gateproxy_tls_shared_sessions_breaker_open{listener="public"} 1' in body

        await redis.start()  # same port, empty
        with trio.fail_after(15):  # the breakers' half-open trials close them again
            while True:
                made = await get(a, ctx)
                if await stored(redis, session_key(made), within=0.3):
                    resumed = await get(b, ctx, session=made.session)
                    if resumed.session_reused:
                        break
                await trio.sleep(0.05)
        assert (await shared_stats(b))["breaker_open"] == 0
        assert (await shared_stats(a))["breaker_open"] == 0
        for host in (a, b):
            opened = await host.wait_event("shared_sessions_breaker_open", within=1)
            assert opened["listener"] == "public"
            await host.wait_event("shared_sessions_breaker_closed", within=1)
