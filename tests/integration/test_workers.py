"""``gateproxy run`` with a supervisor and worker processes: shared keys, restarts, reload, drain.

Every test runs the real command in a subprocess (supervisor + workers), real TLS clients and a
real upstream on loopback.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.clients import client_context, https_request, split_address
from tests.helpers.proxy import tls_listener
from tests.helpers.sockets import busy_port
from tests.helpers.supervised import Supervised, supervised
from tests.helpers.tls_sessions import session_of
from tests.helpers.upstreams import RecordingUpstream, SessionApp

pytestmark = pytest.mark.slow


def _config(cert: Any, upstream: str, **top: Any) -> dict[str, Any]:
    return {
        "workers": 2,
        "shutdown_timeout": "10s",
        "listeners": [tls_listener(cert=cert.cert, key=cert.key)],
        "upstreams": {"app": {"servers": [upstream]}},
        "admin": {"bind": "127.0.0.1:0"},
        "access_log": {"path": "off"},
        **top,
    }


def _requests_by_worker(stats: dict[str, Any]) -> dict[int, int]:
    return {
        w["pid"]: w["stats"]["listeners"]["public"]["requests"]["total"] for w in stats["workers"]
    }


async def test_two_workers_resume_each_others_tls13_tickets_200_times(
    tmp_path: Path, ca: trustme.CA, server_cert: Any
) -> None:
    async with (
        RecordingUpstream() as up,
        supervised(_config(server_cert, up.address), tmp_path) as gp,
    ):
        first = await https_request(gp.address(), ca=ca, tls_version="TLSv1.3")
        assert first.status == 200 and not first.session_reused
        session = session_of(first)
        reused = 0
        for _ in range(200):
            resp = await https_request(gp.address(), ca=ca, tls_version="TLSv1.3", session=session)
            assert resp.status == 200
            reused += resp.session_reused
            session = session_of(resp)
        stats = await gp.stats()
    assert reused == 200
    served = _requests_by_worker(stats)
    assert len(served) == 2 and all(n > 0 for n in served.values()), served
    assert sum(served.values()) == 201
    resumed = [
        w["stats"]["listeners"]["public"]["tls"]["handshakes"]["resumed"] for w in stats["workers"]
    ]
    assert all(n > 0 for n in resumed) and sum(resumed) == 200, resumed
    assert stats["listeners"]["public"]["tls"]["handshakes"]["resumed"] == 200
    assert stats["process"]["workers"] == 2


async def test_a_killed_worker_is_replaced_and_service_continues(
    tmp_path: Path, ca: trustme.CA, server_cert: Any
) -> None:
    async with (
        RecordingUpstream() as up,
        supervised(_config(server_cert, up.address), tmp_path) as gp,
    ):
        before = await gp.stats()
        victim = before["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        statuses = [
            (await https_request(gp.address(), ca=ca, io_timeout=15)).status for _ in range(20)
        ]
        restarted = await gp.wait_event("worker_restarted")
        after = await gp.stats()
    assert statuses == [200] * 20
    assert restarted["old_pid"] == victim
    pids = {w["pid"] for w in after["workers"]}
    assert victim not in pids and restarted["pid"] in pids and len(pids) == 2
    assert after["supervisor"]["worker_restarts"] == 1


class KeepAlive:
    """One TLS keep-alive connection driven from a thread, request by request."""

    def __init__(self, address: str, ca: trustme.CA, *, hostname: str = "localhost") -> None:
        self.host, self.port = split_address(address)
        self.hostname = hostname
        self.ctx = client_context(ca)
        self.conn: http.client.HTTPConnection | None = None
        self.cert: bytes | None = None

    def _open(self) -> None:
        raw = socket.create_connection((self.host, self.port), timeout=10)
        tls = self.ctx.wrap_socket(raw, server_hostname=self.hostname)
        self.cert = tls.getpeercert(binary_form=True)
        self.conn = http.client.HTTPConnection(self.hostname, self.port, timeout=10)
        self.conn.sock = tls
        self.conn.auto_open = False  # a request must go on *this* connection

    def _get(self) -> tuple[int, str | None]:
        if self.conn is None:
            self._open()
        assert self.conn is not None
        self.conn.request("GET", "/")
        resp = self.conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("connection")

    async def get(self) -> tuple[int, str | None]:
        return await trio.to_thread.run_sync(self._get)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _first_der(pem_path: Path) -> bytes:
    """The DER of the first certificate in a PEM file (the leaf)."""
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(pem_path.read_text().split(end)[0] + end + "\n")


async def test_reload_keeps_open_connections_and_switches_certificates(
    tmp_path: Path, ca: trustme.CA, server_cert: Any, second_cert: Any
) -> None:
    config = _config(server_cert, "127.0.0.1:1", pid_file="gp.pid")
    async with RecordingUpstream() as up:
        config["upstreams"]["app"]["servers"] = [up.address]
        async with supervised(config, tmp_path) as gp:
            old = KeepAlive(gp.address(), ca)
            assert (await old.get())[0] == 200
            old_cert = old.cert
            config["listeners"][0]["tls"]["certificates"] = [
                {"cert": str(second_cert.cert), "key": str(second_cert.key)}
            ]
            gp.config_path.write_text(json.dumps(config))
            done = await trio.run_process(
                [sys.executable, "-m", "gateproxy", "reload", "-c", str(gp.config_path)],
                capture_stdout=True,
            )
            assert b"reload signalled" in done.stdout
            reloaded = await gp.wait_event("reloaded")
            # the connection opened before the reload still completes a request
            status, connection = await old.get()
            assert status == 200 and connection == "close"  # retiring: closed after it
            old.close()
            new = KeepAlive(gp.address(), ca, hostname="example.test")  # the new cert's name
            assert (await new.get())[0] == 200
            new.close()
            stats = await gp.stats()
    assert reloaded["generation"] == 2
    assert old_cert == _first_der(server_cert.cert)
    assert new.cert == _first_der(second_cert.cert)
    assert stats["supervisor"]["reloads"] == 1
    assert {w["generation"] for w in stats["workers"] if w["state"] == "ready"} == {2}


async def test_a_broken_reload_is_refused_and_the_old_config_keeps_serving(
    tmp_path: Path, ca: trustme.CA, server_cert: Any
) -> None:
    async with (
        RecordingUpstream() as up,
        supervised(_config(server_cert, up.address), tmp_path) as gp,
    ):
        good = gp.config_path.read_text()
        gp.config_path.write_text(
            good.replace('"workers": 2', '"workers": 2, "wrokers": 3').replace(
                str(server_cert.cert), str(tmp_path / "missing.pem")
            )
        )
        gp.signal(signal.SIGHUP)
        failed = await gp.wait_event("reload_failed")
        resp = await https_request(gp.address(), ca=ca)
        stats = await gp.stats()
    assert resp.status == 200
    errors = "\n".join(failed["errors"])
    assert "wrokers" in errors
    assert stats["supervisor"]["reload_failures"] == 1
    assert stats["supervisor"]["generation"] == 1


async def test_no_request_fails_during_reloads_under_load(
    tmp_path: Path, ca: trustme.CA, server_cert: Any
) -> None:
    async with (
        RecordingUpstream() as up,
        supervised(_config(server_cert, up.address), tmp_path) as gp,
    ):
        failures: list[BaseException] = []
        done = trio.Event()
        counts = [0, 0]

        async def fresh_connections() -> None:
            while not done.is_set():
                try:
                    assert (await https_request(gp.address(), ca=ca)).status == 200
                    counts[0] += 1
                except Exception as exc:
                    failures.append(exc)

        def keep_alive_loop() -> None:
            conn = http.client.HTTPSConnection(
                gp.address().split(":")[0],
                int(gp.address().split(":")[1]),
                context=client_context(ca, check_hostname=False),
                timeout=10,
            )
            while not done.is_set():
                try:
                    conn.request("GET", "/")
                    resp = conn.getresponse()
                    resp.read()
                    assert resp.status == 200
                    counts[1] += 1
                except Exception as exc:
                    failures.append(exc)
            conn.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fresh_connections)
            nursery.start_soon(trio.to_thread.run_sync, keep_alive_loop)
            for generation in (2, 3):
                await trio.sleep(0.5)
                gp.signal(signal.SIGHUP)
                await gp.wait_event("reloaded", where=lambda e, g=generation: e["generation"] == g)
            await trio.sleep(0.5)
            done.set()
    assert failures == []
    assert counts[0] > 10 and counts[1] > 10, counts


async def test_metrics_aggregate_workers_and_parse(
    tmp_path: Path, ca: trustme.CA, server_cert: Any
) -> None:
    async with (
        SessionApp() as app,  # a session per cookie-less request: the guard tables fill
        supervised(_config(server_cert, app.address), tmp_path) as gp,
    ):
        for _ in range(20):
            assert (await https_request(gp.address(), ca=ca, path="/users/7")).status == 200
        status, body = await gp.get("/metrics")
        stats = await gp.stats()
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    requests = families["gateproxy_requests"].samples
    assert sum(s.value for s in requests if s.name == "gateproxy_requests_total") == 20
    [workers] = families["gateproxy_process_workers"].samples
    assert workers.value == 2
    # the per-path and per-client tables are the sum over the workers, not the first worker's
    served = _requests_by_worker(stats)
    assert len(served) == 2 and all(n > 0 for n in served.values()), served
    assert stats["session_guard"]["top_paths"] == [{"path": "/users/{n}", "minted": 20}]
    assert stats["session_guard"]["top_clients"] == [{"client": "127.0.0.1", "minted": 20}]
    [path] = families["gateproxy_session_guard_top_path_minted"].samples
    assert (path.labels, path.value) == ({"path": "/users/{n}"}, 20)


async def test_sigusr1_reopens_the_access_log_in_every_worker(
    tmp_path: Path, ca: trustme.CA, server_cert: Any
) -> None:
    log = tmp_path / "access.log"
    config = _config(server_cert, "", access_log={"path": str(log)})
    async with RecordingUpstream() as up:
        config["upstreams"]["app"]["servers"] = [up.address]
        async with supervised(config, tmp_path) as gp:
            assert (await https_request(gp.address(), ca=ca)).status == 200
            log.rename(tmp_path / "access.log.1")
            gp.signal(signal.SIGUSR1)
            for _ in range(2):
                await gp.wait_event("logs_reopened")
            for _ in range(4):
                assert (await https_request(gp.address(), ca=ca)).status == 200
    assert len((tmp_path / "access.log.1").read_text().splitlines()) == 1
    assert len(log.read_text().splitlines()) == 4


async def test_sigterm_waits_for_a_slow_request_then_exits_0(
    tmp_path: Path, ca: trustme.CA, server_cert: Any
) -> None:
    hold = trio.Event()
    async with RecordingUpstream(hold=hold) as up:
        async with supervised(_config(server_cert, up.address), tmp_path) as gp:
            answers: list[int] = []

            async def slow() -> None:
                answers.append((await https_request(gp.address(), ca=ca)).status)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow)
                await up.wait_for(lambda: len(up.requests) == 1)
                gp.signal(signal.SIGTERM)
                await gp.wait_event("draining", where=lambda e: "worker" not in e)
                with pytest.raises(OSError):
                    await trio.open_tcp_stream(*split_address(gp.address()))
                hold.set()
            with trio.fail_after(10):
                await gp.process.wait()
    assert answers == [200]
    assert gp.process.returncode == 0


def _lame_duck_config(cert: Any, upstream: str, delay: str) -> dict[str, Any]:
    config = _config(cert, upstream, shutdown_delay=delay)
    config["listeners"][0]["health_checks"] = [{"path": "/healthz", "upstream": "app"}]
    return config


async def _lame_duck_begun(gp: Supervised) -> None:
    """The supervisor's and both workers' ``lame_duck`` lines (any new connection now lands on
    a worker in the delay)."""
    seen: set[object] = set()
    while len(seen) < 3:
        seen.add((await gp.wait_event("lame_duck")).get("worker", "supervisor"))


async def test_sigterm_with_a_shutdown_delay_serves_on_answering_health_503_then_exits_0(
    tmp_path: Path, ca: trustme.CA, server_cert: Any
) -> None:
    async with RecordingUpstream() as up:
        config = _lame_duck_config(server_cert, up.address, "2s")
        async with supervised(config, tmp_path) as gp:
            assert (await https_request(gp.address(), ca=ca, path="/healthz")).status == 200
            gp.signal(signal.SIGTERM)
            await _lame_duck_begun(gp)
            health = [await https_request(gp.address(), ca=ca, path="/healthz") for _ in range(4)]
            normal = await https_request(gp.address(), ca=ca)
            await gp.wait_event("draining", where=lambda e: "worker" not in e)
            with pytest.raises(OSError):
                await trio.open_tcp_stream(*split_address(gp.address()))
            with trio.fail_after(10):
                await gp.process.wait()
    assert [r.status for r in health] == [503] * 4
    assert (normal.status, normal.header("connection")) == (200, "close")
    assert gp.process.returncode == 0


async def test_a_second_sigterm_ends_the_shutdown_delay(
    tmp_path: Path, ca: trustme.CA, server_cert: Any
) -> None:
    async with RecordingUpstream() as up:
        config = _lame_duck_config(server_cert, up.address, "1h")
        async with supervised(config, tmp_path) as gp:
            gp.signal(signal.SIGTERM)
            await _lame_duck_begun(gp)
            gp.signal(signal.SIGTERM)
            await gp.wait_event("draining", where=lambda e: "worker" not in e, within=10)
            with trio.fail_after(10):
                await gp.process.wait()
    assert gp.process.returncode == 0


async def test_a_reload_onto_a_busy_admin_port_is_refused_and_the_old_admin_stays(
    tmp_path: Path, ca: trustme.CA, server_cert: Any
) -> None:
    async with (
        RecordingUpstream() as up,
        supervised(_config(server_cert, up.address, workers=1), tmp_path) as gp,
    ):
        with busy_port() as taken:
            config = json.loads(gp.config_path.read_text())
            config["admin"]["bind"] = f"127.0.0.1:{taken}"
            gp.config_path.write_text(json.dumps(config))
            gp.signal(signal.SIGHUP)
            failed = await gp.wait_event("reload_failed")
        resp = await https_request(gp.address(), ca=ca)
        stats = await gp.stats()  # on the old admin address
    assert failed["errors"] == [
        f"admin.bind: cannot listen on 127.0.0.1:{taken}: [Errno 98] Address already in use"
    ]
    assert resp.status == 200
    assert stats["supervisor"]["generation"] == 1
