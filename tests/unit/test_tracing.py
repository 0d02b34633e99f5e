"""``bus.observability.tracing`` on its own: the headers a send carries, the parents a worker's
spans take,
what the intake lets through, the provider built from ``OTEL_*``; spans in memory, no server."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bus.broker import deadletter
from bus.broker.dispatch import Dispatch, Dispatcher
from bus.broker.queues import PROCESS_EVENTS_TASK
from bus.observability import tracing
from tests.support.broker_payloads import task_headers
from tests.support.processes import ROOT
from tests.support.spans import SpanRecord, from_sdk, in_memory

QUEUE = "eventbus.warehouse"
A, B, C = (str(uuid.uuid4()) for _ in range(3))

Spans = Callable[[], list[SpanRecord]]


@pytest.fixture
def spans() -> Iterator[Spans]:
    with in_memory() as read:
        yield read


def request_span(name: str) -> SpanRecord:
    """A finished span standing for a request, and its traceparent."""
    span = tracing.tracer().start_span(name)
    span.end()
    return from_sdk(span)


def headers_of(event_ids: list[str], origins: list[str | None]) -> dict[str, Any]:
    sender = tracing.Sender("redis://127.0.0.1:6379/0")
    with sender.sending(QUEUE, "warehouse", event_ids, origins) as send:
        return send.headers


def test_a_message_of_one_request_carries_its_send_span_only(spans: Spans) -> None:
    request = request_span("POST /system/events/batch")
    headers = headers_of([A, B], [request.traceparent, request.traceparent])
    (send,) = [s for s in spans() if s.kind == "PRODUCER"]
    assert set(headers) == {tracing.TRACEPARENT}
    assert headers[tracing.TRACEPARENT].split("-")[1:3] == [send.trace_id, send.span_id]
    assert (send.trace_id, send.parent_id) == (request.trace_id, request.span_id)
    assert send.name == f"send {QUEUE}"
    assert send.attributes["messaging.batch.message_count"] == 2
    assert send.links == ()


def test_a_message_of_several_requests_maps_the_others_events(spans: Spans) -> None:
    first, other = request_span("one"), request_span("two")
    headers = headers_of([A, B, C], [first.traceparent, other.traceparent, None])
    (send,) = [s for s in spans() if s.kind == "PRODUCER"]
    # The first request's events are under the send span; the others name their own origin
    # ("" for none), and the send span links to each other request
    assert headers[tracing.EVENT_TRACEPARENTS] == {B: other.traceparent, C: ""}
    assert send.parent_id == first.span_id
    assert send.links == ((other.trace_id, other.span_id),)


def test_a_message_with_no_origin_starts_a_trace(spans: Spans) -> None:
    headers = headers_of([A], [None])
    (send,) = spans()
    assert send.parent_id is None
    assert send.attributes["eventbus.event_id"] == A
    assert set(headers) == {tracing.TRACEPARENT}


def test_each_event_span_continues_its_own_origin(spans: Spans) -> None:
    first, other = request_span("one"), request_span("two")
    headers = headers_of([A, B, C], [first.traceparent, other.traceparent, None])
    (send,) = [s for s in spans() if s.kind == "PRODUCER"]
    delivery = tracing.Receiver("redis://").delivery(headers.get, "task-1")
    for event_id in (A, B, C):
        with delivery.processing(event_id, "warehouse", QUEUE, {"tenant_id": "t"}) as span:
            span.outcome("processed")
    by_id = {s.attributes["eventbus.event_id"]: s for s in spans() if s.kind == "CONSUMER"}
    assert (by_id[A].parent_id, by_id[A].links) == (send.span_id, ())
    assert (by_id[B].trace_id, by_id[B].parent_id) == (other.trace_id, other.span_id)
    assert by_id[B].links == ((send.trace_id, send.span_id),)
    assert by_id[C].parent_id is None  # no origin: a root, linked to its send
    assert by_id[C].links == ((send.trace_id, send.span_id),)
    assert by_id[A].attributes["messaging.message.id"] == "task-1"
    assert by_id[A].attributes["eventbus.tenant_id"] == "t"
    # What a re-send of each carries on
    assert delivery.origin(A) == headers[tracing.TRACEPARENT]
    assert delivery.origin(B) == other.traceparent
    assert delivery.origin(C) is None


VALID = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"


@pytest.mark.parametrize(
    ("headers", "parent"),
    [
        (
            {tracing.TRACEPARENT: 7, tracing.TRACESTATE: ["x"], tracing.EVENT_TRACEPARENTS: [1]},
            None,
        ),
        ({tracing.TRACEPARENT: "garbage", tracing.EVENT_TRACEPARENTS: {A: 5}}, None),
        ({tracing.TRACEPARENT: "00-" + "0" * 32 + "-" + "0" * 16 + "-01"}, None),  # invalid ids
        ({tracing.TRACEPARENT: VALID, tracing.EVENT_TRACEPARENTS: {A: "not-a-traceparent"}}, None),
        ({tracing.TRACEPARENT: VALID, tracing.TRACESTATE: "=,="}, "b" * 16),
        ({}, None),
    ],
)
def test_malformed_trace_headers_never_fail_a_delivery(
    spans: Spans, headers: dict[str, Any], parent: str | None
) -> None:
    # What the intake lets through is still read defensively: a bad value is no parent
    delivery = tracing.Receiver("redis://").delivery(headers.get, None)
    with delivery.processing(A, "warehouse", QUEUE, {}) as span:
        span.outcome("failed", RuntimeError("boom"))
    (record,) = spans()
    assert record.status == "ERROR"
    assert record.parent_id == parent


class FakeCelery:
    """Keeps what the dispatcher would hand the broker."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_task(self, name: str, **options: Any) -> None:
        self.sent.append({"name": name, **options})


def test_tracing_off_sends_no_trace_header() -> None:
    app = FakeCelery()
    dispatcher = Dispatcher(app, None, "eventbus.")  # type: ignore[arg-type]
    event_id = uuid.uuid4()
    assert dispatcher.send([Dispatch(event_id, "warehouse", "req-1", trace="ignored")]) == []
    (message,) = app.sent
    assert message["name"] == PROCESS_EVENTS_TASK
    assert message["headers"] == {"eventbus_request_id": "req-1"}


def test_tracing_on_sends_the_trace_context(spans: Spans) -> None:
    app = FakeCelery()
    sender = tracing.Sender("redis://")
    dispatcher = Dispatcher(app, None, "eventbus.", tracer=sender)  # type: ignore[arg-type]
    origin = request_span("PUT /system/events/{event_id}")
    with tracing.tracer().start_as_current_span("unit of work"):
        dispatcher.send([Dispatch(uuid.uuid4(), "warehouse", trace=origin.traceparent)])
    (message,) = app.sent
    (send,) = [s for s in spans() if s.kind == "PRODUCER"]
    assert send.parent_id == origin.span_id  # the dispatch's own origin, not the current span
    assert message["headers"][tracing.TRACEPARENT].split("-")[2] == send.span_id


def test_a_failed_send_is_an_error_span(spans: Spans) -> None:
    class Down(FakeCelery):
        def send_task(self, name: str, **options: Any) -> None:
            raise ConnectionError("broker down")

    class Sessions:
        def __call__(self) -> Any:
            raise RuntimeError("no database here")

    dispatcher = Dispatcher(Down(), Sessions(), "eventbus.", tracer=tracing.Sender("redis://"))  # type: ignore[arg-type]
    event_id = uuid.uuid4()
    assert dispatcher.send([Dispatch(event_id, "warehouse")]) == [event_id]
    (send,) = spans()
    assert send.status == "ERROR"


# --- what the worker's intake accepts -------------------------------------------------------


def check(**headers: Any) -> str | None:
    body = f'[[["{A}", "{B}"]], {{}}, {{}}]'.encode()
    return deadletter.check_task_message(
        task_headers(PROCESS_EVENTS_TASK, [[A, B]], **headers), "application/json", "utf-8", body
    )


def test_the_intake_accepts_the_trace_headers_a_send_makes() -> None:
    assert check() is None
    assert check(traceparent=VALID, tracestate="vendor=1") is None
    assert check(traceparent=VALID, eventbus_traceparents={A: VALID, B: ""}) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": 7},
        {"traceparent": "x" * 129},
        {"tracestate": ["a=1"]},
        {"tracestate": "a=" + "x" * 600},
        {"eventbus_traceparents": [A]},
        {"eventbus_traceparents": "x"},
        {"eventbus_traceparents": {A: 7}},
        {"eventbus_traceparents": {A: "x" * 129}},
        {"eventbus_traceparents": {"x" * 37: VALID}},
        {"eventbus_traceparents": {str(i): VALID for i in range(1001)}},
    ],
)
def test_the_intake_refuses_malformed_trace_headers(headers: dict[str, Any]) -> None:
    reason = check(**headers)
    assert reason is not None
    assert next(iter(headers)) in reason


# --- the provider ---------------------------------------------------------------------------


def test_the_provider_is_built_from_the_standard_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    provider = tracing.build("eventbus-worker")
    assert provider.resource.attributes["service.name"] == "eventbus-worker"
    provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "warehouse-workers")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,otlp")
    provider = tracing.build("eventbus-worker")
    assert provider.resource.attributes["service.name"] == "warehouse-workers"
    processors = provider._active_span_processor._span_processors
    assert [type(p._batch_processor._exporter).__name__ for p in processors] == [
        "ConsoleSpanExporter",
        "OTLPSpanExporter",
    ]
    provider.shutdown()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin-nobody-installed")
    with pytest.raises(tracing.TracingUnavailable, match="no such exporter"):
        tracing.build("eventbus-worker")


def test_messaging_system_names_the_broker() -> None:
    assert tracing.messaging_system("redis://127.0.0.1:6379/0") == "redis"
    assert tracing.messaging_system("amqp://guest:guest@127.0.0.1:5672//") == "rabbitmq"
    assert tracing.messaging_system("memory://") == "memory"


def test_off_the_bus_runs_without_the_opentelemetry_sdk() -> None:
    # Given a process where the SDK cannot be imported (opentelemetry-api comes with FastAPI)
    script = """
import sys
for name in ("opentelemetry.sdk", "opentelemetry.exporter"):
    sys.modules[name] = None
from api.app import create_app
from bus.runtime import Runtime
from bus.settings import Settings
from workers.tasks import EventProcessor
from workers.registry import Registry
runtime = Runtime(Settings(database_url="sqlite://", broker_url="memory://"))
create_app(runtime=runtime)
EventProcessor(runtime, Registry())
runtime.dispatcher
assert not [m for m, v in sys.modules.items() if m.startswith("opentelemetry.sdk") and v]
on = Runtime(Settings(database_url="sqlite://", broker_url="memory://", otel_enabled=True))
try:
    on.dispatcher
except Exception as exc:
    print(type(exc).__name__, exc)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Then it starts with tracing off, and tracing on names the missing extra
    assert done.returncode == 0, done.stderr
    assert "TracingUnavailable" in done.stdout
    assert "eventbus[otel]" in done.stdout
