"""Admission, connection budgets and the rejection log."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateproxy.core.config import LimitsConfig
from gateproxy.core.limits import (
    LIFECYCLE_LIMITS,
    Admission,
    ConnectionBudget,
    Rejected,
    RejectionLog,
    StormDetector,
    StormReport,
)


def test_admission_caps_overall_and_per_client() -> None:
    admission = Admission(max_connections=3, max_per_client=2)
    assert not isinstance(admission.admit("a"), Rejected)
    assert not isinstance(admission.admit("a"), Rejected)
    assert admission.admit("a") == Rejected("max_connections_per_client")
    assert not isinstance(admission.admit("b"), Rejected)
    assert admission.admit("c") == Rejected("max_connections")
    admission.release("a")
    assert not isinstance(admission.admit("c"), Rejected)
    assert admission.admit("d", max_per_client=0) == Rejected("max_connections")
    assert (admission.open, admission.held_by("a"), admission.clients) == (3, 1, 3)


def test_budget_closes_on_count_and_age() -> None:
    budget = ConnectionBudget(
        limits=LimitsConfig(max_requests_per_connection=2, max_connection_age=60), opened_at=0
    )
    budget.start_request()
    assert budget.close_reason(now=1) is None
    assert budget.close_reason(now=60) == "max_connection_age"
    budget.start_request()
    assert budget.close_reason(now=1) == "max_requests_per_connection"
    unlimited = ConnectionBudget(
        limits=LimitsConfig(max_requests_per_connection=0, max_connection_age=0), opened_at=0
    )
    for _ in range(5000):
        unlimited.start_request()
    assert unlimited.close_reason(now=10**9) is None


def test_rejection_log_says_once_per_client_and_interval() -> None:
    log = RejectionLog(interval=10)
    assert log.note("a", "max_body_bytes", now=0) == 0
    assert [log.note("a", "max_body_bytes", now=t) for t in (1, 2, 9.9)] == [None] * 3
    assert log.note("b", "max_body_bytes", now=3) == 0  # another client is logged at once
    assert log.note("a", "max_headers", now=3) == 0  # another reason too
    assert log.note("a", "max_body_bytes", now=10) == 3  # next line reports the suppressed ones
    assert log.note("a", "keepalive_timeout", now=11) is None  # lifecycle limits never log


@given(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["x", "y"])), max_size=300))
def test_rejection_log_table_is_bounded(events: list[tuple[int, str]]) -> None:
    log = RejectionLog(interval=5, max_keys=50)
    for i, (client, reason) in enumerate(events):
        log.note(str(client), reason, now=float(i))
        assert len(log) <= 50


def test_storm_is_reported_once_when_the_threshold_is_crossed() -> None:
    storms = StormDetector(threshold=5, window=10)
    reasons = ["max_headers", "max_body_bytes", "max_headers", "max_connections", "max_headers"]
    results = [storms.note(r, now=1.0 + i) for i, r in enumerate(reasons)]
    assert results[:4] == [None] * 4
    assert results[4] == StormReport(
        count=5,
        window=10,
        started_at=1.0,
        by_reason={"max_headers": 3, "max_body_bytes": 1, "max_connections": 1},
    )
    assert list(results[4].by_reason) == ["max_headers", "max_body_bytes", "max_connections"]
    # quiet for the rest of the window, however many more come
    assert [storms.note("max_headers", now=5.0 + i / 100) for i in range(500)] == [None] * 500
    assert storms.note("max_headers", now=14.99) is None


def test_a_storm_that_goes_on_is_reported_once_per_window() -> None:
    storms = StormDetector(threshold=10, window=10)
    reports = [
        (t / 10, report)
        for t in range(600)  # 10 enforcements a second for 60 s
        if (report := storms.note("max_connections_per_client", now=t / 10)) is not None
    ]
    assert [when for when, _ in reports] == [0.9, 10.9, 20.9, 30.9, 40.9, 50.9]
    assert all(
        r.count == 10 and r.by_reason == {"max_connections_per_client": 10} for _, r in reports
    )


def test_below_the_threshold_rate_is_never_a_storm() -> None:
    storms = StormDetector(threshold=10, window=10)
    # 8 per window, evenly spread, for a long time; then exactly 10 within 10 s is not enough
    assert all(storms.note("max_headers", now=i * 1.25) is None for i in range(1000))
    assert all(storms.note("max_headers", now=2000.0 + i * 10 / 9) is None for i in range(10))


def test_a_storm_straddling_a_window_boundary_is_seen() -> None:
    storms = StormDetector(threshold=10, window=10)
    for i in range(6):  # late in one 10-second stretch...
        assert storms.note("max_headers", now=8.0 + i * 0.1) is None
    for i in range(3):  # ...and early in the next
        assert storms.note("max_headers", now=10.1 + i * 0.1) is None
    report = storms.note("max_headers", now=10.5)
    assert report is not None
    assert (report.count, report.started_at) == (10, 8.0)


def test_lifecycle_limits_are_not_counted_as_storms() -> None:
    storms = StormDetector(threshold=3, window=10)
    for i, reason in enumerate(sorted(LIFECYCLE_LIMITS) * 10):
        assert storms.note(reason, now=i * 0.01) is None
    assert len(storms) == 0
    assert LIFECYCLE_LIMITS == RejectionLog.QUIET
    assert storms.note("max_headers", now=1) is None
    assert storms.note("max_headers", now=1) is None
    assert storms.note("max_headers", now=1) is not None


def test_storm_detector_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="threshold"):
        StormDetector(threshold=0)
    with pytest.raises(ValueError, match="window"):
        StormDetector(window=0)
    assert (StormDetector().threshold, StormDetector().window) == (100, 10.0)


@given(
    st.lists(
        st.tuples(st.floats(0, 5, allow_nan=False), st.sampled_from(["a", "b", "c"])),
        max_size=400,
    )
)
def test_storm_detector_memory_is_bounded_and_reports_are_spaced(
    events: list[tuple[float, str]],
) -> None:
    storms = StormDetector(threshold=20, window=3.0)
    now = 0.0
    last_report: float | None = None
    for gap, reason in events:
        now += gap
        report = storms.note(reason, now=now)
        assert len(storms) <= 20
        if report is not None:
            assert last_report is None or now - last_report >= 3.0
            assert report.count == sum(report.by_reason.values()) == 20
            assert now - report.started_at < 3.0
            last_report = now
