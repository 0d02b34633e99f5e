"""Failures through a real worker: backoff, the count in PostgreSQL, rollback, poison events."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bus.runtime import Runtime
from bus.settings import Settings
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.tokens import TokenFactory, auth
from tests.support.workers import (
    FAST_RETRIES,
    WorkerFactory,
    effects_of,
    load,
    publish,
    wait_for_idle,
    wait_for_status,
)

pytestmark = pytest.mark.integration

MAX_ATTEMPTS = FAST_RETRIES["retry_max_attempts"]
BASE = FAST_RETRIES["retry_base_seconds"]
SCHEDULING_SLACK = 0.05  # a retry may start a little before its nominal time, never much


def attempt_times(trace: Path) -> list[tuple[int, float]]:
    pairs = [line.split() for line in trace.read_text().splitlines()]
    return [(int(attempt), float(at)) for attempt, at in pairs]


def test_a_handler_that_always_fails_ends_failed_after_growing_delays(
    client: TestClient,
    token: TokenFactory,
    runtime: Runtime,
    settings: Settings,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    # Given a worker whose handler always raises
    worker = start_worker("flaky")
    trace = tmp_path / "attempts"
    # When an event for it is published
    event = publish(client, token(), "flaky", fail_until=99, trace=str(trace))
    # Then it is tried the configured number of times and ends failed, with no retry scheduled
    row = wait_for_status(runtime, event["id"], "failed", 15)
    assert row.retry_count == MAX_ATTEMPTS
    assert row.error_message == f"RuntimeError: planned failure of attempt {MAX_ATTEMPTS}"
    assert row.processed_at is None and row.next_attempt_at is None
    # And each wait was within its backoff window, each longer than the one before
    times = attempt_times(trace)
    assert [attempt for attempt, _ in times] == list(range(1, MAX_ATTEMPTS + 1))
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(times)]
    for failures, gap in enumerate(gaps, start=1):
        cap = BASE * 2 ** (failures - 1)
        assert gap >= cap / 2 - SCHEDULING_SLACK, f"retry {failures} came after {gap:.3f}s"
    assert all(b > a - SCHEDULING_SLACK for a, b in itertools.pairwise(gaps)), gaps
    # And no further attempt follows: once the worker holds nothing and its queue is empty,
    # nothing is left that could run it
    wait_for_idle(worker, settings, ["flaky"], 15)
    assert len(attempt_times(trace)) == MAX_ATTEMPTS
    assert load(runtime, event["id"]).retry_count == MAX_ATTEMPTS


def test_a_handler_that_fails_twice_then_succeeds_ends_processed(
    client: TestClient, token: TokenFactory, runtime: Runtime, start_worker: WorkerFactory
) -> None:
    # Given a handler that fails on its first two attempts
    start_worker("flaky")
    # When the event is published
    event = publish(client, token(), "flaky", fail_until=2)
    # Then the third attempt processes it, and the two failures stay counted
    row = wait_for_status(runtime, event["id"], "processed", 15)
    assert row.retry_count == 2
    assert row.error_message is None and row.processed_at is not None


def test_handler_writes_roll_back_when_it_fails(
    client: TestClient,
    token: TokenFactory,
    runtime: Runtime,
    settings: Settings,
    start_worker: WorkerFactory,
) -> None:
    # Given handlers that write a row through their session and then raise
    start_worker("flaky")
    tok = token()
    # When one fails twice before succeeding and the other fails every time
    recovers = publish(client, tok, "flaky", write=True, fail_until=2)
    never = publish(client, tok, "flaky", write=True, fail_until=99)
    # Then only the successful attempt's write is kept, and none of the failed ones
    wait_for_status(runtime, recovers["id"], "processed", 15)
    wait_for_status(runtime, never["id"], "failed", 15)
    assert effects_of(settings.database_url, recovers["id"]) == [3]
    assert effects_of(settings.database_url, never["id"]) == []


def test_a_handler_cannot_commit_the_session_it_is_lent(
    client: TestClient,
    token: TokenFactory,
    runtime: Runtime,
    settings: Settings,
    start_worker: WorkerFactory,
) -> None:
    # Given a handler that writes a row and then commits its session itself
    start_worker("flaky")
    # When its event runs
    event = publish(client, token(), "flaky", write=True, commit=True)
    # Then the commit is refused, the write rolled back, and the attempt counted as failed
    row = wait_for_status(runtime, event["id"], "failed", 15)
    assert row.retry_count == MAX_ATTEMPTS
    assert row.error_message == (
        "HandlerMisuse: a handler must not commit its session: the bus commits it"
    )
    assert effects_of(settings.database_url, event["id"]) == []


def test_a_poison_event_that_kills_its_process_ends_failed(
    client: TestClient,
    token: TokenFactory,
    runtime: Runtime,
    settings: Settings,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    # Given a prefork worker whose handler SIGKILLs the pool process running it (Celery notices
    # a dead child within 5 s, so this test allows two attempts only)
    attempts = 2
    worker = start_worker(
        "poison",
        concurrency=1,
        worker_settings=settings.model_copy(update={"retry_max_attempts": attempts}),
    )
    trace = tmp_path / "attempts"
    tok = token()
    # When such an event is published
    response = client.post(
        "/system/events",
        headers={**auth(tok), "X-Request-ID": "req-poison"},
        json={
            **SEED_PUBLISH_BODY,
            "target_module": "poison",
            "event_data": {"kill_until": 99, "trace": str(trace)},
        },
    )
    event_id = response.json()["event"]["id"]
    # Then every run after the first is counted before it starts, and once the attempts are
    # spent the event ends failed, saying how its process died
    row = wait_for_status(runtime, event_id, "failed", 30)
    assert row.retry_count == attempts
    assert row.error_message is not None
    assert row.error_message.startswith("WorkerLostError: Worker exited prematurely: signal 9")
    runs = [attempt for attempt, _ in attempt_times(trace)]
    assert runs == [1, *range(1, attempts + 1)]  # the first run, then the counted ones
    # And the worker lives on and processes the next event
    healthy = publish(client, tok, "poison")
    wait_for_status(runtime, healthy["id"], "processed", 10)
    assert worker.popen.poll() is None
