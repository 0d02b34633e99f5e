"""A fuzz of the broker side: hypothesis writes raw items onto a module's Redis list, read by
a real ``eventbus worker``; whatever they are, the worker refuses or runs each and goes on.

The worker traces (``EVENTBUS_OTEL_ENABLED``, spans made and dropped: ``OTEL_TRACES_EXPORTER=
none``), so the trace headers it reads are fuzzed too."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bus.broker import deadletter
from bus.broker.queues import queue_name
from bus.runtime import Runtime
from bus.settings import Settings
from tests.hostile.test_broker import assert_same_worker, rejected_lines
from tests.support.broker_payloads import envelope
from tests.support.processes import wait_for
from tests.support.services import REDIS_URL
from tests.support.tokens import TokenFactory
from tests.support.workers import WORKER_SETTINGS, WorkerFactory, publish, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("effects")]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """The integration suite's: the test handlers, fast retries, no metrics port."""
    return dict(WORKER_SETTINGS)


EXAMPLES = 200

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
ENVELOPE_PATHS = [
    ("body",),
    ("headers",),
    ("content-type",),
    ("content-encoding",),
    ("properties",),
    ("properties", "delivery_tag"),
    ("properties", "delivery_info"),
    ("properties", "body_encoding"),
    ("properties", "priority"),
    ("headers", "task"),
    ("headers", "id"),
    ("headers", "eta"),
    ("headers", "timelimit"),
    ("headers", "retries"),
    ("headers", "traceparent"),
    ("headers", "eventbus_traceparents"),
]


def mutated(queue: str, path: tuple[str, ...], value: Any) -> bytes:
    """A well-formed envelope with one field replaced by whatever hypothesis chose."""
    item: dict[str, Any] = envelope(queue)
    target = item
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(item).encode()


def items(queue: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=600),
        st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.builds(mutated, st.just(queue), st.sampled_from(ENVELOPE_PATHS), json_values),
    )


def test_random_raw_items_never_stop_the_worker(
    settings: Settings,
    runtime: Runtime,
    client: TestClient,
    token: TokenFactory,
    start_worker: WorkerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    traced = settings.model_copy(update={"otel_enabled": True})
    worker = start_worker("warehouse", worker_settings=traced)
    pid = worker.popen.pid
    queue = queue_name("warehouse", settings.queue_prefix)
    r = redis.Redis.from_url(REDIS_URL)
    pushed: list[bytes] = []

    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(item=items(queue))
    def push(item: bytes) -> None:
        r.lpush(queue, item)
        pushed.append(item)

    try:
        # Given hypothesis's items, pushed raw onto the module's list
        push()
        refused = sum(deadletter.check_raw(item) is not None for item in pushed)
        # Then the worker consumes them all: those the checks refuse are dead-lettered (the
        # few that are well-formed calls, for ids that do not exist, simply run)
        wait_for(lambda: r.llen(queue) == 0, 60, "the worker stopped consuming")
        dead = deadletter.dead_letter_queue(queue)
        wait_for(lambda: r.llen(dead) == refused, 30, f"expected {refused} dead letters")
        assert len(rejected_lines(worker)) == refused
        # And real events are still processed, by the same worker process
        tok = token()
        for event in [publish(client, tok, "warehouse") for _ in range(5)]:
            wait_for_status(runtime, event["id"], "processed", 30)
        assert_same_worker(worker, pid)
        assert len(pushed) >= EXAMPLES // 2, f"only {len(pushed)} examples ran"
        print(f"fuzz: {len(pushed)} raw items, {refused} refused, worker pid {pid} throughout")
    finally:
        r.close()


def test_a_valid_random_id_is_accepted_by_the_check() -> None:
    # The fuzz's count relies on the check: a well-formed call passes it, whatever the id.
    assert (
        deadletter.check_raw(json.dumps(envelope("q", args=[str(uuid.uuid4())])).encode()) is None
    )
