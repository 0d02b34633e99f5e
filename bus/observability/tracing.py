"""OpenTelemetry tracing: one trace from a publish, through the queue, to each event's handler.

Off unless ``EVENTBUS_OTEL_ENABLED`` (which needs the ``otel`` extra). Off, nothing of
OpenTelemetry's SDK is imported, no message gets a header and no span is made: the dispatcher
and the worker hold ``None`` instead of a :class:`Sender` or :class:`Receiver` and look at it
once per send or delivery.

On, the spans are (README, "Tracing"):

* the API's server span (FastAPI's own telemetry), ``POST /system/events``;
* ``send <queue>`` (PRODUCER), one per broker message, made where the dispatcher sends it after
  the commit. Its parent is the span the message's first event was asked for in (the request,
  a worker's event span for a retry, the relay's pass); a group commit puts the publishes of
  several requests in one message, and the send span then links to the other requests' spans;
* ``process <queue>`` (CONSUMER), one per event, around its handler run.

What a message carries (W3C trace context): ``traceparent`` (and ``tracestate``) of its send
span, and ``eventbus_traceparents``, ``{event id: traceparent}``, for the events whose origin is
not the send span's parent (the other requests of a group commit; ``""``: an event with no
origin). An event's process span is a child of its own origin when the map names one, linked to
the send span; else a child of the send span. So each event's spans are one trace with the
request that published it, and a message of one request's events carries two headers.

The tracer provider belongs to the process: :func:`setup` builds it from the ``OTEL_*``
variables (exporter, endpoint, service name, sampler, batch processor), once per process, so a
prefork pool child builds its own (``workers.worker``), as does each uvicorn worker.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Link, Span, Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
EVENT_TRACEPARENTS = "eventbus_traceparents"
"""Message header: ``{event id: traceparent}`` for events whose origin is not the send span's
parent; ``""`` for an event with none."""
MAX_EVENT_TRACEPARENTS = 1000
"""Entries a message's map holds at most (a message of more than this many other requests'
events is a child of the first request's trace past it): keeps a 5,000-id message's headers
well under the intake's envelope cap."""
MAX_TRACEPARENT_CHARS = 128
"""W3C version 00 is 55 characters; later versions may append fields."""
MAX_TRACESTATE_CHARS = 512
INSTRUMENTATION = "eventbus"
_EXPORTER_GROUP = "opentelemetry_traces_exporter"

_lock = threading.Lock()
_provider: TracerProvider | None = None
_pid = 0
_built_here = False
_tracer: tuple[TracerProvider, Tracer] | None = None


class TracingUnavailable(RuntimeError):
    """EVENTBUS_OTEL_ENABLED without the OpenTelemetry SDK, or an exporter it names."""


def require() -> None:
    """Raise :class:`TracingUnavailable` unless the OpenTelemetry SDK can be imported
    (called where a process starts, so a missing extra fails there and not in a pool child)."""
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise TracingUnavailable(
            "EVENTBUS_OTEL_ENABLED=true needs the OpenTelemetry packages: "
            "pip install 'eventbus[otel]'"
        ) from exc


# --- the process's provider ----------------------------------------------------------------


def setup(service_name: str) -> TracerProvider:
    """This process's tracer provider (:func:`build`), made once per process and also made
    OpenTelemetry's global provider, so spans a handler makes (or its libraries do) nest in
    its event's span. A forked child (a prefork pool process) builds its own rather than use
    its parent's."""
    global _provider, _pid, _built_here
    with _lock:
        if _provider is not None and _pid == os.getpid():
            return _provider
        built = build(service_name)
        _provider, _pid, _built_here = built, os.getpid(), True
    from opentelemetry import trace

    trace.set_tracer_provider(built)
    return built


def build(service_name: str) -> TracerProvider:
    """A tracer provider from the standard variables: ``OTEL_TRACES_EXPORTER`` (``otlp`` by
    default, ``console``, ``none``, or any exporter installed under the SDK's entry point
    group), ``OTEL_EXPORTER_OTLP_*`` (read by the exporter: endpoint, headers, protocol…),
    ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (else ``service_name``),
    ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*`` (the batch processor's)."""
    require()
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    built = TracerProvider(resource=resource)
    for exporter in _exporters():
        built.add_span_processor(BatchSpanProcessor(exporter))
    return built


def _exporters() -> list[SpanExporter]:
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    exporters: list[SpanExporter] = []
    for name in (part.strip().lower() for part in names.split(",")):
        if not name or name == "none":
            continue
        if name == "otlp":
            exporters.append(_otlp())
            continue
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
            continue
        found = [ep for ep in entry_points(group=_EXPORTER_GROUP) if ep.name == name]
        if not found:
            raise TracingUnavailable(f"OTEL_TRACES_EXPORTER names {name!r}: no such exporter")
        exporters.append(found[0].load()())
    return exporters


def _otlp() -> SpanExporter:
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter as GrpcExporter,
            )

            grpc: SpanExporter = GrpcExporter()
            return grpc
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter()
    except ImportError as exc:
        package = "grpc" if protocol == "grpc" else "http"
        raise TracingUnavailable(
            f"OTLP over {protocol} needs opentelemetry-exporter-otlp-proto-{package}"
        ) from exc


def use(provider: TracerProvider | None) -> None:
    """Make ``provider`` this process's (tests, embedding), or forget it (None). Not made
    global: OpenTelemetry's global provider can be set once per process."""
    global _provider, _pid, _built_here
    with _lock:
        _provider, _pid, _built_here = provider, os.getpid(), False


def provider() -> TracerProvider:
    """The process's provider; built from the environment on first use if nobody set one."""
    with _lock:
        current = _provider if _pid == os.getpid() else None
    return current if current is not None else setup(INSTRUMENTATION)


def tracer() -> Tracer:
    """The bus's tracer on the process's provider (made once per provider: the SDK makes a
    new one on each ``get_tracer``)."""
    global _tracer
    current = provider()
    cached = _tracer
    if cached is None or cached[0] is not current:
        cached = _tracer = (current, current.get_tracer(INSTRUMENTATION))
    return cached[1]


def flush() -> None:
    """Export what the processors hold (an API process's lifespan ends)."""
    with _lock:
        current = _provider if _pid == os.getpid() else None
    if current is not None:
        current.force_flush()


def shutdown(**_: Any) -> None:
    """Export what is held and stop the provider :func:`setup` built in this process (a pool
    child ends with ``os._exit``, which skips the SDK's own exit hook). A receiver of
    ``worker_process_shutdown``."""
    global _provider
    with _lock:
        current = _provider if _pid == os.getpid() and _built_here else None
        if current is not None:
            _provider = None
    if current is not None:
        current.shutdown()


# --- trace context as text ------------------------------------------------------------------


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, None outside one: where a send or a
    publish was asked for."""
    from opentelemetry import trace

    return _format(trace.get_current_span().get_span_context())


def _format(context: Any) -> str | None:
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _extract(traceparent: str | None, tracestate: str | None = None) -> Context:
    """A context whose parent is ``traceparent`` (an empty one, a root, if it is none or
    malformed: the propagator checks its form)."""
    from opentelemetry.context import Context

    if not traceparent:
        return Context()
    carrier = {TRACEPARENT: traceparent}
    if tracestate:
        carrier[TRACESTATE] = tracestate
    return _propagator().extract(carrier, context=Context())


@functools.cache
def _propagator() -> TraceContextTextMapPropagator:
    """W3C trace context, whatever ``OTEL_PROPAGATORS`` says: it is the messages' format."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


def _link(context: Context) -> Link | None:
    from opentelemetry import trace

    span_context = trace.get_current_span(context).get_span_context()
    return trace.Link(span_context) if span_context.is_valid else None


def messaging_system(broker_url: str) -> str:
    """``messaging.system`` for a broker URL."""
    scheme = broker_url.partition("://")[0].partition("+")[0].lower()
    names = {"amqp": "rabbitmq", "amqps": "rabbitmq", "pyamqp": "rabbitmq", "sentinel": "redis"}
    return names.get(scheme, scheme)


# --- the sender's side ----------------------------------------------------------------------


class Send:
    """A send span in progress, and the headers its message carries."""

    __slots__ = ("_span", "headers")

    def __init__(self, span: Span, headers: dict[str, Any]) -> None:
        self._span = span
        self.headers = headers

    def failed(self, error: BaseException) -> None:
        from opentelemetry.trace import StatusCode

        self._span.record_exception(error)
        self._span.set_status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200])


class Sender:
    """Makes the dispatcher's send spans and the headers that carry them (see the module)."""

    def __init__(self, broker_url: str) -> None:
        require()
        self._system = messaging_system(broker_url)

    def default_origin(self) -> str | None:
        """Where the sends of one ``Dispatcher.send`` were asked for, for those whose
        ``Dispatch`` names none (the unit of work commits in the request's own context)."""
        return current_traceparent()

    @contextmanager
    def sending(
        self, queue: str, module: str, event_ids: Sequence[str], origins: Sequence[str | None]
    ) -> Iterator[Send]:
        """The span of one message's send; ``origins[i]`` is where ``event_ids[i]`` was
        asked for (None: nowhere traced)."""
        from opentelemetry.trace import SpanKind

        first = origins[0]
        links: list[Link] = []
        seen = {first}
        for origin in origins:
            if origin not in seen:
                seen.add(origin)
                link = _link(_extract(origin))
                if link is not None:
                    links.append(link)
        attributes: dict[str, Any] = {
            "messaging.system": self._system,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": queue,
            "eventbus.target_module": module,
        }
        if len(event_ids) == 1:
            attributes["eventbus.event_id"] = event_ids[0]
        else:
            attributes["messaging.batch.message_count"] = len(event_ids)
        with tracer().start_as_current_span(
            f"send {queue}",
            context=_extract(first),
            kind=SpanKind.PRODUCER,
            links=links,
            attributes=attributes,
        ) as span:
            headers: dict[str, Any] = {}
            _propagator().inject(headers)
            if len(seen) > 1:
                others = {
                    event_id: origin or ""
                    for event_id, origin in zip(event_ids, origins, strict=True)
                    if origin != first
                }
                if len(others) > MAX_EVENT_TRACEPARENTS:
                    others = dict(list(others.items())[:MAX_EVENT_TRACEPARENTS])
                headers[EVENT_TRACEPARENTS] = others
            yield Send(span, headers)


# --- the worker's side ----------------------------------------------------------------------


class EventSpan:
    """One event's process span while its handler runs."""

    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    @property
    def traceparent(self) -> str | None:
        """Its context, for a send it asks for (the event's retry continues its trace)."""
        return _format(self._span.get_span_context())

    def outcome(self, outcome: str, error: BaseException | str | None = None) -> None:
        """``processed``, ``failed`` (with the handler's exception) or ``unhandled``."""
        self._span.set_attribute("eventbus.outcome", outcome)
        if error is None:
            return
        from opentelemetry.trace import StatusCode

        if isinstance(error, BaseException):
            self._span.record_exception(error)
            error = f"{type(error).__name__}: {error}"
        self._span.set_status(StatusCode.ERROR, error[:200])


class Delivery:
    """The trace context of one delivery, read from its message's headers."""

    def __init__(
        self,
        receiver: Receiver,
        traceparent: Any,
        tracestate: Any,
        per_event: Any,
        message_id: str | None,
    ) -> None:
        self._receiver = receiver
        self._traceparent = traceparent if isinstance(traceparent, str) else None
        tracestate = tracestate if isinstance(tracestate, str) else None
        self._message = _extract(self._traceparent, tracestate)
        self._message_link = _link(self._message)
        self._per_event: Mapping[str, Any] = per_event if isinstance(per_event, dict) else {}
        self._message_id = message_id
        self._last: EventSpan | None = None

    @property
    def last(self) -> str | None:
        """The traceparent of the last event span, for the send of its retry."""
        return self._last.traceparent if self._last is not None else None

    def origin(self, event_id: object) -> str | None:
        """Where this event's trace goes on from, for a send that carries it on (a batch
        split after a death, the rest of a batch past its time budget)."""
        own = self._per_event.get(str(event_id))
        if isinstance(own, str):
            return own or None
        return self._traceparent

    @contextmanager
    def processing(
        self,
        event_id: object,
        module: str,
        queue: str,
        attributes: Mapping[str, str | int],
    ) -> Iterator[EventSpan]:
        """The process span of one event: a child of its own origin when the message names
        one (linked to the send span), else of the send span. ``attributes`` are added with
        an ``eventbus.`` prefix."""
        from opentelemetry.trace import SpanKind

        own = self._per_event.get(str(event_id))
        links: list[Link] = []
        if isinstance(own, str):
            parent = _extract(own)
            if self._message_link is not None:
                links.append(self._message_link)
        else:
            parent = self._message
        values: dict[str, Any] = {
            "messaging.system": self._receiver.system,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": queue,
            "eventbus.event_id": str(event_id),
            "eventbus.target_module": module,
        }
        if self._message_id:
            values["messaging.message.id"] = self._message_id
        for name, value in attributes.items():
            values[f"eventbus.{name}"] = value
        with tracer().start_as_current_span(
            f"process {queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=values,
        ) as span:
            event_span = self._last = EventSpan(span)
            yield event_span


class Receiver:
    """Reads deliveries' trace context and makes the worker's event spans (see the module)."""

    def __init__(self, broker_url: str) -> None:
        require()
        self.system = messaging_system(broker_url)

    def delivery(self, header: Callable[[str], Any], message_id: str | None) -> Delivery:
        """One delivery's context; ``header(name)`` reads a header of its message."""
        return Delivery(
            self, header(TRACEPARENT), header(TRACESTATE), header(EVENT_TRACEPARENTS), message_id
        )
