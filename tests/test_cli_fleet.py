"""``gateproxy fleet status`` through the installed console script, against a running
``gateproxy run`` and a real redis-server: what the host sees, with Redis up and down."""

from __future__ import annotations

import json
import re
from pathlib import Path

import trio

from tests.conftest import CertPaths
from tests.helpers.console import gateproxy
from tests.helpers.fleet import fleet_config_file
from tests.helpers.redis_server import running_redis
from tests.helpers.sockets import free_port
from tests.helpers.supervised import Supervised, supervised_file
from tests.helpers.upstreams import RecordingUpstream


async def _status(proxy: Supervised, *extra: str) -> tuple[int, str]:
    host, port = proxy.admin
    args = ("fleet", "status", "-c", str(proxy.config_path), "--admin", f"{host}:{port}", *extra)
    done = await trio.to_thread.run_sync(lambda: gateproxy(*args))
    assert not done.stderr, done.stderr
    return done.returncode, done.stdout


async def test_fleet_status_shows_the_fleet_key_then_the_local_fallback(
    tmp_path: Path, server_cert: CertPaths
) -> None:
    async with running_redis(tmp_path) as redis, RecordingUpstream() as up:
        path = fleet_config_file(
            tmp_path, "a", cert=server_cert, upstream=up.address, redis_url=redis.url, rotate="1s"
        )
        async with supervised_file(path) as proxy:
            status, out = await _status(proxy)
            assert status == 0, out
            assert out.splitlines()[0] == f"redis: {redis.url}"
            assert "listener public: source fleet, slot " in out
            assert re.search(
                r"^  redis reachable at the last round; fetched 0, created \d+, ", out, re.M
            )
            status, out = await _status(proxy, "--json")
            branch = json.loads(out)["public"]
            assert (status, branch["source"], branch["fallbacks"]) == (0, "fleet", 0)

            await redis.kill()
            with trio.fail_after(10):  # the fallback comes within 2 slots
                while True:
                    status, out = await _status(proxy)
                    if status != 0:
                        break
                    await trio.sleep(0.1)
            assert status == 3 and "listener public: source local" in out, out
            assert re.search(r"^  redis down; .*, fallbacks [1-9]\d*, rejoins 0$", out, re.M), out
            assert "last error: ConnectionError" in out


def test_fleet_status_without_a_running_gateproxy_says_so(tmp_path: Path) -> None:
    path = tmp_path / "gateproxy.yaml"
    path.write_text((Path(__file__).parents[1] / "config" / "minimal.yaml").read_text())
    admin = f"127.0.0.1:{free_port()}"
    done = gateproxy("fleet", "status", "-c", str(path), "--admin", admin)
    assert done.returncode == 1
    assert done.stderr.startswith(f"gateproxy: cannot reach the admin listener at {admin}: ")
    assert "is gateproxy running with this config?" in done.stderr
