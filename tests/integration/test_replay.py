"""Replay by filter end to end: ``eventbus replay`` and ``POST /system/events/replay`` on the
real database and broker, the replayed events run again by a real worker."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from bus.runtime import Runtime
from bus.settings import Settings
from tests.support.factories import event_values, make_events
from tests.support.processes import BIN, settings_env
from tests.support.tokens import TENANT_A, TokenFactory, auth
from tests.support.workers import WorkerFactory, effects_of, load, wait_for_status

pytestmark = pytest.mark.integration

PROCESSING_BOUND = 10.0
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def gave_up(n: int, module: str = "flaky") -> list[dict[str, object]]:
    """``n`` events that failed every attempt (no retry to come), whose handler now succeeds
    and writes an effect."""
    return [
        event_values(
            created_at=T0 + timedelta(seconds=i),
            target_module=module,
            status="failed",
            retry_count=3,
            error_message="RuntimeError: planned failure",
            event_data={"write": True},
            dispatched_at=T0,
        )
        for i in range(n)
    ]


def replay_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "eventbus"), "replay", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_previews_then_replays_and_a_worker_runs_each_once(
    runtime: Runtime, settings: Settings, start_worker: WorkerFactory
) -> None:
    # Given 6 flaky events that gave up, and 2 of another module that did too
    rows = make_events(runtime, gave_up(6))
    others = make_events(runtime, gave_up(2, module="billing"))
    start_worker("flaky")
    # When an operator previews the replay of failed flaky events
    preview = replay_cli(settings, "--status", "failed", "--module", "flaky", "--dry-run")
    # Then it counts them and nothing runs
    assert preview.returncode == 0, preview.stderr
    assert preview.stdout.strip() == "matched 6, replayed 0 (dry run)"
    assert {load(runtime, r["id"]).status for r in rows} == {"failed"}
    # When the replay is run
    done = replay_cli(
        settings, "--status", "failed", "--module", "flaky", "--tenant", str(TENANT_A)
    )
    # Then all six run once more on the worker, each with a fourth attempt, and succeed
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "matched 6, replayed 6"
    for row in rows:
        event = wait_for_status(runtime, str(row["id"]), "processed", PROCESSING_BOUND)
        assert (event.retry_count, event.error_message) == (3, None)
        assert effects_of(settings.database_url, str(row["id"])) == [4]
    # And the other module's events were left alone
    assert {load(runtime, r["id"]).status for r in others} == {"failed"}


def test_the_cli_refuses_a_bad_filter(settings: Settings) -> None:
    done = replay_cli(settings, "--status", "done")

    assert done.returncode == 2
    assert "Invalid status" in done.stderr


def test_the_api_replay_is_run_by_a_worker(
    client: TestClient,
    token: TokenFactory,
    runtime: Runtime,
    settings: Settings,
    start_worker: WorkerFactory,
) -> None:
    # Given 4 flaky events that gave up, and a worker for them
    rows = make_events(runtime, gave_up(4))
    start_worker("flaky")
    # When they are replayed through the API
    response = client.post(
        "/system/events/replay",
        headers=auth(token(system=True)),
        json={"status": "failed", "target_module": "flaky"},
    )
    # Then the answer counts them, and the worker runs each once more
    assert response.json() == {
        "success": True,
        "message": "Events replayed successfully",
        "matched": 4,
        "replayed": 4,
    }
    for row in rows:
        wait_for_status(runtime, str(row["id"]), "processed", PROCESSING_BOUND)
        assert effects_of(settings.database_url, str(row["id"])) == [4]
