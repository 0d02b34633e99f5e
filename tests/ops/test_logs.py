"""JSON log lines carry the request id, tenant and event of the work at hand."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextvars import copy_context
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bus.observability import logs
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.tokens import TENANT_A, TokenFactory, auth

Lines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def logged() -> Iterator[Lines]:
    """Every record logged during the test, as the JSON formatter writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(level)


def test_a_publish_is_logged_after_commit_with_its_request_tenant_and_event(
    client: TestClient, token: TokenFactory, logged: Lines
) -> None:
    response = client.post(
        "/system/events",
        headers={**auth(token()), "X-Request-ID": "req-trace-42"},
        json=SEED_PUBLISH_BODY,
    )
    assert response.status_code == 201
    assert response.headers["x-request-id"] == "req-trace-42"
    event_id = response.json()["event"]["id"]

    published = [line for line in logged() if line.get("event_id") == event_id]
    assert len(published) == 1
    line = published[0]
    assert line["message"] == "event published for warehouse/inventory_updated"
    assert line["level"] == "info"
    assert line["request_id"] == "req-trace-42"
    assert line["tenant_id"] == str(TENANT_A)
    assert line["ts"].endswith("Z")


def test_a_refused_publish_logs_no_publish(
    client: TestClient, token: TokenFactory, logged: Lines
) -> None:
    response = client.post("/system/events", headers=auth(token()), json={"event_type": "x"})
    assert (response.status_code, response.json()["message"]) == (
        400,
        "Field required source_module",
    )
    assert not [line for line in logged() if "published" in line["message"]]


def test_bind_reaches_the_scope_from_another_thread() -> None:
    # Given a request's scope, and a worker thread that inherited its context
    seen: dict[str, str] = {}
    with logs.log_context(request_id="r1"):
        context = copy_context()
        thread = threading.Thread(target=context.run, args=(logs.bind,), kwargs={"tenant_id": "t"})
        thread.start()
        thread.join()
        # Then the tenant the thread learnt is on the scope's later records
        seen = logs.current()
    assert seen == {"request_id": "r1", "tenant_id": "t"}
    assert "tenant_id" not in logs.current()  # and gone once the scope ends


def test_bind_outside_a_scope_leaves_the_thread_alone() -> None:
    before = logs.current()
    logs.bind(tenant_id="stray")
    assert logs.current() == before


def test_the_formatter_takes_ids_from_extra_too() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "m %s", ("a",), None)
    record.event_id = "e1"
    with logs.log_context(request_id="r1"):
        entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["message"] == "m a"
    assert (entry["event_id"], entry["request_id"], entry["level"]) == ("e1", "r1", "warning")


def test_dict_config_routes_uvicorn_through_the_json_formatter() -> None:
    config = logs.dict_config("info", json_output=True)
    assert config["formatters"]["eventbus"] == {"()": "bus.observability.logs.JsonFormatter"}
    assert config["root"]["level"] == "INFO"
    assert config["loggers"]["uvicorn.access"]["propagate"] is True
