"""``eventbus dev``: the whole bus in one process, with no servers, as a newcomer runs it."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from bus.events.rules import utcnow
from bus.runtime import Runtime
from bus.settings import Settings
from bus.storage import event_store
from bus.storage.db import transaction
from bus.storage.models import EventStatus
from eventbus.dev import DEV_TENANT
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.processes import BIN, Proc, free_port, wait_for

pytestmark = pytest.mark.integration

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


def start_dev(workdir: Path, port: int) -> tuple[Proc, str]:
    """``eventbus dev`` in ``workdir`` with no EVENTBUS_* settings at all; returns its token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBUS_")}
    env["PYTHONUNBUFFERED"] = "1"
    proc = Proc([str(BIN / "eventbus"), "dev", "--port", str(port)], env, cwd=workdir)
    line = proc.wait_for_line("export EVENTBUS_TOKEN=", READY_TIMEOUT)
    return proc, line.split("=", 1)[1].strip()


def stop_dev(proc: Proc, signum: int) -> None:
    started = time.monotonic()
    code = proc.stop(signum, timeout=STOP_TIMEOUT + 10)
    took = time.monotonic() - started
    assert code == 0, f"exit code {code} after {signal.Signals(signum).name}:\n{proc.output}"
    assert took < STOP_TIMEOUT, f"took {took:.1f}s to stop"


def events(base: str, token: str) -> dict[str, dict[str, Any]]:
    response = httpx.get(
        f"{base}/system/events", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    assert response.status_code == 200, response.text
    return {e["id"]: e for e in response.json()["events"]}


def test_dev_runs_the_bus_without_servers_and_survives_a_restart(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Given `eventbus dev` started in an empty directory
    proc, token = start_dev(tmp_path, port)
    try:
        assert f'curl -s -X POST "{base}/system/events"' in proc.output
        assert f"Dashboard: open {base}/ui" in proc.output
        assert httpx.get(f"{base}/ui", timeout=5).status_code == 200
        # When the example event is published over HTTP
        published_at = time.monotonic()
        response = httpx.post(
            f"{base}/system/events",
            headers={"Authorization": f"Bearer {token}"},
            json=SEED_PUBLISH_BODY,
            timeout=5,
        )
        assert response.status_code == 201, response.text
        event = response.json()["event"]
        assert event["status"] == "pending"
        # Then the example handler processes it within a second
        wait_for(
            lambda: events(base, token)[event["id"]]["status"] == "processed",
            1.0,
            "the published event was not processed within a second",
            interval=0.02,
        )
        assert time.monotonic() - published_at < 1.0
        # And SIGINT (Ctrl-C) stops it cleanly
        stop_dev(proc, signal.SIGINT)
    finally:
        proc.stop(signal.SIGKILL)

    # Given an event left pending while it was stopped (an in-memory queue forgets its messages)
    database = Runtime(Settings(database_url=f"sqlite:///{tmp_path / 'eventbus.db'}"))
    stranded = uuid.uuid4()
    with transaction(database.sessions) as session:
        event_store.insert_event(
            session,
            {
                **{k: v for k, v in SEED_PUBLISH_BODY.items()},
                "id": stranded,
                "tenant_id": DEV_TENANT,
                "status": EventStatus.PENDING,
                "retry_count": 0,
                "created_at": utcnow(),
                "processed_at": None,
                "error_message": None,
                "dispatched_at": utcnow(),
                "next_attempt_at": None,
                "request_id": None,
            },
        )
    database.close()
    # When it starts again
    proc, token = start_dev(tmp_path, port)
    try:
        # Then the first event is still there, and the stranded one is sent and processed
        assert events(base, token)[event["id"]]["status"] == "processed"
        wait_for(
            lambda: events(base, token)[str(stranded)]["status"] == "processed",
            3.0,
            "the event left pending was not sent again on start",
        )
        # And SIGTERM stops it cleanly
        stop_dev(proc, signal.SIGTERM)
    finally:
        proc.stop(signal.SIGKILL)
