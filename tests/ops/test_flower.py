"""`eventbus flower`: basic auth from EVENTBUS_FLOWER_BASIC_AUTH on everything but
/healthcheck, and the task events a real worker sends show up in it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient

from bus.runtime import Runtime
from bus.settings import Settings
from tests.ops.handlers import MODULE
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.processes import Proc, eventbus, eventbus_env, free_port, wait_for
from tests.support.tokens import TokenFactory, auth

CREDENTIALS = ("ops", "s3cret-for-tests")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"handlers": "tests.ops.handlers"}


@pytest.fixture
def flower(runtime: Runtime, settings: Settings) -> Iterator[str]:
    port = free_port()
    env = eventbus_env(settings, EVENTBUS_FLOWER_BASIC_AUTH=":".join(CREDENTIALS))
    proc = Proc(eventbus("flower", "--port", str(port), "--address", "127.0.0.1"), env)
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"flower exited:\n{proc.output[-3000:]}")
        try:
            return httpx.get(f"{base}/healthcheck", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, 30, "flower never answered /healthcheck", interval=0.2)
        yield base
    finally:
        proc.stop()


def test_flower_asks_for_the_password_except_on_its_healthcheck(flower: str) -> None:
    health = httpx.get(f"{flower}/healthcheck", timeout=5)
    assert (health.status_code, health.text) == (200, "OK")  # no credentials needed

    assert httpx.get(f"{flower}/api/workers", timeout=5).status_code == 401
    wrong = httpx.get(f"{flower}/api/workers", auth=("ops", "nope"), timeout=5)
    assert wrong.status_code == 401
    assert httpx.get(f"{flower}/api/workers", auth=CREDENTIALS, timeout=5).status_code == 200


def test_flower_shows_the_tasks_a_worker_ran(
    flower: str, settings: Settings, client: TestClient, token: TokenFactory
) -> None:
    worker = Proc(
        eventbus("worker", "--modules", MODULE, "--pool", "solo"),
        eventbus_env(settings, EVENTBUS_METRICS_PORT="0"),
    )
    try:
        worker.wait_for_output(" ready.", 30)
        body = {**SEED_PUBLISH_BODY, "target_module": MODULE, "event_type": "ok"}
        ids = {
            client.post("/system/events", headers=auth(token()), json=body).json()["event"]["id"]
            for _ in range(3)
        }

        def seen() -> bool:
            params = {"taskname": "eventbus.process_events", "state": "SUCCESS"}
            tasks = httpx.get(
                f"{flower}/api/tasks", params=params, auth=CREDENTIALS, timeout=5
            ).json()
            done = {arg for task in tasks.values() for arg in UUID.findall(task["args"])}
            return ids <= done

        wait_for(seen, 30, "flower never showed the worker's tasks", interval=0.3)
    finally:
        worker.stop()


def test_flower_refuses_to_start_without_credentials(settings: Settings) -> None:
    proc = Proc(eventbus("flower", "--port", str(free_port())), eventbus_env(settings))
    assert proc.popen.wait(30) == 2
    proc.stop()
    assert "EVENTBUS_FLOWER_BASIC_AUTH" in proc.output


def test_flower_listens_on_loopback_unless_told_otherwise(settings: Settings) -> None:
    # Given flower started with no --address (it can shut workers down)
    port = free_port()
    env = eventbus_env(settings, EVENTBUS_FLOWER_BASIC_AUTH=":".join(CREDENTIALS))
    proc = Proc(eventbus("flower", "--port", str(port)), env)
    try:

        def listening() -> set[str]:
            if proc.popen.poll() is not None:
                raise AssertionError(f"flower exited:\n{proc.output[-3000:]}")
            family = psutil.Process(proc.popen.pid)
            return {
                c.laddr.ip
                for p in (family, *family.children(recursive=True))
                for c in p.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port
            }

        wait_for(lambda: bool(listening()), 30, "flower never listened", interval=0.2)
        # Then it listens on loopback only, as the README says (before: 0.0.0.0)
        assert listening() <= {"127.0.0.1"}, listening()
    finally:
        proc.stop()
