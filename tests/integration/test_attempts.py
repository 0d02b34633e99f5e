"""The attempt history through a real worker: what ``GET /system/events/{id}`` shows after
failures, and after a pool process killed mid-handler."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bus.runtime import Runtime
from tests.support.tokens import TokenFactory, auth
from tests.support.workers import WorkerFactory, publish, wait_for_status

pytestmark = pytest.mark.integration


def history(client: TestClient, tok: str, event_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/system/events/{event_id}", headers=auth(tok))
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["attempts"]
    return entries


def test_two_failures_then_success_are_three_entries(
    client: TestClient, token: TokenFactory, runtime: Runtime, start_worker: WorkerFactory
) -> None:
    # Given a handler that fails on its first two attempts
    start_worker("flaky")
    tok = token()
    # When an event for it is published and ends processed
    event = publish(client, tok, "flaky", fail_until=2)
    row = wait_for_status(runtime, event["id"], "processed", 15)
    # Then its history is failed, failed, processed, numbered 1 to 3, each by a worker
    entries = history(client, tok, event["id"])
    assert [(e["attempt"], e["outcome"], e["source"]) for e in entries] == [
        (1, "failed", "worker"),
        (2, "failed", "worker"),
        (3, "processed", "worker"),
    ]
    assert [e["error_message"] for e in entries] == [
        "RuntimeError: planned failure of attempt 1",
        "RuntimeError: planned failure of attempt 2",
        None,
    ]
    host = socket.gethostname()
    assert all(e["worker"].startswith(f"{host}/") for e in entries)
    assert all(e["started_at"] <= e["finished_at"] for e in entries)
    assert [e["finished_at"] for e in entries] == sorted(e["finished_at"] for e in entries)
    # And the event's own count is unchanged by the history
    assert row.retry_count == 2


def test_a_process_killed_mid_handler_is_a_lost_entry_then_processed(
    client: TestClient,
    token: TokenFactory,
    runtime: Runtime,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    # Given a prefork worker whose handler SIGKILLs its pool process on its first run only
    start_worker("poison", concurrency=1)
    tok = token()
    # When such an event is published (Celery notices the dead child within about 5 s)
    event = publish(client, tok, "poison", kill_once=str(tmp_path / "killed"))
    row = wait_for_status(runtime, event["id"], "processed", 30)
    # Then the dead run is a lost entry saying how its process died, and the run after it the
    # processed one
    entries = history(client, tok, event["id"])
    assert [(e["attempt"], e["outcome"], e["source"]) for e in entries] == [
        (1, "lost", "worker"),
        (2, "processed", "worker"),
    ]
    lost, done = entries
    assert lost["error_message"].startswith("WorkerLostError: Worker exited prematurely: signal 9")
    assert lost["started_at"] is None and lost["worker"] is None
    assert done["error_message"] is None and done["worker"].startswith(f"{socket.gethostname()}/")
    # And the event's count is as before: the finished run replaced the mark counted in advance
    assert row.retry_count == 0
