"""One write path: what ``bus.events.rules.save_change`` writes is exactly what the rules set, for
the
PUT route's changes and the worker's attempts alike, and a unit of work keeps or drops the sends
and callbacks of a savepoint with its writes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from bus.broker.dispatch import Dispatch
from bus.delivery import attempts
from bus.delivery.attempts import Attempt, Skip
from bus.delivery.retry import RetryPolicy
from bus.events.rules import OUTCOME_COLUMNS, save_change, save_changes
from bus.events.schemas import StatusChange
from bus.runtime import Runtime
from bus.storage import event_store
from bus.storage.db import transaction
from bus.storage.models import EventStatus
from bus.uow import HandlerMisuse, UnitOfWork
from tests.support.factories import event_values


class Recorder:
    """Stands in for the Dispatcher: records what a unit of work sends after its commit."""

    def __init__(self) -> None:
        self.sent: list[Dispatch] = []

    def send(self, dispatches: list[Dispatch]) -> list[uuid.UUID]:
        self.sent.extend(dispatches)
        return []


def unit(runtime: Runtime, recorder: Recorder) -> UnitOfWork:
    return UnitOfWork(runtime.sessions(), recorder)  # type: ignore[arg-type]


def stored(runtime: Runtime, event_id: uuid.UUID) -> dict[str, Any]:
    with runtime.sessions() as session:
        row = event_store.read_event(session, event_id)
        assert row is not None
        return {name: getattr(row, name) for name in OUTCOME_COLUMNS}


def insert(runtime: Runtime, **overrides: Any) -> uuid.UUID:
    values = event_values(**overrides)
    with transaction(runtime.sessions) as session:
        event_store.insert_event(session, values)
    event_id: uuid.UUID = values["id"]
    return event_id


CHANGES = [
    StatusChange(EventStatus.PROCESSED, error_message="done by hand"),
    StatusChange(EventStatus.FAILED, error_message="Timeout"),
    StatusChange(EventStatus.PENDING),
]


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: str(c.status))
def test_a_put_change_is_stored_as_the_rules_set_it(runtime: Runtime, change: StatusChange) -> None:
    event_id = insert(runtime, status=EventStatus.FAILED, retry_count=2, error_message="Boom")
    recorder = Recorder()
    with unit(runtime, recorder) as uow:
        row = event_store.lock_event(uow.session, event_id, None)
        assert row is not None
        save_change(uow, row, change)
        expected = {name: getattr(row, name) for name in OUTCOME_COLUMNS}
        uow.commit()

    assert stored(runtime, event_id) == expected
    assert [d.event_id for d in recorder.sent] == (
        [event_id] if change.status is EventStatus.PENDING else []
    )


def test_worker_outcomes_are_stored_as_the_rules_set_them(runtime: Runtime) -> None:
    policy = RetryPolicy(max_attempts=3, base_seconds=1, max_seconds=10)
    event_id = insert(runtime)
    recorder = Recorder()
    for number in (1, 2, 3):
        with unit(runtime, recorder) as uow:
            claimed = attempts.begin(uow, event_id)
            assert isinstance(claimed, Attempt) and claimed.number == number
            delay = policy.delay(claimed.number)
            save_changes(uow, [attempts.failed(claimed, "LookupError: nope", delay)])
            expected = {name: getattr(claimed.event, name) for name in OUTCOME_COLUMNS}
            uow.commit()
        assert stored(runtime, event_id) == expected
        assert expected["retry_count"] == number
        assert (delay is None) == (number == 3)
    with unit(runtime, recorder) as uow:
        assert attempts.begin(uow, event_id) is Skip.EXHAUSTED
    assert recorder.sent == []  # a worker's retry is Celery's own message, not a send


def test_an_attempt_counted_in_advance_is_counted_once(runtime: Runtime) -> None:
    policy = RetryPolicy(max_attempts=5, base_seconds=1, max_seconds=10)
    event_id = insert(runtime)
    with unit(runtime, Recorder()) as uow:
        claimed = attempts.begin(uow, event_id)
        assert isinstance(claimed, Attempt)
        counted = attempts.count_in_advance(uow, claimed, policy)
        uow.commit()
        assert stored(runtime, event_id)["retry_count"] == 1  # the mark
        again = attempts.reclaim(uow, counted)
        assert again is not None
        save_changes(uow, [attempts.processed(again)])
        uow.commit()
    after = stored(runtime, event_id)
    assert (after["status"], after["retry_count"]) == (EventStatus.PROCESSED, 0)


def test_a_batch_is_claimed_and_its_outcomes_written_together(runtime: Runtime) -> None:
    policy = RetryPolicy(max_attempts=3, base_seconds=1, max_seconds=10)
    ok, bad, done, exhausted = (
        insert(runtime),
        insert(runtime),
        insert(runtime, status=EventStatus.PROCESSED),
        insert(runtime, status=EventStatus.FAILED, retry_count=3),
    )
    gone = uuid.uuid4()
    with unit(runtime, Recorder()) as uow:
        runs, skips = attempts.begin_many(uow, [ok, bad, done, gone, exhausted, ok])
        assert [a.event.id for a in runs] == [ok, bad]  # in order, a repeated id once
        assert skips == {done: Skip.PROCESSED, gone: Skip.NOT_FOUND, exhausted: Skip.EXHAUSTED}
        first, second = runs
        changes = [
            attempts.processed(first),
            attempts.failed(second, "Boom: x", policy.delay(1)),
        ]
        save_changes(uow, changes)
        expected = {c.event.id: {n: getattr(c.event, n) for n in OUTCOME_COLUMNS} for c in changes}
        uow.commit()
    assert {event_id: stored(runtime, event_id) for event_id in (ok, bad)} == expected
    assert stored(runtime, bad)["next_attempt_at"] is not None


def test_skips_say_why(runtime: Runtime) -> None:
    processed = insert(runtime, status=EventStatus.PROCESSED)
    with unit(runtime, Recorder()) as uow:
        assert attempts.begin(uow, uuid.uuid4()) is Skip.NOT_FOUND
        assert attempts.begin(uow, processed) is Skip.PROCESSED
    locked = insert(runtime)
    with runtime.sessions() as holder:
        assert event_store.lock_event(holder, locked, None) is not None
        with unit(runtime, Recorder()) as uow:
            assert attempts.begin(uow, locked) is Skip.BUSY
            assert attempts.begin_many(uow, [locked]) == ([], {locked: Skip.BUSY})


def test_a_savepoint_keeps_or_drops_its_sends_and_callbacks_with_its_writes(
    runtime: Runtime,
) -> None:
    kept, dropped = insert(runtime), insert(runtime)
    recorder = Recorder()
    ran: list[str] = []
    with unit(runtime, recorder) as uow:
        with uow.savepoint():
            _pend(uow, kept)
            uow.after_commit(lambda: ran.append("kept"))
        with pytest.raises(LookupError), uow.savepoint():
            _pend(uow, dropped, status=EventStatus.PROCESSED)
            uow.after_commit(lambda: ran.append("dropped"))
            raise LookupError
        assert ran == [] and recorder.sent == []  # nothing before the commit
        uow.commit()
    assert ran == ["kept"]
    assert [d.event_id for d in recorder.sent] == [kept]
    assert stored(runtime, dropped)["status"] == EventStatus.PENDING


def test_a_rolled_back_unit_sends_nothing_and_runs_no_callback(runtime: Runtime) -> None:
    event_id = insert(runtime)
    recorder = Recorder()
    ran: list[str] = []
    with unit(runtime, recorder) as uow:
        _pend(uow, event_id)
        uow.after_commit(lambda: ran.append("x"))
        uow.rollback()
        uow.commit()  # an empty commit: what the rollback dropped stays dropped
    assert ran == [] and recorder.sent == []


def test_a_block_that_commits_the_session_is_refused_and_loses_the_transaction(
    runtime: Runtime,
) -> None:
    event_id = insert(runtime)
    with unit(runtime, Recorder()) as uow:
        savepoint = uow.savepoint()
        with pytest.raises(HandlerMisuse), savepoint, uow.lent():
            uow.session.commit()
        with pytest.raises(HandlerMisuse), uow.savepoint() as second:
            uow.session.rollback()
        assert second.aborted
        assert not uow.session.in_transaction()
    assert stored(runtime, event_id)["status"] == EventStatus.PENDING


def _pend(uow: UnitOfWork, event_id: uuid.UUID, status: EventStatus = EventStatus.PENDING) -> None:
    row = event_store.lock_event(uow.session, event_id, None)
    assert row is not None
    save_change(uow, row, StatusChange(status))
