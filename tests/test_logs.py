"""The access log on real files: formats, kinds and sampling, rotation, write failures."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateproxy.core.config import AccessLogConfig
from gateproxy.logs import AccessLog, ConnectionTLS, iso_time

NOW = 1_700_000_000.25  # 2023-11-14T22:13:20.25Z


def _request(log: AccessLog, **overrides: Any) -> None:
    fields: dict[str, Any] = {
        "client": "10.0.0.7",
        "method": b"GET",
        "target": b"/a?x=1",
        "status": 200,
        "bytes_sent": 123,
        "upstream": "127.0.0.1:8080",
        "duration": 0.0123456789,
        "listener": "public",
    }
    fields.update(overrides)
    log.request(**fields)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _sequence(*values: float) -> Callable[[], float]:
    it: Iterator[float] = iter(values)
    return lambda: next(it)


def _never_called() -> float:
    raise AssertionError("random() must not be consulted")


def test_json_line_has_every_field_and_the_kind(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(AccessLogConfig(path=str(path)), clock=lambda: NOW)
    _request(log)
    log.close()
    assert _lines(path) == [
        {
            "time": 1700000000.25,
            "kind": "request",
            "listener": "public",
            "client": "10.0.0.7",
            "method": "GET",
            "path": "/a?x=1",
            "status": 200,
            "bytes": 123,
            "upstream": "127.0.0.1:8080",
            "duration_s": 0.012346,
            "time_iso": "2023-11-14T22:13:20.250Z",
            "host": "",
            "user_agent": "",
            "sni": None,
            "tls_version": None,
            "cipher": None,
            "tls_resumed": None,
        }
    ]
    assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0  # not world-readable


def test_combined_format_is_nginx_combined(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(AccessLogConfig(path=str(path), format="combined"), clock=lambda: NOW)
    _request(log, user_agent=b"curl/8.5.0")
    _request(log, target=b'/q"x\\\x01', referer=b"https://ex.test/", status=404, bytes_sent=0)
    log.close()
    stamp = "10.0.0.7 - - [14/Nov/2023:22:13:20 +0000]"
    assert path.read_text().splitlines() == [
        f'{stamp} "GET /a?x=1 HTTP/1.1" 200 123 "-" "curl/8.5.0"',
        f'{stamp} "GET /q\\x22x\\x5C\\x01 HTTP/1.1" 404 0 "https://ex.test/" "-"',
    ]
    # the usual combined-format regex (GoAccess, fail2ban...) reads every line
    combined = re.compile(r'^\S+ \S+ \S+ \[[^]]+\] "[^"]*" \d{3} \d+ "[^"]*" "[^"]*"$')
    assert all(combined.match(line) for line in path.read_text().splitlines())


def test_json_line_names_host_user_agent_and_the_connections_tls(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(AccessLogConfig(path=str(path)), clock=lambda: NOW)
    headers = [(b"host", b"app.example"), (b"user-agent", b"curl/8.5.0"), (b"accept", b"*/*")]
    tls = ConnectionTLS(version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", resumed=True, sni="a")
    _request(log, headers=headers, tls=tls)
    log.close()
    [line] = _lines(path)
    assert {k: line[k] for k in ("host", "user_agent", "sni", "tls_version", "cipher")} == {
        "host": "app.example",
        "user_agent": "curl/8.5.0",
        "sni": "a",
        "tls_version": "TLSv1.3",
        "cipher": "TLS_AES_128_GCM_SHA256",
    }
    assert line["tls_resumed"] is True


def test_combined_format_takes_referer_and_user_agent_from_the_headers(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(AccessLogConfig(path=str(path), format="combined"), clock=lambda: NOW)
    _request(log, headers=[(b"referer", b"https://r.test/"), (b"user-agent", b"ua/1")])
    log.close()
    assert path.read_text().endswith(' 200 123 "https://r.test/" "ua/1"\n')


@pytest.mark.parametrize(
    ("now", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (NOW, "2023-11-14T22:13:20.250Z"),
        (1_700_000_000.9996, "2023-11-14T22:13:21.000Z"),  # rounding carries into the second
    ],
)
def test_iso_time_is_utc_with_milliseconds(now: float, text: str) -> None:
    assert iso_time(now) == text


@pytest.mark.parametrize("kind", ["health", "probe"])
def test_health_and_probe_lines_are_not_logged_by_default(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(AccessLogConfig(path=str(path)), random=_never_called)
    _request(log, kind=kind)
    _request(log, kind="request", target=b"/real")
    log.close()
    assert [(e["kind"], e["path"]) for e in _lines(path)] == [("request", "/real")]


def test_health_and_probe_lines_are_sampled_with_the_injected_random(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    config = AccessLogConfig(path=str(path), health_sample_rate=0.25)
    log = AccessLog(config, random=_sequence(0.1, 0.25, 0.9, 0.2499))
    _request(log, kind="health", target=b"/healthz")  # 0.1 < 0.25: logged
    _request(log, kind="probe", target=b"/p1")  # 0.25: not below the rate
    _request(log, kind="request", target=b"/r")  # requests never consult random
    _request(log, kind="health", target=b"/healthz")  # 0.9: dropped
    _request(log, kind="probe", target=b"/p2")  # 0.2499: logged
    log.close()
    assert [(e["kind"], e["path"]) for e in _lines(path)] == [
        ("health", "/healthz"),
        ("request", "/r"),
        ("probe", "/p2"),
    ]


def test_sample_rate_one_logs_every_health_line(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(AccessLogConfig(path=str(path), health_sample_rate=1.0))  # real random
    for _ in range(50):
        _request(log, kind="health")
    log.close()
    assert len(_lines(path)) == 50


def test_unknown_kind_is_a_programming_error(tmp_path: Path) -> None:
    log = AccessLog(AccessLogConfig(path=str(tmp_path / "a.log")))
    with pytest.raises(ValueError, match="'healthz'"):
        _request(log, kind="healthz")
    log.close()


def test_rotation_by_rename_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(AccessLogConfig(path=str(path)))
    _request(log, target=b"/before")
    path.rename(tmp_path / "access.log.1")
    _request(log, target=b"/between")  # still the renamed file: nothing reopened yet
    assert log.reopen() is True
    _request(log, target=b"/after")
    log.close()
    assert [e["path"] for e in _lines(tmp_path / "access.log.1")] == ["/before", "/between"]
    assert [e["path"] for e in _lines(path)] == ["/after"]


def test_failed_reopen_keeps_the_old_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    log = AccessLog(AccessLogConfig(path=str(folder / "access.log")))
    folder.rename(tmp_path / "moved")  # the configured folder is gone: reopen cannot create
    assert log.reopen() is False
    _request(log, target=b"/kept")
    log.close()
    assert [e["path"] for e in _lines(tmp_path / "moved" / "access.log")] == ["/kept"]
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [e["event"] for e in events] == ["access_log_reopen_failed"]


def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text('{"old":1}\n')
    log = AccessLog(AccessLogConfig(path=str(path)))
    _request(log)
    log.close()
    assert [sorted(e)[0] for e in _lines(path)] == ["old", "bytes"]


def test_stdout_path_writes_to_stdout_and_is_never_closed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = AccessLog(AccessLogConfig(path="-"))
    _request(log, target=b"/one")
    assert log.reopen() is True
    _request(log, target=b"/two")
    log.close()
    _request(log, target=b"/after-close")
    out = capsys.readouterr().out
    assert [json.loads(line)["path"] for line in out.splitlines()] == ["/one", "/two"]
    assert not sys.stdout.closed
    print("stdout still works")
    assert capsys.readouterr().out == "stdout still works\n"


def test_off_writes_nothing_anywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    log = AccessLog(AccessLogConfig(path="off"), random=_never_called)
    _request(log)
    _request(log, kind="health")
    assert log.reopen() is True
    log.close()
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr() == ("", "")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_drops_the_line_counts_it_and_never_raises(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = AccessLog(AccessLogConfig(path="/dev/full"))
    for _ in range(3):
        _request(log)  # ENOSPC on every write
    assert log.write_errors == 3
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [e["event"] for e in events] == ["access_log_write_failed"]  # once per run of failures
    assert "No space left" in events[0]["error"]
    log.close()


def test_broken_stdout_pipe_drops_lines_and_a_good_write_ends_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    broken = open(write_end, "w", buffering=1)  # noqa: SIM115
    log = AccessLog(AccessLogConfig(path="-"))
    monkeypatch.setattr("sys.stdout", broken)
    _request(log)  # EPIPE
    assert log.write_errors == 1
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr("sys.stdout", closed)
    _request(log)  # ValueError: I/O operation on a closed file
    assert log.write_errors == 2
    good = io.StringIO()
    monkeypatch.setattr("sys.stdout", good)
    _request(log)
    monkeypatch.setattr("sys.stdout", closed)
    _request(log)
    monkeypatch.undo()
    assert log.write_errors == 3
    assert json.loads(good.getvalue())["status"] == 200
    events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert events == ["access_log_write_failed", "access_log_write_failed"]  # two runs
    with contextlib.suppress(BrokenPipeError):  # its buffer still holds the dropped line
        broken.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_bad_descriptor_never_raises(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(AccessLogConfig(path=str(path)))
    os.close(_descriptor_of(path))  # another part of the process closed it by mistake: EBADF
    _request(log)
    assert log.write_errors == 1
    log.close()
    assert path.read_text() == ""


def _descriptor_of(path: Path) -> int:
    """The descriptor this process holds open on ``path`` (found through /proc, not our code)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(path):
                return int(name)
        except OSError:
            continue
    raise AssertionError(f"no descriptor open on {path}")
