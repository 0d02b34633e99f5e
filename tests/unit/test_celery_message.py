"""The intake's description of a Celery message (bus.broker.celery_message): what the bus itself
sends passes, from the API, from a task and after a restore; the rest is refused."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bus.broker import deadletter
from bus.broker.celery_message import ETA_MARGIN_SECONDS, Bounds
from bus.broker.queues import PROCESS_EVENTS_TASK
from tests.support.broker_payloads import envelope, task_headers

NOW = datetime(2030, 1, 1, tzinfo=UTC)
BOUNDS = Bounds(longest_delay=300.0, time_limit=300.0)


def check(headers: dict[str, Any] | None = None, **properties: Any) -> str | None:
    ids = [[str(uuid.uuid4())]]
    item = envelope(
        "q",
        task=PROCESS_EVENTS_TASK,
        args=ids,
        headers=task_headers(PROCESS_EVENTS_TASK, ids, **(headers or {})),
        **properties,
    )
    return deadletter.check_raw(json.dumps(item).encode(), now=NOW, bounds=BOUNDS)


def at(seconds: float) -> str:
    return (NOW + timedelta(seconds=seconds)).isoformat()


@pytest.mark.parametrize(
    ("headers", "properties"),
    [
        ({}, {}),
        # a resend from a task (signature_from_request): its limits, its origin as a property
        ({"timelimit": [300, 290.0], "eventbus_lost": "WorkerLostError: …"}, {"origin": "w@h"}),
        # a retry's delay, the longest one, a restore by kombu, a broker's own header
        ({"eta": at(300 + ETA_MARGIN_SECONDS), "retries": 3}, {}),
        ({"redelivered": True, "x-delivery-count": 2}, {}),
        ({"stamped_headers": ["a"], "stamps": {"a": ["1", 2]}}, {}),
        ({"expires": at(60)}, {}),
        ({"eta": "2000-01-01T00:00:00"}, {}),  # long overdue: runs now
    ],
)
def test_what_the_bus_and_celery_send_passes(
    headers: dict[str, Any], properties: dict[str, Any]
) -> None:
    assert check(headers, **properties) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"stamped_headers": [[]]},
        {"stamped_headers": [{}]},
        {"stamps": {"a": {"__type__": "uuid", "__value__": str(uuid.UUID(int=0))}}},
        {"eta": at(300 + ETA_MARGIN_SECONDS + 1)},
        {"eta": "9999-12-31T23:59:59-23:59"},
        {"expires": at(-1)},
        {"eta": ""},  # Celery: maybe_make_aware(None) raised AttributeError (found by the fuzz)
        {"expires": ""},
        {"timelimit": [0.5, None]},
        {"timelimit": [301, None]},
        {"timelimit": [True, None]},
        {"chain": [{"task": "celery.backend_cleanup"}]},
        {"is_eager": True},  # would set the task context's field
    ],
)
def test_what_celery_would_choke_on_or_run_is_refused(headers: dict[str, Any]) -> None:
    assert check(headers) is not None
