"""A fuzz of the broker side: hypothesis writes raw items onto a module's Redis list, read by
a real ``eventbus worker``; whatever they are, the worker refuses or runs each and goes on.
The second fuzz starts from *valid* envelopes and changes their fields one to three at a time
(every header and property Celery reads; types, nesting, nulls, huge values): neither the worker
nor its pool processes may ever be replaced, and real events published in between are processed.

The worker traces (``EVENTBUS_OTEL_ENABLED``, spans made and dropped: ``OTEL_TRACES_EXPORTER=
none``), so the trace headers it reads are fuzzed too."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from typing import Any

import psutil
import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bus.broker import deadletter
from bus.broker.celery_app import message_bounds
from bus.broker.queues import PROCESS_EVENTS_TASK, queue_name
from bus.observability import tracing
from bus.runtime import Runtime
from bus.settings import Settings
from tests.hostile.test_broker import assert_same_worker, rejected_lines
from tests.support.broker_payloads import FAR_ETA, PAST, envelope, task_headers
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
        # (each one's log line follows its push onto the list)
        wait_for(lambda: len(rejected_lines(worker)) == refused, 10, "a refusal was not logged")
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


# --- valid envelopes, changed field by field ------------------------------------------------

MUTATED_EXAMPLES = 300
REAL_EVERY = 50
"""A real event is published after every this many pushed items."""

HEADER_NAMES = [
    *task_headers(PROCESS_EVENTS_TASK),
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
    "redelivered",
    "compression",
    "eventbus_request_id",
    "eventbus_lost",
    tracing.TRACEPARENT,
    tracing.TRACESTATE,
    tracing.EVENT_TRACEPARENTS,
    # not sent by anyone, each read by Celery's task context or the pool
    "chain",
    "callbacks",
    "errbacks",
    "chord",
    "delivery_info",
    "is_eager",
    "hostname",
    "x-delivery-count",
]
PROPERTY_NAMES = [
    "correlation_id",
    "reply_to",
    "delivery_mode",
    "delivery_info",
    "priority",
    "body_encoding",
    "delivery_tag",
    "origin",
]
SECTIONS = {
    "headers": HEADER_NAMES,
    "properties": PROPERTY_NAMES,
    "delivery_info": ["exchange", "routing_key", "redelivered", "priority"],
    "embed": ["callbacks", "errbacks", "chain", "chord", "link"],
    "envelope": ["body", "headers", "properties", "content-type", "content-encoding"],
}
SPECIAL = [
    [[]],
    [{}],
    [None],
    {"": []},
    {"a": [[{}]]},
    [None, None],
    [0.001, 0.001],
    [1, 2, 3],
    FAR_ETA,
    PAST,
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-23:59",
    "",
    "x" * 10_000,
    10**30,
    -1,
    1.5,
    True,
    {"__type__": "uuid", "__value__": str(uuid.UUID(int=1))},
    {"__type__": "datetime", "__value__": "garbage"},
]
hostile_values = st.one_of(
    st.sampled_from(SPECIAL),
    json_values,
    st.recursive(
        st.just([]) | st.just({}), lambda inner: st.lists(inner, max_size=2), max_leaves=8
    ),
)
mutations = st.lists(
    st.sampled_from(sorted(SECTIONS)).flatmap(
        lambda section: st.tuples(
            st.just(section), st.sampled_from(SECTIONS[section]), hostile_values
        )
    ),
    min_size=1,
    max_size=3,
)


def mutated_valid(queue: str, changes: list[tuple[str, str, Any]]) -> bytes:
    """A well-formed batch envelope (a random id, so running it touches no event) with
    ``changes`` applied: (section, field, value)."""
    ids = [[str(uuid.uuid4())]]
    item = envelope(queue, task=PROCESS_EVENTS_TASK, args=ids)
    item["headers"] = task_headers(PROCESS_EVENTS_TASK, ids)
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    for section, name, shared in changes:
        # A copy: hypothesis may hand one object to two changes (st.just), and a dict set into
        # itself made json.dumps raise "Circular reference detected" before any send.
        value = copy.deepcopy(shared)
        if section == "envelope":
            item[name] = value
        elif section == "embed":
            embed[name] = value
        else:
            target = {
                "headers": item.get("headers"),
                "properties": item.get("properties"),
                "delivery_info": (item.get("properties") or {}).get("delivery_info")
                if isinstance(item.get("properties"), dict)
                else None,
            }[section]
            if isinstance(target, dict):
                target[name] = value
    if any(section == "embed" for section, _, _ in changes) and isinstance(item["body"], str):
        body = json.dumps([ids, {}, embed]).encode()
        item["body"] = base64.b64encode(body).decode()
    return json.dumps(item).encode()


def pool_of(pid: int) -> set[int]:
    return {child.pid for child in psutil.Process(pid).children(recursive=True)}


@pytest.mark.slow
def test_mutated_valid_envelopes_never_replace_the_worker_or_its_pool(
    settings: Settings,
    runtime: Runtime,
    client: TestClient,
    token: TokenFactory,
    start_worker: WorkerFactory,
) -> None:
    # Given a worker of the bus's default pool (prefork, 2 processes) and its pool's pids
    worker = start_worker("warehouse")
    pid = worker.popen.pid
    pool = wait_for(lambda: pool_of(pid) if len(pool_of(pid)) >= 2 else None, 10, "no pool")
    queue = queue_name("warehouse", settings.queue_prefix)
    r = redis.Redis.from_url(REDIS_URL)
    tok = token()
    pushed: list[bytes] = []
    real: list[str] = []

    @hypothesis_settings(
        max_examples=MUTATED_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(changes=mutations)
    def push(changes: list[tuple[str, str, Any]]) -> None:
        item = mutated_valid(queue, changes)
        r.lpush(queue, item)
        pushed.append(item)
        if len(pushed) % REAL_EVERY == 0:
            real.append(publish(client, tok, "warehouse")["id"])

    try:
        # When hypothesis's changed envelopes are pushed, real events among them
        push()
        bounds = message_bounds(settings)
        refused = sum(deadletter.check_raw(item, bounds=bounds) is not None for item in pushed)
        # Then the worker consumes them all and dead-letters exactly those the checks refuse
        # (none reached Celery and made it raise)
        wait_for(lambda: r.llen(queue) == 0, 90, "the worker stopped consuming")
        dead = deadletter.dead_letter_queue(queue)
        wait_for(lambda: r.llen(dead) >= refused, 30, f"expected {refused} dead letters")
        assert "Celery raised" not in worker.output
        assert r.llen(dead) == refused
        # And every real event is processed, by the same worker and the same pool processes
        for event_id in real:
            wait_for_status(runtime, event_id, "processed", 30)
        assert_same_worker(worker, pid)
        assert pool_of(pid) == pool, "a pool process was replaced"
        assert len(pushed) >= MUTATED_EXAMPLES // 2, f"only {len(pushed)} examples ran"
        print(f"fuzz: {len(pushed)} changed envelopes, {refused} refused, pool {sorted(pool)}")
    finally:
        r.close()
