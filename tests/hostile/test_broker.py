"""Hostile broker messages: a real ``eventbus worker`` on the real Redis (and RabbitMQ) is fed
every malformed item of tests/support/broker_payloads.py, then real events.

What must hold: each bad item is refused on one log line, kept on ``<queue>.dead`` and counted;
every real event is processed; the worker process is the same one throughout (never restarted).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from kombu import Connection, Producer

from bus.broker import deadletter
from bus.broker.queues import PROCESS_EVENTS_TASK, queue_name
from bus.runtime import Runtime
from bus.settings import Settings
from tests.hostile.celery_fault import FAULT_PREFIX
from tests.support.broker_payloads import (
    FAR_ETA,
    PAST,
    body_of,
    envelope,
    raw,
    redis_payloads,
    task_headers,
    valid_item,
    valid_traced_item,
)
from tests.support.processes import BIN, Proc, free_port, settings_env, wait_for
from tests.support.services import RABBITMQ_URL, REDIS_URL
from tests.support.tokens import TokenFactory
from tests.support.workers import WORKER_SETTINGS, WorkerFactory, publish, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("effects")]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """The integration suite's: the test handlers, fast retries, no metrics port."""
    return dict(WORKER_SETTINGS)


REAL_EVENTS = 20
REJECTED_LINE = '"message": "rejected a message on '


def rejected_lines(worker: Proc) -> list[str]:
    return [line for line in worker.lines if REJECTED_LINE in line]


def assert_same_worker(worker: Proc, pid: int) -> None:
    assert worker.popen.poll() is None, f"the worker exited:\n{worker.output[-3000:]}"
    assert worker.popen.pid == pid
    assert "Unrecoverable error" not in worker.output
    assert worker.output.count(" ready.") == 1, "the worker restarted its consumer"


def dead_count(dead: str) -> int:
    """The messages ready on a RabbitMQ dead-letter queue (0 while it is not declared)."""
    with Connection(RABBITMQ_URL, connect_timeout=5) as conn:
        channel = conn.channel()
        try:
            return int(channel.queue_declare(dead, passive=True).message_count)
        except conn.channel_errors:  # not declared yet
            return 0
        finally:
            channel.close()


def rejected_total(port: int, queue: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    needle = f'eventbus_broker_messages_rejected_total{{queue="{queue}"}} '
    for line in text.splitlines():
        if line.startswith(needle):
            return float(line.removeprefix(needle))
    return 0.0


def dead_letters_cli(settings: Settings, module: str, *extra: str) -> list[str]:
    done = subprocess.run(
        [str(BIN / "eventbus"), "dead-letters", "--module", module, *extra],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.splitlines()


def test_every_hostile_redis_item_is_refused_and_the_worker_goes_on(
    settings: Settings,
    runtime: Runtime,
    client: TestClient,
    token: TokenFactory,
    start_worker: WorkerFactory,
) -> None:
    # Given a prefork worker for warehouse, serving its metrics
    port = free_port()
    worker = start_worker(
        "warehouse", worker_settings=settings.model_copy(update={"metrics_port": port})
    )
    pid = worker.popen.pid
    queue = queue_name("warehouse", settings.queue_prefix)
    dead = deadletter.dead_letter_queue(queue)
    payloads = redis_payloads(queue)
    r = redis.Redis.from_url(REDIS_URL)
    try:
        # When every hostile item is pushed raw onto its list, and hand-made but well-formed
        # messages for real events among them (one with trace context)
        tok = token()
        handmade, traced = publish(client, tok, "warehouse"), publish(client, tok, "warehouse")
        items = list(payloads.values())
        middle = len(items) // 2
        good = [valid_item(queue, handmade["id"]), valid_traced_item(queue, traced["id"])]
        for item in [*items[:middle], *good, *items[middle:]]:
            r.lpush(queue, item)
        wait_for(lambda: r.llen(dead) == len(payloads), 60, "not every item was dead-lettered")
        # Then each was refused on one line, kept as received and counted
        assert r.llen(queue) == 0
        wait_for(lambda: len(rejected_lines(worker)) >= len(payloads), 10, "a refusal not logged")
        assert len(rejected_lines(worker)) == len(payloads)
        kept = set(r.lrange(dead, 0, -1))
        transport_level = [p for p in items if isinstance(deadletter.decode_envelope(p), str)]
        assert set(transport_level) <= kept  # raw bytes, exactly as pushed
        assert rejected_total(port, queue) == len(payloads)
        # And real events published afterwards are all processed, by the same worker process
        wait_for_status(runtime, handmade["id"], "processed", 20)
        wait_for_status(runtime, traced["id"], "processed", 20)
        real = [publish(client, tok, "warehouse") for _ in range(REAL_EVENTS)]
        for event in real:
            wait_for_status(runtime, event["id"], "processed", 30)
        assert_same_worker(worker, pid)
        # And the dead letters can be listed (one JSON line each) and purged
        listed = [
            json.loads(line)
            for line in dead_letters_cli(settings, "warehouse", "--limit", str(len(payloads)))
        ]
        assert len(listed) == len(payloads)
        assert all(item["reason"] for item in listed)
        assert dead_letters_cli(settings, "warehouse", "--purge") == [
            f"purged {len(payloads)} from {dead}"
        ]
        assert r.llen(dead) == 0
    finally:
        r.close()


def test_the_dead_letter_list_is_capped(settings: Settings, runtime: Runtime) -> None:
    # Given the bus's Redis channel
    from kombu import Connection as KombuConnection

    from bus.broker.transport import TRANSPORT

    queue = queue_name("capped", settings.queue_prefix)
    with KombuConnection(settings.broker_url, transport=TRANSPORT) as conn:
        channel: Any = conn.default_channel
        # When more items than the cap are refused
        r = redis.Redis.from_url(REDIS_URL)
        try:
            pipe = r.pipeline()
            dead = deadletter.dead_letter_queue(queue)
            for n in range(deadletter.DEAD_LETTER_CAP):
                pipe.lpush(dead, b"old %d" % n)
            pipe.execute()
            channel.dead_letter(queue, b"newest", "test")
            # Then the list keeps the newest ones only
            assert r.llen(dead) == deadletter.DEAD_LETTER_CAP
            assert r.lindex(dead, 0) == b"newest"
            assert r.lindex(dead, -1) == b"old 1"
        finally:
            r.close()


def test_a_channel_closed_after_its_connection_went_restores_what_it_held(
    settings: Settings,
) -> None:
    """A worker holding an unacknowledged message when Redis died closed its channel with the
    transport's connection already gone: kombu rebuilt a pool from nothing, raised
    AttributeError, and the worker died ("Unrecoverable error", seen in the chaos suite)."""
    from kombu import Connection as KombuConnection

    from bus.broker.transport import TRANSPORT

    queue = queue_name("held", settings.queue_prefix)
    r = redis.Redis.from_url(REDIS_URL)
    conn = KombuConnection(settings.broker_url, transport=TRANSPORT)
    try:
        held = conn.SimpleQueue(queue)
        held.put({"n": 1})
        message = held.get(timeout=2)  # delivered, not acknowledged
        assert message.payload == {"n": 1} and r.llen(queue) == 0
        channel: Any = held.channel
        # When the channel is closed as the consumer closes it after a lost connection
        channel.connection.client = None
        channel.close()  # no AttributeError
        # Then the message it held is back on its queue
        assert r.llen(queue) == 1
    finally:
        r.delete(queue)
        r.close()


def test_the_stamped_headers_message_of_issue_17_is_refused_and_the_worker_lives(
    settings: Settings,
    runtime: Runtime,
    client: TestClient,
    token: TokenFactory,
    start_worker: WorkerFactory,
) -> None:
    """Issue 17: ``stamped_headers=[[]]`` passed the intake, then Celery hashed the inner list
    in ``Request.revoked``: "Unrecoverable error", the worker exited, and the unacknowledged
    message killed every restarted worker in turn."""
    # Given a prefork worker (the bus's default pool) for warehouse
    worker = start_worker("warehouse")
    pid = worker.popen.pid
    queue = queue_name("warehouse", settings.queue_prefix)
    dead = deadletter.dead_letter_queue(queue)
    tok = token()
    event = publish(client, tok, "warehouse")
    e, t = str(uuid.uuid4()), PROCESS_EVENTS_TASK
    r = redis.Redis.from_url(REDIS_URL)
    try:
        # When the issue's message is pushed, and the same with a dict inside
        for inner in ([], {}):
            headers = task_headers(t, [[e]], stamped_headers=[inner], stamps={})
            r.lpush(queue, raw(envelope(queue, task=t, args=[[e]], headers=headers)))
        # Then both are kept on the dead-letter list, and the worker lives on and processes
        wait_for(lambda: r.llen(dead) == 2, 30, "the messages were not dead-lettered")
        later = publish(client, tok, "warehouse")
        for event_id in (event["id"], later["id"]):
            wait_for_status(runtime, event_id, "processed", 30)
        assert_same_worker(worker, pid)
        assert all(b"stamped_headers" in item for item in r.lrange(dead, 0, -1))
    finally:
        r.close()


FAR_ETAS = 200


def test_far_etas_and_past_expiries_are_dead_lettered_not_held_in_memory(
    settings: Settings,
    runtime: Runtime,
    client: TestClient,
    token: TokenFactory,
    start_worker: WorkerFactory,
) -> None:
    """Issue 17: envelopes with an ``eta`` in 2099 were reserved by the worker until then:
    20,000 of them held 170 MB of its memory, all unacknowledged in Redis."""
    worker = start_worker("warehouse")
    queue = queue_name("warehouse", settings.queue_prefix)
    dead = deadletter.dead_letter_queue(queue)
    r = redis.Redis.from_url(REDIS_URL)
    try:
        # Given messages that are well-formed calls but for their eta (2099) or expiry (2001)
        items = []
        for n in range(FAR_ETAS):
            e = str(uuid.uuid4())
            when = {"eta": FAR_ETA} if n % 2 else {"expires": PAST}
            headers = task_headers(PROCESS_EVENTS_TASK, [[e]], **when)
            items.append(envelope(queue, task=PROCESS_EVENTS_TASK, args=[[e]], headers=headers))
        # When they are pushed
        for item in items:
            r.lpush(queue, raw(item))
        # Then each is dead-lettered, none is held unacknowledged, and real events still run
        wait_for(lambda: r.llen(dead) == FAR_ETAS, 60, "not every message was dead-lettered")
        tags = [item["properties"]["delivery_tag"] for item in items]
        assert not any(r.hmget("unacked", tags))
        event = publish(client, token(), "warehouse")
        wait_for_status(runtime, event["id"], "processed", 30)
        assert "eta" in worker.output and "expires" in worker.output
    finally:
        r.close()


def test_an_error_celery_raises_outside_a_handler_dead_letters_the_message(
    settings: Settings,
    runtime: Runtime,
    client: TestClient,
    token: TokenFactory,
    start_worker: WorkerFactory,
) -> None:
    """Whatever Celery raises while it turns a message into a task request (a field the
    intake's checks do not know of yet), the worker refuses that message and goes on."""
    # Given a worker whose Celery raises TypeError in Request.revoked for some task ids
    faulty = settings.model_copy(
        update={"handlers": f"{settings.handlers},tests.hostile.celery_fault"}
    )
    worker = start_worker("warehouse", worker_settings=faulty)
    pid = worker.popen.pid
    queue = queue_name("warehouse", settings.queue_prefix)
    dead = deadletter.dead_letter_queue(queue)
    tok = token()
    r = redis.Redis.from_url(REDIS_URL)
    try:
        # When a message the intake accepts makes Celery raise, between real events
        before = publish(client, tok, "warehouse")
        e = str(uuid.uuid4())
        headers = task_headers(PROCESS_EVENTS_TASK, [[e]], id=f"{FAULT_PREFIX}{uuid.uuid4()}")
        item = raw(envelope(queue, task=PROCESS_EVENTS_TASK, args=[[e]], headers=headers))
        assert deadletter.check_raw(item) is None
        r.lpush(queue, item)
        # Then it is kept on the dead-letter list with Celery's error as its reason
        wait_for(lambda: r.llen(dead) == 1, 30, "the message was not dead-lettered")
        assert "Celery raised TypeError" in rejected_lines(worker)[0]
        # And the worker lives on: the events before and after it are processed
        after = publish(client, tok, "warehouse")
        for event in (before, after):
            wait_for_status(runtime, event["id"], "processed", 30)
        assert_same_worker(worker, pid)
    finally:
        r.close()


# --- RabbitMQ ---------------------------------------------------------------------------------


@pytest.fixture
def rabbit_settings(settings: Settings) -> Iterator[Settings]:
    on_rabbit = settings.model_copy(update={"broker_url": RABBITMQ_URL})
    yield on_rabbit
    with Connection(RABBITMQ_URL, connect_timeout=5) as conn:
        channel = conn.default_channel
        for name in ("warehouse",):
            queue = queue_name(name, on_rabbit.queue_prefix)
            channel.queue_delete(queue)
            channel.queue_delete(deadletter.dead_letter_queue(queue))


def amqp_payloads() -> dict[str, dict[str, Any]]:
    """(body, content_type, content_encoding, headers) of each hostile AMQP message."""
    event_id = str(uuid.uuid4())

    def task(**over: Any) -> dict[str, Any]:
        values: dict[str, Any] = {
            "body": body_of([event_id]),
            "content_type": "application/json",
            "content_encoding": "utf-8",
            "headers": task_headers(args=[event_id]),
        }
        values.update(over)
        return values

    return {
        "garbage, no headers": {"body": b"garbage", "content_type": None, "headers": None},
        "json list": {"body": b"[1,2,3]", "content_type": "application/json", "headers": None},
        "null": {"body": b"null", "content_type": "application/json", "headers": None},
        "random bytes": {"body": bytes(range(256)), "content_type": "application/octet-stream"},
        "celery.backend_cleanup": task(headers=task_headers("celery.backend_cleanup", [])),
        "celery.chord_unlock": task(headers=task_headers("celery.chord_unlock", [event_id])),
        "another task": task(headers=task_headers("myapp.tasks.delete_everything")),
        "args an integer": task(body=body_of([12345])),
        "args not a uuid": task(body=body_of(["nope"])),
        "unexpected kwargs": task(body=body_of([event_id], {"x": 1})),
        "callbacks": task(body=body_of([event_id], embed={"callbacks": [{"task": "x"}]})),
        "content-type pickle": task(content_type="application/x-python-serialize"),
        "compression zlib, garbage body": task(
            headers={**task_headers(args=[event_id]), "compression": "application/x-gzip"}
        ),
        "truncated body": task(body=body_of([event_id])[:10]),
        "body of 1 MB": task(body=body_of([event_id], embed={"pad": "x" * 1_000_000})),
        "eta not a time": task(headers=task_headers(args=[event_id], eta="soon")),
        "protocol 1 (no task header)": task(
            headers={"id": "x"},
            body=json.dumps({"task": "eventbus.process_event", "args": [event_id]}).encode(),
        ),
    }


@pytest.mark.rabbitmq
def test_every_hostile_amqp_message_is_refused_and_the_worker_goes_on(
    rabbit_settings: Settings,
    runtime: Runtime,
    token: TokenFactory,
    start_worker: WorkerFactory,
) -> None:
    # Given a worker for warehouse on RabbitMQ
    from api.app import create_app

    worker = start_worker("warehouse", worker_settings=rabbit_settings)
    pid = worker.popen.pid
    queue = queue_name("warehouse", rabbit_settings.queue_prefix)
    dead = deadletter.dead_letter_queue(queue)
    payloads = amqp_payloads()
    # When every hostile message is published to the module's queue
    with Connection(RABBITMQ_URL, connect_timeout=5) as conn:
        producer = Producer(conn.default_channel)
        for values in payloads.values():
            producer.publish(
                values["body"],
                exchange="",
                routing_key=queue,
                content_type=values.get("content_type") or "application/data",
                content_encoding=values.get("content_encoding") or "binary",
                headers=values.get("headers") or {},
            )
    wait_for(lambda: dead_count(dead) == len(payloads), 60, "not every message was dead-lettered")
    # Then each was refused on one line, and real events are processed by the same worker
    # (the message is kept before its line is written: wait for the last line too)
    wait_for(lambda: len(rejected_lines(worker)) >= len(payloads), 10, "a refusal not logged")
    assert len(rejected_lines(worker)) == len(payloads)
    rabbit_bus = Runtime(rabbit_settings)
    try:
        with TestClient(create_app(runtime=rabbit_bus)) as client:
            tok = token()
            real = [publish(client, tok, "warehouse") for _ in range(REAL_EVENTS)]
            for event in real:
                wait_for_status(runtime, event["id"], "processed", 30)
    finally:
        rabbit_bus.close()
    assert_same_worker(worker, pid)
    # And the CLI lists them (leaving them in place) and purges them
    listed = dead_letters_cli(rabbit_settings, "warehouse", "--limit", "5")
    assert len(listed) == 5 and all(json.loads(line)["reason"] != "?" for line in listed)
    # (the listing's unacknowledged fetches go back to the queue as its channel closes)
    wait_for(lambda: dead_count(dead) == len(payloads), 10, "the listed messages never returned")
    purged = dead_letters_cli(rabbit_settings, "warehouse", "--purge")
    assert purged == [f"purged {len(payloads)} from {dead}"]
