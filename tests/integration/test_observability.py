"""The access log and the admin endpoints of a running proxy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trustme
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CertPaths
from tests.helpers.clients import Request, https_exchange
from tests.helpers.proxy import address, proxy_config, running_proxy, tls_listener
from tests.helpers.upstreams import RecordingUpstream


async def _admin_get(daemon: object, path: str) -> bytes:
    host, port = daemon.admin_address  # type: ignore[attr-defined]
    data = b""
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode()
        )
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


async def test_access_log_has_one_json_line_per_request_and_none_for_health_checks(
    tmp_path: Path, ca: trustme.CA, server_cert: CertPaths
) -> None:
    log = tmp_path / "access.log"
    async with RecordingUpstream() as up:
        listener = tls_listener(
            cert=server_cert.cert, key=server_cert.key, health_checks=[{"path": "/healthz"}]
        )
        config = proxy_config(
            [listener], {"app": {"servers": [up.address]}}, access_log={"path": str(log)}
        )
        async with running_proxy(config) as daemon:
            await https_exchange(
                address(daemon),
                [
                    Request(path="/a?x=1"),
                    Request(path="/healthz"),
                    Request(method="HEAD", path="/b"),
                ],
                ca=ca,
            )
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(entry["method"], entry["path"], entry["status"]) for entry in lines] == [
        ("GET", "/a?x=1", 200),
        ("HEAD", "/b", 200),
    ]
    first = lines[0]
    assert first["client"] == "127.0.0.1"
    assert first["upstream"] == up.address
    assert first["listener"] == "public"
    assert first["bytes"] == len(b"hello from upstream\n")
    assert 0 <= first["duration_s"] < 5
    assert {"time", "duration_s"} <= set(first)


async def test_health_and_probe_requests_are_logged_only_when_sampled_to_a_relative_path(
    tmp_path: Path, ca: trustme.CA, server_cert: CertPaths
) -> None:
    async with RecordingUpstream() as up:
        listener = tls_listener(
            cert=server_cert.cert,
            key=server_cert.key,
            health_checks=[{"path": "/healthz"}],
            probe_clients=["127.0.0.1/32"],
        )
        config = proxy_config(
            [listener],
            {"app": {"servers": [up.address]}},
            access_log={"path": "logs/access.log", "health_sample_rate": 1.0},
        )
        (tmp_path / "logs").mkdir()
        async with running_proxy(config, base_dir=tmp_path) as daemon:
            await https_exchange(
                address(daemon), [Request(path="/healthz"), Request(path="/a")], ca=ca
            )
    lines = [json.loads(line) for line in (tmp_path / "logs/access.log").read_text().splitlines()]
    assert [(entry["kind"], entry["path"], entry["status"]) for entry in lines] == [
        ("health", "/healthz", 200),
        ("probe", "/a", 200),
    ]


async def test_stats_and_metrics_over_http(ca: trustme.CA, server_cert: CertPaths) -> None:
    async with RecordingUpstream() as up:
        config = proxy_config(
            [tls_listener(cert=server_cert.cert, key=server_cert.key)],
            {"app": {"servers": [up.address]}},
        )
        async with running_proxy(config) as daemon:
            await https_exchange(address(daemon), [Request(), Request(path="/2")], ca=ca)
            stats = json.loads(await _admin_get(daemon, "/stats"))
            metrics = (await _admin_get(daemon, "/metrics")).decode()
    listener = stats["listeners"]["public"]
    assert listener["connections"]["total"] == 1
    assert listener["requests"]["total"] == 2
    assert listener["tls"]["handshakes"]["full"] == 1
    assert stats["upstreams"]["app"]["servers"][0]["address"] == up.address
    assert stats["process"]["rss_bytes"] > 0
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert samples[("gateproxy_requests_total", (("listener", "public"),))] == 2
    assert samples[("gateproxy_connections_total", (("listener", "public"),))] == 1
    key = ("gateproxy_tls_handshakes_total", (("kind", "full"), ("listener", "public")))
    assert samples[key] == 1


async def test_a_burst_of_rejections_gives_one_log_line_per_client(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with RecordingUpstream() as up:
        config = proxy_config(
            [
                {
                    "name": "plain",
                    "bind": "127.0.0.1:0",
                    "limits": {"max_body_bytes": 10},
                    "routes": [{"path_prefix": "/", "upstream": "app"}],
                }
            ],
            {"app": {"servers": [up.address]}},
        )
        async with running_proxy(config) as daemon:
            host, port = daemon.addresses["plain"]
            for _ in range(5):
                async with await trio.open_tcp_stream(host, port) as stream:
                    await stream.send_all(
                        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                    )
                    with trio.fail_after(5):
                        assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 413")
            stats = daemon.stats()
    lines = [
        json.loads(line)
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("{") and '"limit_enforced"' in line
    ]
    assert stats["listeners"]["plain"]["limits"]["max_body_bytes"] == 5  # type: ignore[index]
    assert len(lines) == 1
    assert lines[0]["reason"] == "max_body_bytes" and lines[0]["client"] == "127.0.0.1"
