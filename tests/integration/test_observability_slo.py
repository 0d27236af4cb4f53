"""SLO metrics and access-log fields from a real ``gateproxy run`` with two workers: latency
histograms, bytes and handshakes by version in ``/metrics`` (valid for prometheus_client's
parser, merged over the workers), and the TLS fields of the access log, with a resumed
connection from the stdlib client and a request from curl."""

from __future__ import annotations

import json
import ssl
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import trustme
from prometheus_client.parser import text_string_to_metric_families

from gateproxy import __version__
from tests.conftest import CertPaths
from tests.helpers.clients import Request, curl, https_exchange, https_request
from tests.helpers.proxy import proxy_config, tls_listener
from tests.helpers.supervised import supervised
from tests.helpers.upstreams import RecordingUpstream


def _families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _value(family: Any, sample: str, **labels: str) -> float:
    found = [s.value for s in family.samples if s.name == sample and s.labels == labels]
    assert len(found) == 1, (sample, labels, family.samples)
    return float(found[0])


async def test_two_workers_serve_valid_merged_histograms_and_tls_log_fields(
    tmp_path: Path, ca: trustme.CA, server_cert: CertPaths
) -> None:
    log = tmp_path / "access.log"
    started = time.time()
    async with RecordingUpstream() as up:
        listener = tls_listener(cert=server_cert.cert, key=server_cert.key)
        config = proxy_config(
            [listener],
            {"app": {"servers": [up.address]}},
            access_log={"path": str(log)},
            workers=2,
        )
        async with supervised(config, tmp_path) as gp:
            address = gp.address()
            first = await https_exchange(
                address, [Request(path="/a"), Request(path="/b")], ca=ca, tls_version="TLSv1.3"
            )
            session = first[-1].session
            assert isinstance(session, ssl.SSLSession)
            resumed = await https_request(
                address, path="/c", ca=ca, session=session, tls_version="TLSv1.3"
            )
            assert resumed.session_reused
            host, port = address.rsplit(":", 1)
            done = await curl(
                [
                    "-sS",
                    "--cacert",
                    str(ca_file(tmp_path, ca)),
                    "--resolve",
                    f"localhost:{port}:{host}",
                    f"https://localhost:{port}/d",
                    "-o",
                    "/dev/null",
                ]
            )
            assert done.returncode == 0, done.stderr
            stats = await gp.stats()
            status, body = await gp.get("/metrics")
    assert status == 200 and len(stats["workers"]) == 2
    families = _families(body.decode())
    requests = 4
    for name, labels in (
        ("gateproxy_request_duration_seconds", {"listener": "public"}),
        ("gateproxy_request_first_byte_seconds", {"listener": "public"}),
        ("gateproxy_upstream_request_duration_seconds", {"upstream": "app"}),
        ("gateproxy_upstream_first_byte_seconds", {"upstream": "app"}),
    ):
        family = families[name]
        assert family.type == "histogram"
        assert _value(family, name + "_count", **labels) == requests
        assert _value(family, name + "_bucket", **labels, le="+Inf") == requests
        assert 0 < _value(family, name + "_sum", **labels) < 10 * requests
        # the per-worker trees add up to the merged one, bucket by bucket
        merged = stats["listeners"]["public"]["latency"]["request_seconds"]
        per_worker = [
            w["stats"]["listeners"]["public"]["latency"]["request_seconds"]
            for w in stats["workers"]
            if "public" in w["stats"]["listeners"]
        ]
        assert merged["buckets"] == {
            le: sum(h["buckets"][le] for h in per_worker) for le in merged["buckets"]
        }
    assert (
        _value(
            families["gateproxy_bytes_received"],
            "gateproxy_bytes_received_total",
            listener="public",
        )
        > 0
    )
    assert (
        _value(
            families["gateproxy_upstream_bytes_received"],
            "gateproxy_upstream_bytes_received_total",
            upstream="app",
        )
        > 0
    )
    by_version = families["gateproxy_tls_handshakes_by_version"]
    name = "gateproxy_tls_handshakes_by_version_total"
    assert _value(by_version, name, listener="public", version="TLSv1.3", kind="resumed") == 1
    assert _value(by_version, name, listener="public", version="TLSv1.3", kind="full") == 2
    [build] = families["gateproxy_build_info"].samples
    assert build.value == 1 and build.labels["version"] == __version__
    start = _value(families["process_start_time_seconds"], "process_start_time_seconds")
    assert started - 5 <= start <= time.time()

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["path"] for line in sorted(lines, key=lambda x: x["path"])] == [
        "/a",
        "/b",
        "/c",
        "/d",
    ]
    by_path = {line["path"]: line for line in lines}
    for line in lines:
        assert (line["sni"], line["tls_version"]) == ("localhost", "TLSv1.3")
        assert line["cipher"].startswith("TLS_")
        assert line["host"] == f"localhost:{port}"
        stamp = datetime.fromisoformat(line["time_iso"].replace("Z", "+00:00"))
        assert abs(stamp.timestamp() - line["time"]) < 0.01
    assert [by_path[p]["tls_resumed"] for p in ("/a", "/b", "/c")] == [False, False, True]
    assert by_path["/d"]["user_agent"].startswith("curl/")


def ca_file(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path
