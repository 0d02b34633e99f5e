"""A real `eventbus worker` (prefork, two pool processes) serves on EVENTBUS_METRICS_PORT the
counts of what its pool processed, failed and retried, and logs each event as JSON with the
publishing request's id."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from bus.runtime import Runtime
from bus.settings import Settings
from tests.ops.handlers import MODULE
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.processes import Proc, eventbus, eventbus_env, free_port, wait_for
from tests.support.prometheus import Samples, parse, value
from tests.support.tokens import TokenFactory, auth

OK, FAILING = 6, 2
ATTEMPTS = 2  # each failing event: a first attempt, one retry, then it gives up


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "handlers": "tests.ops.handlers",
        "retry_max_attempts": ATTEMPTS,
        "retry_base_seconds": 0.1,
        "retry_max_seconds": 0.5,
    }


def start_worker(settings: Settings, concurrency: int = 2) -> tuple[Proc, int]:
    """An ``eventbus worker --pool prefork`` on the ops handlers, with its metrics port."""
    port = free_port()
    argv = eventbus("worker", "--modules", MODULE, "--pool", "prefork")
    proc = Proc(
        [*argv, "--concurrency", str(concurrency)],
        eventbus_env(settings, EVENTBUS_METRICS_PORT=str(port)),
    )
    try:
        proc.wait_for_output(" ready.", 30)
    except BaseException:
        proc.stop()
        raise
    return proc, port


@pytest.fixture
def worker(runtime: Runtime, settings: Settings) -> Iterator[tuple[Proc, int]]:
    proc, port = start_worker(settings)
    yield proc, port
    proc.stop()


def scrape(port: int) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    return parse(response.text)


def publish(client: TestClient, tok: str, event_type: str, request_id: str) -> str:
    body = {**SEED_PUBLISH_BODY, "target_module": MODULE, "event_type": event_type}
    headers = {**auth(tok), "X-Request-ID": request_id}
    response = client.post("/system/events", headers=headers, json=body)
    assert response.status_code == 201, response.text
    event_id: str = response.json()["event"]["id"]
    return event_id


def test_a_prefork_worker_serves_the_counts_of_its_pool(
    worker: tuple[Proc, int], client: TestClient, token: TokenFactory
) -> None:
    proc, port = worker
    tok = token()
    # Given a fresh worker: nothing counted yet, its endpoint up
    assert value(scrape(port), "eventbus_events_processed_total") == 0

    # When events that succeed and events that always fail are published
    traced = publish(client, tok, "ok", "trace-me-0")
    for n in range(1, OK):
        publish(client, tok, "ok", f"req-ok-{n}")
    for n in range(FAILING):
        publish(client, tok, "boom", f"req-boom-{n}")

    # Then, once the database shows them all settled ...
    def settled() -> Any:
        stats = client.get("/system/events/stats", headers=auth(tok)).json()
        totals = stats["totals"]
        return (
            totals["processed"] == OK
            and totals["failed"] == FAILING
            and not (totals["retry_scheduled"] or totals["pending"])
        )

    wait_for(settled, 30, "events never settled")

    # ... the worker's /metrics shows exactly what its two pool processes did
    def counted() -> Samples | None:
        samples = scrape(port)
        done = value(samples, "eventbus_events_processed_total") == OK
        return samples if done and value(samples, "eventbus_events_failed_total") else None

    samples = wait_for(counted, 5, "the worker's counters never caught up")
    ok = {"target_module": MODULE, "event_type": "ok"}
    boom = {"target_module": MODULE, "event_type": "boom"}
    assert value(samples, "eventbus_events_processed_total", **ok) == OK
    assert value(samples, "eventbus_events_processed_total", **boom) == 0
    assert value(samples, "eventbus_events_failed_total", **boom) == FAILING * ATTEMPTS
    assert value(samples, "eventbus_events_retried_total", **boom) == FAILING * (ATTEMPTS - 1)
    assert value(samples, "eventbus_events_failed_total", **ok) == 0
    assert value(samples, "eventbus_handler_duration_seconds_count", **ok) == OK
    assert value(samples, "eventbus_handler_duration_seconds_count", **boom) == FAILING * ATTEMPTS
    lag = value(samples, "eventbus_end_to_end_lag_seconds_count", target_module=MODULE)
    assert lag == OK
    assert value(samples, "eventbus_end_to_end_lag_seconds_sum", target_module=MODULE) > 0

    # and its log follows the traced event by its id and the POST's request id
    lines = [r for r in proc.json_lines() if r.get("event_id") == traced]
    assert lines, proc.output[-3000:]
    assert all(r.get("request_id") == "trace-me-0" for r in lines), lines
    assert any("processed" in r["message"] for r in lines), lines


def test_a_crash_loop_counts_as_failed_attempts_and_one_event_that_gave_up(
    runtime: Runtime, settings: Settings, client: TestClient, token: TokenFactory
) -> None:
    # Given a worker whose handler SIGKILLs the pool process running it (Celery notices a dead
    # child within seconds; two attempts allowed)
    proc, port = start_worker(settings, concurrency=1)
    try:
        # When such an event is published
        publish(client, token(), "die", "req-die")

        # Then the first run, uncounted in the database, and the two counted ones all failed;
        # two of them were retried: failed - retried = 1 event that gave up
        labels = {"target_module": MODULE, "event_type": "die"}
        expected = {"eventbus_events_failed_total": 3, "eventbus_events_retried_total": 2}

        def reached() -> bool:
            samples = scrape(port)
            return all(value(samples, name, **labels) == n for name, n in expected.items())

        try:
            wait_for(reached, 40, "the crash loop's counts never settled", interval=0.2)
        except AssertionError:
            samples = scrape(port)
            got = {name: value(samples, name, **labels) for name in expected}
            raise AssertionError(f"expected {expected}, got {got}\n{proc.output[-3000:]}") from None
        assert value(scrape(port), "eventbus_events_processed_total", **labels) == 0
    finally:
        proc.stop()


def test_a_workers_metrics_answer_with_the_database_down(settings: Settings) -> None:
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    proc, port = start_worker(settings.model_copy(update={"database_url": dead}), concurrency=1)
    try:
        # The endpoint reads only the samples files: a scrape never waits on the database
        started = time.monotonic()
        scrape(port)
        assert time.monotonic() - started < 1
    finally:
        proc.stop()
