"""The redis-server helper: it starts, answers, survives a kill and comes back on its port."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.redis_server import running_redis


@pytest.mark.trio
async def test_redis_restarts_on_the_same_port_without_its_data(tmp_path: Path) -> None:
    async with running_redis(tmp_path) as redis:
        assert redis.command("SET", "gateproxy:probe", "1") == b"+OK\r\n"
        assert redis.keys("gateproxy:*") == ["gateproxy:probe"]
        port = redis.port
        await redis.kill()
        with pytest.raises(OSError):
            redis.command("PING")
        await redis.start()
        assert (redis.port, redis.starts) == (port, 2)
        assert redis.keys("gateproxy:*") == []  # no persistence: a crash loses the keys
