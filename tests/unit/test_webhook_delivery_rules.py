"""The webhook delivery rules without a database: retry schedule, and what an attempt's answers
make of an event (bus.webhooks.delivery.judge)."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from bus.delivery.attempts import Attempt
from bus.settings import Settings, parse_schedule
from bus.storage.endpoint_store import EndpointRow
from bus.storage.models import EventRow, EventStatus
from bus.webhooks.delivery import WAITING_MESSAGE, Plan, Schedule, judge, order_types

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
SETTINGS = Settings(webhook_waiting_recheck_seconds=60.0)


@dataclass(frozen=True)
class Answer:
    status: int | None
    error: str | None = None
    retry_after: float | None = None

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def gone(self) -> bool:
        return self.status == 410


def _event(retry_count: int = 0) -> EventRow:
    return EventRow(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        event_type="t",
        source_module="s",
        target_module="m",
        entity_type="e",
        entity_id="1",
        event_data={},
        status=EventStatus.PENDING,
        retry_count=retry_count,
        created_at=NOW,
        processed_at=None,
        error_message=None,
        dispatched_at=None,
        next_attempt_at=None,
        request_id=None,
    )


def _endpoint(enabled: bool = True, ordered: bool = False) -> EndpointRow:
    return EndpointRow(
        uuid.uuid4(),
        uuid.uuid4(),
        "m",
        "https://x.example/",
        None,
        "seed",
        enabled,
        ordered,
        (),
        None,
        NOW,
        NOW,
    )


def _plan(send: int = 1, waiting: int = 0, retry_count: int = 0) -> Plan:
    event = _event(retry_count)
    return Plan(
        Attempt(event, retry_count + 1),
        [_endpoint() for _ in range(send)],
        [_endpoint(enabled=False) for _ in range(waiting)],
        ordered=False,
    )


SCHEDULE = Schedule((5.0, 300.0, 1800.0))


def test_the_schedule_is_svix_like_and_ends() -> None:
    rng = random.Random(1)
    assert 4.5 <= (SCHEDULE.delay(1, rng=rng) or 0) <= 5.0
    assert 270.0 <= (SCHEDULE.delay(2, rng=rng) or 0) <= 300.0
    assert SCHEDULE.delay(4) is None  # three retries: four attempts
    assert SCHEDULE.max_attempts == 4
    assert Schedule.from_settings(Settings()).delays == (5, 300, 1800, 7200, 18000, 36000, 36000)


def test_retry_after_lengthens_never_shortens_and_is_capped() -> None:
    assert SCHEDULE.delay(1, retry_after=60.0) == 60.0
    assert (SCHEDULE.delay(2, retry_after=1.0) or 0) >= 270.0
    assert SCHEDULE.delay(1, retry_after=10.0**9) == 86400.0


@pytest.mark.parametrize("text", ["x", "0", "-1", "nan", "inf", "1,,x"])
def test_a_bad_schedule_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_schedule(text)


def test_every_2xx_processes_the_event() -> None:
    plan = _plan(send=2)
    answers = {e.id: Answer(200) for e in plan.send}
    verdict = judge(plan, answers, SCHEDULE, SETTINGS, NOW, NOW)
    assert verdict.change.change.status is EventStatus.PROCESSED
    assert verdict.error is None and verdict.healthy == {e.id for e in plan.send}
    assert [r.status for r in verdict.rows] == ["acknowledged", "acknowledged"]


def test_one_failure_fails_it_with_each_endpoint_named_and_retry_after() -> None:
    plan = _plan(send=2)
    ok, bad = plan.send
    answers = {ok.id: Answer(204), bad.id: Answer(429, "HTTP 429: slow down", 120.0)}
    verdict = judge(plan, answers, SCHEDULE, SETTINGS, NOW, NOW)
    assert verdict.change.change.status is EventStatus.FAILED
    assert verdict.error == f"endpoint {bad.id}: HTTP 429: slow down"
    assert verdict.delay == 120.0
    assert verdict.failing == {bad.id} and verdict.healthy == {ok.id}
    assert {r.endpoint_id: r.status for r in verdict.rows} == {
        ok.id: "acknowledged",
        bad.id: "failed",
    }


def test_a_410_marks_the_endpoint_gone() -> None:
    plan = _plan()
    (endpoint,) = plan.send
    verdict = judge(plan, {endpoint.id: Answer(410, "HTTP 410")}, SCHEDULE, SETTINGS, NOW, NOW)
    assert verdict.gone == {endpoint.id}


def test_the_last_attempt_fails_for_good() -> None:
    plan = _plan(retry_count=3)
    (endpoint,) = plan.send
    verdict = judge(plan, {endpoint.id: Answer(500, "HTTP 500")}, SCHEDULE, SETTINGS, NOW, NOW)
    assert verdict.delay is None and verdict.hold


def test_a_disabled_endpoint_makes_the_event_wait_without_spending_an_attempt() -> None:
    plan = _plan(send=0, waiting=1, retry_count=2)
    verdict = judge(plan, {}, SCHEDULE, SETTINGS, NOW, NOW)
    assert verdict.waiting and verdict.error == WAITING_MESSAGE and not verdict.hold
    assert verdict.delay == 60.0
    assert verdict.change.failures_before == 1  # + 1 for the failed status: 2, unchanged
    assert verdict.change.entry is None  # no attempt in the history
    assert [r.status for r in verdict.rows] == ["waiting"]


def test_a_handler_failure_beside_endpoints_fails_the_event() -> None:
    plan = _plan()
    (endpoint,) = plan.send
    verdict = judge(
        plan,
        {endpoint.id: Answer(200)},
        SCHEDULE,
        SETTINGS,
        NOW,
        NOW,
        handler_error=("ValueError: no", 2.0),
    )
    assert verdict.error == "ValueError: no" and verdict.delay == 2.0
    assert verdict.rows[0].status == "acknowledged"  # never sent again on the retry


def test_order_types_of_ordered_endpoints() -> None:
    assert order_types([["b", "a"], ["a"]]) == (("a", "b"), False)
    assert order_types([["a"], None]) == (("a",), True)
    assert order_types([]) == ((), False)
