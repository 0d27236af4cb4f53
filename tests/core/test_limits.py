"""Admission, connection budgets and the rejection log."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateproxy.core.config import LimitsConfig
from gateproxy.core.limits import Admission, ConnectionBudget, Rejected, RejectionLog


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
