"""A fleet of two ``gateproxy run`` daemons and one redis-server on loopback, sharing TLS 1.3
ticket keys per time slot (``tls.tickets.source: fleet``):

* a ticket from A resumes on B, and keeps resuming across three automatic rotations; a ticket
  older than ``keep + 2`` slots gets a clean full handshake;
* B's wall clock runs a few seconds ahead (libfaketime, monotonic time left alone) and the two
  still resume each other's tickets while they are in different slots;
* redis-server is killed under load: no request fails, each host keeps resuming its own
  tickets, /stats shows the fallback; redis-server comes back: /stats shows the rejoin and the
  hosts resume each other's tickets again.

The session cache is off, so only tickets can resume.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from tests.conftest import CertPaths
from tests.helpers.clients import Response, https_request, split_address
from tests.helpers.fleet import fleet_config_file
from tests.helpers.redis_server import running_redis
from tests.helpers.supervised import GATEPROXY, Supervised, supervised_file
from tests.helpers.tls_sessions import s_client, session_of
from tests.helpers.upstreams import RecordingUpstream

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def _host_config(
    tmp_path: Path,
    name: str,
    cert: CertPaths,
    upstream: str,
    redis_url: str,
    rotate: str,
    keep: int = 1,
) -> Path:
    return fleet_config_file(
        tmp_path, name, cert=cert, upstream=upstream, redis_url=redis_url, rotate=rotate, keep=keep
    )


async def _fleet(proxy: Supervised) -> dict[str, Any]:
    stats = await proxy.stats()
    return dict(stats["listeners"]["public"]["tls"]["tickets"]["fleet"])


async def _until(proxies: Sequence[Supervised], check: Any, *, within: float = 10.0) -> None:
    """Poll the hosts' fleet stats until ``check(stats)`` holds for each (a deadline, no event
    to wait on)."""
    with trio.fail_after(within):
        while True:
            if all([check(await _fleet(proxy)) for proxy in proxies]):
                return
            await trio.sleep(0.05)


async def _get(
    proxy: Supervised, ca: trustme.CA, resume: Response | None = None, **kw: Any
) -> Response:
    session = session_of(resume) if resume is not None else None
    resp = await https_request(proxy.address(), ca=ca, tls_version="TLSv1.3", session=session, **kw)
    assert resp.status == 200
    return resp


async def test_tickets_resume_across_hosts_and_three_rotations_and_old_ones_fully_handshake(
    tmp_path: Path, ca: trustme.CA, ca_pem_path: Path, server_cert: CertPaths
) -> None:
    async with running_redis(tmp_path) as redis, RecordingUpstream() as up:
        # keep 2: a step of the loop below may take more than one 1 s slot on a loaded machine
        paths = [
            _host_config(tmp_path, n, server_cert, up.address, redis.url, "1s", keep=2)
            for n in "ab"
        ]
        async with supervised_file(paths[0]) as a, supervised_file(paths[1]) as b:
            # openssl s_client: a session saved from A resumes on B; its ticket names a fleet key
            for version in ("1.3", "1.2"):
                sess = tmp_path / f"a-{version}.sess"
                made = await s_client(
                    *split_address(a.address()), ca_file=ca_pem_path, version=version, sess_out=sess
                )
                held = [held["key"] for held in (await _fleet(a))["slots"]]
                again = await s_client(
                    *split_address(b.address()), ca_file=ca_pem_path, version=version, sess_in=sess
                )
                assert not made.reused and again.reused and again.http_status == b"200", version
                assert made.ticket_name is not None and made.ticket_name[:4].hex() in held

            first = await _get(a, ca)
            before = await _fleet(a)
            start = before["slot"]  # first's ticket is from this slot or the one before
            latest = await _get(b, ca, resume=first)
            assert not first.session_reused and latest.session_reused
            keys_by_slot = {start: before["key"]}
            for step in (1, 2, 3):  # three automatic rotations, each seen by both hosts
                seen = max(keys_by_slot)
                await _until([a, b], lambda f, seen=seen: f["slot"] > seen)
                fa, fb = await _fleet(a), await _fleet(b)
                assert fa["source"] == fb["source"] == "fleet"
                if fa["slot"] == fb["slot"]:  # (not one read each side of a boundary)
                    assert fa["key"] == fb["key"], (fa, fb)
                keys_by_slot[fa["slot"]] = fa["key"]
                for host in (a, b):
                    latest = await _get(host, ca, resume=latest)
                    assert latest.session_reused, (step, fa, fb)
            assert len(set(keys_by_slot.values())) == len(keys_by_slot) == 4  # a key per slot
            a.signal(signal.SIGHUP)  # a reload keeps the fleet's keys: new workers get them
            await a.wait_event("reloaded")
            assert (await _get(a, ca, resume=latest)).session_reused
            await _until([a, b], lambda f: f["slot"] >= start + 2 + 2)  # keep (2) + 2 slots
            for host in (a, b):
                stale = await _get(host, ca, resume=first)
                assert not stale.session_reused  # a clean full handshake, not an error
    assert len(up.requests) >= 10


@pytest.mark.skipif(not FAKETIME_LIB.exists(), reason="libfaketime is not installed (faketime)")
async def test_a_host_whose_clock_runs_ahead_still_resumes_its_peers_tickets(
    tmp_path: Path, ca: trustme.CA, server_cert: CertPaths
) -> None:
    rotate, skew = 4.0, 2.0
    ahead = (
        "env",
        f"LD_PRELOAD={FAKETIME_LIB}",
        f"FAKETIME=+{skew:g}s",
        "FAKETIME_DONT_FAKE_MONOTONIC=1",  # trio's clock stays real: only the wall clock skews
        *GATEPROXY,
    )
    async with running_redis(tmp_path) as redis, RecordingUpstream() as up:
        paths = [_host_config(tmp_path, n, server_cert, up.address, redis.url, "4s") for n in "ab"]
        async with supervised_file(paths[0]) as a, supervised_file(paths[1], prefix=ahead) as b:
            # Inside the window where B (ahead) is already in the next slot and A is not, each
            # host resumes the other's ticket. On a loaded machine the window may close before
            # the four handshakes are done: such an attempt proves nothing and is made again.
            for _attempt in range(3):
                fa, fb = await _skew_window(a, b, rotate=rotate)
                from_a = await _get(a, ca)
                from_b = await _get(b, ca)
                on_b = await _get(b, ca, resume=from_a)  # B holds A's key as the previous slot's
                on_a = await _get(a, ca, resume=from_b)  # A holds B's key as the next one
                if (await _fleet(b))["slot"] == (await _fleet(a))["slot"] + 1:
                    break
            else:
                pytest.fail("the skew window closed before the handshakes, three times")
            assert on_b.session_reused and on_a.session_reused
            assert fb["key"] != fa["key"]


async def _skew_window(
    a: Supervised, b: Supervised, *, rotate: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Wait until B is in the slot after A's and A's boundary is still >= 1 s away."""
    with trio.fail_after(2 * rotate):
        while True:
            fa, fb = await _fleet(a), await _fleet(b)
            if fb["slot"] == fa["slot"] + 1 and time.time() % rotate <= rotate - 1:
                return fa, fb
            await trio.sleep(0.05)


async def _load(
    hosts: Sequence[Supervised], ca: trustme.CA, stop: trio.Event, tally: dict[str, int]
) -> None:
    """Requests back to back, each host resuming its own last ticket, until ``stop`` (bounded)."""
    last: dict[int, Response] = {}
    for _ in range(2000):
        if stop.is_set():
            return
        for index, host in enumerate(hosts):
            try:
                resp = await https_request(
                    host.address(),
                    ca=ca,
                    tls_version="TLSv1.3",
                    session=session_of(last[index]) if index in last else None,
                    io_timeout=5.0,
                )
            except OSError:
                tally["failed"] += 1
                continue
            tally["requests"] += 1
            tally["failed"] += resp.status != 200
            tally["reused"] += resp.session_reused
            last[index] = resp


async def test_redis_killed_under_load_nothing_fails_hosts_fall_back_then_rejoin(
    tmp_path: Path, ca: trustme.CA, server_cert: CertPaths
) -> None:
    async with running_redis(tmp_path) as redis, RecordingUpstream() as up:
        paths = [_host_config(tmp_path, n, server_cert, up.address, redis.url, "1s") for n in "ab"]
        async with supervised_file(paths[0]) as a, supervised_file(paths[1]) as b:
            assert (await _get(b, ca, resume=await _get(a, ca))).session_reused
            tally = {"requests": 0, "failed": 0, "reused": 0}
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_load, [a, b], ca, stop, tally)
                await redis.kill()
                await _until([a, b], lambda f: f["source"] == "local" and f["fallbacks"] >= 1)
                fa, fb = await _fleet(a), await _fleet(b)
                assert fa["redis_errors"] >= 1 and fb["redis_errors"] >= 1
                assert fa["store_down"] and fa["key"] != fb["key"]
                own = await _get(a, ca)
                assert (await _get(a, ca, resume=own)).session_reused  # locally, still
                assert not (await _get(b, ca, resume=own)).session_reused  # not across

                await redis.start()  # the same port, empty
                await _until([a, b], lambda f: f["source"] == "fleet" and f["rejoins"] >= 1)
                await _until([a, b], lambda f: not f["store_down"])
                stop.set()
            assert tally["failed"] == 0 and tally["requests"] >= 10, tally
            assert tally["reused"] >= tally["requests"] // 2, tally
            fa, fb = await _fleet(a), await _fleet(b)
            if fa["slot"] == fb["slot"]:  # (not one read each side of a boundary)
                assert fa["key"] == fb["key"], (fa, fb)
            assert (await _get(b, ca, resume=await _get(a, ca))).session_reused
            metrics = (await a.get("/metrics"))[1].decode()
            assert 'gateproxy_tls_fleet_fallbacks_total{listener="public"}' in metrics
