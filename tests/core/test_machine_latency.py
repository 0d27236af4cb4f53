"""The latencies the machine puts in its LogRecord: head -> first upstream byte -> end."""

from __future__ import annotations

from gateproxy.core.actions import LogRecord
from tests.helpers.machine import GET, Play, config


def _record(play: Play) -> LogRecord:
    record = play.last(LogRecord)
    assert isinstance(record, LogRecord)
    return record


def test_first_byte_and_total_run_from_the_request_head() -> None:
    play = Play().at(1.0).client(b"GET /a HTTP/1.1\r\n").at(2.0).client(b"Host: app.test\r\n\r\n")
    play.at(2.5).ready()
    play.at(2.75).upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")
    play.at(3.5).upstream(b"ok")
    record = _record(play)
    assert (record.status, record.first_byte, record.duration) == (200, 0.75, 1.5)
    assert (b"host", b"app.test") in record.headers  # the request's own headers, for the log


def test_each_keep_alive_request_has_its_own_first_byte() -> None:
    play = Play().at(0.0).client(GET)
    play.at(0.25).ready()
    play.at(0.5).upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    play.at(10.0).client(GET)
    play.at(10.0).ready(reused=True)
    play.at(10.125).upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    first, second = play.of(LogRecord)
    assert (first.first_byte, first.duration) == (0.5, 0.5)
    assert (second.first_byte, second.duration) == (0.125, 0.125)


def test_a_local_answer_has_no_first_byte() -> None:
    play = Play().at(0.0).client(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 20000000\r\n\r\n")
    record = _record(play)
    assert record.status == 413 and record.first_byte == -1.0


def test_a_connect_failure_has_no_first_byte_but_a_duration() -> None:
    play = Play(config(upstreams={"app": {"servers": ["10.0.0.1:80"]}}))
    play.at(0.0).client(GET)
    play.at(0.5).connect_failed()
    record = _record(play)
    assert record.status == 502 and record.first_byte == -1.0 and record.duration == 0.5
