"""Starting the TLS engine: a broken self-test stops startup with the named error and one clear
line; the explicit degraded mode (``tls_engine: stdlib_only``) runs and says so in ``/stats``;
ticket key files are checked at startup and by ``gateproxy check``, naming the key path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from gateproxy.cli import main as gateproxy_main
from gateproxy.core.config import load_config_data
from gateproxy.daemon import Daemon
from gateproxy.errors import ConfigError, TLSEngineError
from gateproxy.tls import libssl as L
from tests.conftest import CertPaths
from tests.helpers.clients import curl, https_request
from tests.helpers.proxy import address, proxy_config, running_proxy, tls_listener
from tests.helpers.tls_sessions import session_of
from tests.helpers.upstreams import RecordingUpstream


def _config(
    server_cert: CertPaths, *, tickets: dict[str, Any] | None = None, **top: Any
) -> dict[str, Any]:
    tls = {"tickets": tickets} if tickets is not None else {}
    listener = tls_listener(cert=server_cert.cert, key=server_cert.key, tls=tls)
    return proxy_config([listener], {"app": {"servers": ["127.0.0.1:9"]}}, **top)


def test_broken_self_test_stops_the_daemon_with_the_named_step(
    server_cert: CertPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(L, "CTX_OFFSET", 8)  # a CPython whose PySSLContext layout changed
    config = load_config_data(_config(server_cert), source="<test>")
    with pytest.raises(TLSEngineError) as info:
        Daemon(config, base_dir=Path("."))
    assert info.value.step == "pointers"
    assert "stdlib_only" in str(info.value) or "offset" in str(info.value)


async def test_gateproxy_run_exits_non_zero_with_one_clear_line(
    server_cert: CertPaths, tmp_path: Path
) -> None:
    config = tmp_path / "gp.yaml"
    config.write_text(json.dumps(_config(server_cert)))
    program = (
        "import sys; import gateproxy.tls.libssl as L; L.CTX_OFFSET = 8; "
        "from gateproxy.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    with trio.fail_after(20):
        done = await trio.run_process(
            [sys.executable, "-c", program, "run", "-c", str(config)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("gateproxy: TLS engine self-test failed at step 'pointers': ")


@pytest.mark.parametrize("engine", ["full", "stdlib_only"])
async def test_stats_say_which_tls_engine_runs(
    ca: trustme.CA,
    server_cert: CertPaths,
    monkeypatch: pytest.MonkeyPatch,
    engine: str,
) -> None:
    if engine == "stdlib_only":
        # Degraded mode touches no ctypes: it even runs where the engine could not start.
        monkeypatch.setattr(L, "CTX_OFFSET", 8)
    async with RecordingUpstream() as up:
        config = _config(server_cert, tls_engine=engine)
        config["upstreams"]["app"]["servers"] = [up.address]
        async with running_proxy(config) as daemon:
            with trio.fail_after(10):
                first = await https_request(address(daemon), ca=ca, tls_version="TLSv1.3")
                second = await https_request(
                    address(daemon), ca=ca, tls_version="TLSv1.3", session=session_of(first)
                )
                assert daemon.admin_address is not None
                host, port = daemon.admin_address
                answer = await curl(["-sS", f"http://{host}:{port}/stats"])
    assert answer.returncode == 0, answer.stderr
    tls = json.loads(answer.stdout)["listeners"]["public"]["tls"]
    assert tls["engine"] == engine
    assert first.status == second.status == 200
    assert second.session_reused  # stdlib tickets still resume in degraded mode
    if engine == "stdlib_only":
        assert tls["tickets"]["keys"] == []  # no ring, no rotation: stats do not pretend
        assert tls["session_cache"]["max_entries"] == 20480  # OpenSSL's own default, no cap
    else:
        assert [k["role"] for k in tls["tickets"]["keys"]] == ["encrypt"]
        assert tls["tickets"]["issued"] >= 1


@pytest.mark.parametrize(
    ("files", "content", "message"),
    [
        (["missing.key"], None, "cannot read ticket key file"),
        (["bad.key"], b"x" * 79, "exactly 48 or 80 bytes, got 79"),
    ],
)
async def test_bad_key_files_stop_startup_naming_the_key_path(
    server_cert: CertPaths, tmp_path: Path, files: list[str], content: bytes | None, message: str
) -> None:
    good = tmp_path / "good.key"
    assert gateproxy_main(["keys", "new", "--format", "nginx", "--out", str(good)]) == 0
    if content is not None:
        (tmp_path / files[0]).write_bytes(content)
    config = _config(server_cert, tickets={"key_files": ["good.key", *files]})
    daemon = Daemon(load_config_data(config, source="<test>"), base_dir=tmp_path)
    with pytest.raises(ConfigError) as info:
        await daemon.serve(handle_signals=False)  # builds the listeners first: fails at once
    [problem] = info.value.problems
    assert problem.path == "listeners[0].tls.tickets.key_files[1]"
    assert message in problem.message


def test_check_reports_key_file_problems_with_their_key_path(
    server_cert: CertPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "short.key").write_bytes(b"tooshort")
    (tmp_path / "one.keys").write_text("bm90IGEga2V5\n")
    listener = tls_listener(
        cert=server_cert.cert,
        key=server_cert.key,
        tls={"tickets": {"key_files": ["short.key", "nope.key"]}},
    )
    second = tls_listener(
        cert=server_cert.cert,
        key=server_cert.key,
        name="second",
        tls={"tickets": {"key_files": ["one.keys"], "key_format": "haproxy"}},
    )
    config = tmp_path / "gp.yaml"
    config.write_text(
        json.dumps(proxy_config([listener, second], {"app": {"servers": ["127.0.0.1:9"]}}))
    )
    assert gateproxy_main(["check", "-c", str(config)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert any(
        line.startswith(f"{config}: listeners[0].tls.tickets.key_files[0]: ") and "got 8" in line
        for line in err
    ), err
    assert any(
        line.startswith(f"{config}: listeners[0].tls.tickets.key_files[1]: cannot read")
        for line in err
    ), err
    assert any(
        line.startswith(f"{config}: listeners[1].tls.tickets.key_files[0]: ") for line in err
    ), err

    # with good files the same config passes
    for name, fmt in (("short.key", "nginx"), ("nope.key", "nginx"), ("one.keys", "haproxy")):
        assert gateproxy_main(["keys", "new", "--format", fmt, "--out", str(tmp_path / name)]) == 0
    assert gateproxy_main(["check", "-c", str(config)]) == 0
