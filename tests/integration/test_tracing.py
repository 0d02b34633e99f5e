"""One trace from a publish, through Redis, to the handler, with a real ``eventbus worker``.

The API runs in this process (its spans go to the SDK's in-memory exporter, through
``bus.observability.tracing.use``); the worker is a subprocess, so its spans cannot reach that
exporter: it
exports them with the SDK's own OTLP/HTTP exporter, configured only by the standard ``OTEL_*``
variables, to a tiny receiver in this process (``tests/support/spans.py``). The test then joins
the two sets by trace and span ids, as a tracing backend would.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from kombu import Connection

from api.app import create_app
from bus.auth import Principal
from bus.broker.queues import queue_name
from bus.maintenance import resend
from bus.observability import tracing
from bus.publish import service
from bus.runtime import Runtime
from bus.settings import Settings
from bus.storage import event_store
from bus.storage.db import transaction
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.services import RABBITMQ_URL, REDIS_URL
from tests.support.spans import OtlpReceiver, SpanRecord, SpanStore, from_sdk, in_memory
from tests.support.tokens import TENANT_A, TokenFactory, auth
from tests.support.workers import (
    WORKER_SETTINGS,
    WorkerFactory,
    publish,
    wait_for_status,
)

pytestmark = pytest.mark.integration

SPAN_TIMEOUT = 30.0
CALLER = Principal("tester", TENANT_A, frozenset({"manage:system"}), False, "user")
TRACE_HEADERS = {tracing.TRACEPARENT, tracing.TRACESTATE, tracing.EVENT_TRACEPARENTS}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {**WORKER_SETTINGS, "otel_enabled": True}


@pytest.fixture
def api_spans() -> Iterator[Any]:
    with in_memory() as read:
        yield read


@pytest.fixture
def traced_client(api_spans: Any, runtime: Runtime) -> Iterator[TestClient]:
    """The app over a bus with tracing on, its spans in memory (set before the app is made)."""
    with TestClient(create_app(runtime=runtime), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def worker_spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[SpanStore]:
    """Where the workers started by the test export their spans (their environment is this
    process's, less EVENTBUS_*: see settings_env)."""
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # export within 50 ms, not 5 s
        monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
        yield receiver.spans


def one(spans: list[SpanRecord], **match: Any) -> SpanRecord:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"{len(found)} spans match {match}: {spans}"
    return found[0]


def raw_messages(queue: str) -> list[dict[str, Any]]:
    """The kombu envelopes waiting on a Redis queue, as stored."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return [json.loads(item) for item in client.lrange(queue, 0, -1)]
    finally:
        client.close()


def test_one_publish_is_one_trace_from_the_request_to_the_handler(
    settings: Settings,
    runtime: Runtime,
    traced_client: TestClient,
    api_spans: Any,
    worker_spans: SpanStore,
    token: TokenFactory,
    start_worker: WorkerFactory,
) -> None:
    # Given a prefork worker (its pool child builds its own tracer provider) and tracing on
    start_worker("warehouse", pool="prefork", concurrency=1)
    queue = queue_name("warehouse", settings.queue_prefix)
    # When one event is published and processed
    event = publish(traced_client, token(), "warehouse")
    wait_for_status(runtime, event["id"], "processed", 30)
    (process,) = worker_spans.wait_for(1, SPAN_TIMEOUT, **{"eventbus.event_id": event["id"]})
    # Then the API made the server span and, under it, the send span of its message
    spans = api_spans()
    server = one(spans, kind="SERVER")
    assert server.name == "POST /system/events"
    send = one(spans, kind="PRODUCER")
    assert send.name == f"send {queue}"
    assert (send.trace_id, send.parent_id) == (server.trace_id, server.span_id)
    assert send.attributes["eventbus.event_id"] == event["id"]
    assert send.attributes["messaging.destination.name"] == queue
    # And the worker's span of the event is in the same trace, a child of the send span
    assert process.name == f"process {queue}"
    assert process.kind == "CONSUMER"
    assert (process.trace_id, process.parent_id) == (server.trace_id, send.span_id)
    assert process.links == ()  # its parent is the send span: nothing else to link
    assert process.service == "eventbus-worker"
    assert process.attributes["eventbus.target_module"] == "warehouse"
    assert process.attributes["eventbus.tenant_id"] == str(TENANT_A)
    assert process.attributes["eventbus.outcome"] == "processed"
    assert process.attributes["messaging.system"] == "redis"


def test_each_event_of_a_message_continues_its_own_trace(
    settings: Settings,
    runtime: Runtime,
    traced_client: TestClient,
    api_spans: Any,
    worker_spans: SpanStore,
    token: TokenFactory,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    start_worker("warehouse", pool="prefork", concurrency=1)

    # A batch request: its events travel in one message, each gets its own span in its trace
    body = {"events": [{**SEED_PUBLISH_BODY, "entity_id": f"item-{i}"} for i in range(3)]}
    response = traced_client.post("/system/events/batch", headers=auth(token()), json=body)
    assert response.status_code == 201, response.text
    batch_ids = [e["id"] for e in response.json()["events"]]
    server = one(api_spans(), kind="SERVER", name="POST /system/events/batch")
    send = one(api_spans(), kind="PRODUCER", trace_id=server.trace_id)
    assert send.attributes["messaging.batch.message_count"] == 3
    for event_id in batch_ids:
        (span,) = worker_spans.wait_for(1, SPAN_TIMEOUT, **{"eventbus.event_id": event_id})
        assert (span.trace_id, span.parent_id) == (server.trace_id, send.span_id)

    # A group commit: three requests' publishes stored and sent together (one message); each
    # event's span continues its own request's trace, linked to the shared send span
    requests = [tracing.tracer().start_span(f"request {i}") for i in range(3)]
    for request in requests:
        request.end()
    origins = [r.traceparent for r in map(from_sdk, requests)]
    rows = [
        service.prepare_publish(settings, CALLER, None, dict(SEED_PUBLISH_BODY)) for _ in origins
    ]
    with runtime.unit_of_work() as uow:
        service.store_published(uow, rows, origins)
        uow.commit()
    first_request = from_sdk(requests[0])
    shared = one(api_spans(), kind="PRODUCER", parent_id=first_request.span_id)
    assert shared.links == tuple((r.trace_id, r.span_id) for r in map(from_sdk, requests[1:]))
    for row, origin in zip(rows, origins, strict=True):
        (span,) = worker_spans.wait_for(1, SPAN_TIMEOUT, **{"eventbus.event_id": str(row.id)})
        if origin == origins[0]:  # the send span's parent: under the send span
            assert (span.trace_id, span.parent_id) == (shared.trace_id, shared.span_id)
        else:  # another request's: under it, linked to the send span
            assert f"00-{span.trace_id}-{span.parent_id}-01" == origin
            assert span.links == ((shared.trace_id, shared.span_id),)

    # A failed attempt's retry: its span is a child of the failed one's, in the same trace
    failing = publish(traced_client, token(), "warehouse", fail_until=1)
    wait_for_status(runtime, failing["id"], "processed", 30)
    runs = worker_spans.wait_for(3, SPAN_TIMEOUT, **{"eventbus.event_id": failing["id"]})
    first, second = sorted(
        (s for s in runs if s.kind == "CONSUMER"), key=lambda s: s.attributes["eventbus.attempt"]
    )
    (resend,) = [s for s in runs if s.kind == "PRODUCER"]  # the worker's send of the retry
    assert (first.attributes["eventbus.outcome"], first.status) == ("failed", "ERROR")
    assert second.attributes["eventbus.outcome"] == "processed"
    assert (resend.trace_id, resend.parent_id) == (first.trace_id, first.span_id)
    assert (second.trace_id, second.parent_id) == (first.trace_id, resend.span_id)

    # A run whose process died: the message sent again carries its trace on
    killed = publish(traced_client, token(), "warehouse", kill_once=str(tmp_path / "killed"))
    wait_for_status(runtime, killed["id"], "processed", 60)
    # (the killed run's span died with its process; the main process sends the message again
    # with its headers, so the run after it is a child of the API's send span all the same)
    (after,) = worker_spans.wait_for(1, SPAN_TIMEOUT, **{"eventbus.event_id": killed["id"]})
    sends = [s for s in api_spans() if s.attributes.get("eventbus.event_id") == killed["id"]]
    assert len(sends) == 1
    assert after.kind == "CONSUMER"
    assert (after.trace_id, after.parent_id) == (sends[0].trace_id, sends[0].span_id)


def test_the_relay_starts_a_trace_of_its_own(
    settings: Settings,
    runtime: Runtime,
    api_spans: Any,
    worker_spans: SpanStore,
    start_worker: WorkerFactory,
) -> None:
    # Given an event stored but never sent (its send failed)
    row = service.prepare_publish(settings, CALLER, None, dict(SEED_PUBLISH_BODY))
    with transaction(runtime.sessions) as session:
        event_store.insert_events(session, [row.values()])
    # When the relay wakes its module, and a worker starts
    assert resend.run_once(runtime) == 1
    start_worker("warehouse", pool="solo")
    (span,) = worker_spans.wait_for(1, SPAN_TIMEOUT, **{"eventbus.event_id": str(row.id)})
    # Then its spans are the relay's pass, its send, the worker's run: one trace, no request
    spans = api_spans()
    pass_ = one(spans, name="eventbus.relay")
    assert pass_.parent_id is None
    send = one(spans, kind="PRODUCER")
    assert (send.trace_id, send.parent_id) == (pass_.trace_id, pass_.span_id)
    assert (span.trace_id, span.parent_id) == (send.trace_id, send.span_id)


def test_tracing_off_adds_no_header_to_a_message(
    settings: Settings, runtime: Runtime, token: TokenFactory
) -> None:
    # No worker serves "nobody": the messages stay on the queue to be read
    queue = queue_name("nobody", settings.queue_prefix)
    off = Runtime(settings.model_copy(update={"otel_enabled": False}))
    try:
        with TestClient(create_app(runtime=off)) as client:
            publish(client, token(), "nobody")
            publish_batch = {"events": [{**SEED_PUBLISH_BODY, "target_module": "nobody"}] * 2}
            assert (
                client.post(
                    "/system/events/batch", headers=auth(token()), json=publish_batch
                ).status_code
                == 201
            )
        messages = raw_messages(queue)
        assert len(messages) == 2
        for message in messages:
            assert not TRACE_HEADERS & set(message["headers"]), message["headers"]
        # While with tracing on, the same publish carries its send span's traceparent only
        with in_memory() as read, TestClient(create_app(runtime=runtime)) as client:
            event = publish(client, token(), "nobody")
            (send,) = [s for s in read() if s.kind == "PRODUCER"]
        newest = raw_messages(queue)[0]  # LPUSH: the newest first
        assert json.loads(base64.b64decode(newest["body"]))[0] == [[event["id"]]]
        _, trace_id, span_id, _ = newest["headers"][tracing.TRACEPARENT].split("-")
        assert (trace_id, span_id) == (send.trace_id, send.span_id)
        assert tracing.EVENT_TRACEPARENTS not in newest["headers"]
    finally:
        off.close()


def test_probes_and_scrapes_are_not_traced(traced_client: TestClient, api_spans: Any) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/docs-assets/swagger-ui/swagger-ui.css"):
        traced_client.get(path)
    assert api_spans() == []
    traced_client.get("/system/events", headers=auth("not a token"))
    assert [s.name for s in api_spans()] == ["GET /system/events"]


@pytest.mark.rabbitmq
def test_the_trace_context_crosses_rabbitmq(
    settings: Settings,
    api_spans: Any,
    worker_spans: SpanStore,
    start_worker: WorkerFactory,
) -> None:
    # Given the bus on RabbitMQ, whose headers table carries the per-event map as a nested table
    on_rabbit = settings.model_copy(update={"broker_url": RABBITMQ_URL})
    rabbit = Runtime(on_rabbit)
    try:
        start_worker("warehouse", worker_settings=on_rabbit)
        requests = [from_sdk(_ended(tracing.tracer().start_span(f"r{i}"))) for i in range(2)]
        rows = [
            service.prepare_publish(on_rabbit, CALLER, None, dict(SEED_PUBLISH_BODY))
            for _ in requests
        ]
        # When two requests' publishes share one message
        with rabbit.unit_of_work() as uow:
            service.store_published(uow, rows, [r.traceparent for r in requests])
            uow.commit()
        # Then each event's span is in its own request's trace
        send = one(api_spans(), kind="PRODUCER")
        assert send.attributes["messaging.system"] == "rabbitmq"
        first, second = (
            worker_spans.wait_for(1, SPAN_TIMEOUT, **{"eventbus.event_id": str(row.id)})[0]
            for row in rows
        )
        assert (first.trace_id, first.parent_id) == (send.trace_id, send.span_id)
        assert (second.trace_id, second.parent_id) == (requests[1].trace_id, requests[1].span_id)
        assert second.links == ((send.trace_id, send.span_id),)
    finally:
        rabbit.close()
        with Connection(RABBITMQ_URL, connect_timeout=5) as conn:
            conn.default_channel.queue_delete(queue_name("warehouse", on_rabbit.queue_prefix))


def _ended(span: Any) -> Any:
    span.end()
    return span
