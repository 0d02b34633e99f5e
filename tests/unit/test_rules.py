"""The status-rule table (bus/events/rules.py): every starting status by every change a PUT or a
worker
makes, and what it leaves in processed_at, retry_count, error_message, next_attempt_at,
dispatched_at, and whether the event is sent again."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bus.events.rules import OUTCOME_COLUMNS, apply_change
from bus.events.schemas import StatusChange
from bus.storage.models import EVENT_COLUMNS, EventRow, EventStatus, SystemEvent

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(minutes=5)
GIVEN_AT = datetime(2023, 4, 1, 15, 5, tzinfo=UTC)
SENT_BEFORE = NOW - timedelta(minutes=1)

STARTS: dict[str, dict[str, Any]] = {
    "pending": {"status": EventStatus.PENDING, "retry_count": 0},
    "processed": {
        "status": EventStatus.PROCESSED,
        "retry_count": 1,
        "processed_at": EARLIER,
    },
    "failed, retry due": {
        "status": EventStatus.FAILED,
        "retry_count": 2,
        "error_message": "Boom: earlier",
        "next_attempt_at": NOW + timedelta(seconds=8),
    },
    "failed for good": {
        "status": EventStatus.FAILED,
        "retry_count": 5,
        "error_message": "Boom: earlier",
    },
}


def event(start: str) -> EventRow:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "tenant_id": uuid.uuid4(),
        "event_type": "inventory_updated",
        "source_module": "inventory",
        "target_module": "warehouse",
        "entity_type": "inventory_item",
        "entity_id": "item-1",
        "event_data": {"n": 1},
        "created_at": EARLIER,
        "processed_at": None,
        "error_message": None,
        "next_attempt_at": None,
        "dispatched_at": SENT_BEFORE,
        "request_id": None,
    }
    values.update(STARTS[start])
    return EventRow(**values)


@dataclass(frozen=True)
class Case:
    """A change, how it is applied (the PUT route passes no failures_before and no delay),
    and what every outcome column must hold after it."""

    change: StatusChange
    retry_delay: float | None
    failures_before: int | None
    processed_at: datetime | None
    retry_count: int | str  # "+0" / "+1": relative to the starting count
    error_message: str | None
    next_attempt_at: datetime | None
    dispatched_at: datetime | str | None  # "kept": the starting stamp
    resend: bool


CASES = {
    "PUT processed": Case(
        StatusChange(EventStatus.PROCESSED), None, None, NOW, "+0", None, None, "kept", False
    ),
    "PUT processed, processed_at and note given": Case(
        StatusChange(EventStatus.PROCESSED, GIVEN_AT, "done by hand"),
        None,
        None,
        GIVEN_AT,
        "+0",
        "done by hand",
        None,
        "kept",
        False,
    ),
    "PUT failed": Case(
        StatusChange(EventStatus.FAILED, error_message="Timeout"),
        None,
        None,
        None,
        "+1",
        "Timeout",
        None,
        "kept",
        False,
    ),
    "PUT pending": Case(
        StatusChange(EventStatus.PENDING), None, None, None, "+0", "kept", None, NOW, True
    ),
    "worker processed, attempt 3": Case(
        StatusChange(EventStatus.PROCESSED), None, 2, NOW, 2, None, None, "kept", False
    ),
    "worker failed, attempt 3, retry in 8 s": Case(
        StatusChange(EventStatus.FAILED, error_message="Boom: again"),
        8.0,
        2,
        None,
        3,
        "Boom: again",
        NOW + timedelta(seconds=8),
        NOW,
        False,
    ),
    "worker failed for good, attempt 5": Case(
        StatusChange(EventStatus.FAILED, error_message="Boom: last"),
        None,
        4,
        None,
        5,
        "Boom: last",
        None,
        "kept",
        False,
    ),
}


@pytest.mark.parametrize("start", list(STARTS))
@pytest.mark.parametrize("name", list(CASES))
def test_the_rule_table(start: str, name: str) -> None:
    case = CASES[name]
    row = event(start)
    before = {c: getattr(row, c) for c in OUTCOME_COLUMNS}

    resend = apply_change(
        row, case.change, NOW, retry_delay=case.retry_delay, failures_before=case.failures_before
    )

    assert row.status == case.change.status
    assert row.processed_at == case.processed_at
    if isinstance(case.retry_count, str):
        assert row.retry_count == before["retry_count"] + int(case.retry_count)
    else:
        assert row.retry_count == case.retry_count
    expected_error = before["error_message"] if case.error_message == "kept" else case.error_message
    assert row.error_message == expected_error
    assert row.next_attempt_at == case.next_attempt_at
    expected_stamp = before["dispatched_at"] if case.dispatched_at == "kept" else case.dispatched_at
    assert row.dispatched_at == expected_stamp
    assert resend is case.resend


def test_the_outcome_columns_are_every_column_a_rule_sets() -> None:
    # Given every change applied to a row whose columns all hold a sentinel
    touched: set[str] = set()
    for case in CASES.values():
        row = event("failed, retry due")
        sentinels = {name: getattr(row, name) for name in EVENT_COLUMNS}
        apply_change(
            row,
            case.change,
            NOW,
            retry_delay=case.retry_delay,
            failures_before=case.failures_before,
        )
        touched |= {n for n, v in sentinels.items() if getattr(row, n) != v}
    # Then the rules set no column that save_change would not write
    assert touched <= set(OUTCOME_COLUMNS)
    assert {"status", "retry_count", "processed_at", "next_attempt_at", "dispatched_at"} <= touched


def test_the_rows_of_the_hot_paths_have_exactly_the_tables_columns() -> None:
    assert tuple(c.key for c in SystemEvent.__table__.columns) == EVENT_COLUMNS
