"""Spans as the tracing tests read them: from the SDK's in-memory exporter (this process) and
from a tiny OTLP/HTTP receiver on loopback (``eventbus worker`` subprocesses export there with
the SDK's own OTLP exporter, configured by the standard ``OTEL_*`` variables)."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bus.observability import tracing
from tests.support.processes import wait_for

# OTLP's SpanKind numbers, as the SDK's names them.
KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass(frozen=True)
class SpanRecord:
    """One finished span, wherever it was exported from; ids in lowercase hex."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    kind: str
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]
    service: str
    status: str = "UNSET"

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-01"


@dataclass
class SpanStore:
    """Spans collected so far, safe to read while they arrive."""

    _spans: list[SpanRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, spans: Iterable[SpanRecord]) -> None:
        with self._lock:
            self._spans.extend(spans)

    def all(self) -> list[SpanRecord]:
        with self._lock:
            return list(self._spans)

    def where(self, **attributes: Any) -> list[SpanRecord]:
        return [
            s for s in self.all() if all(s.attributes.get(k) == v for k, v in attributes.items())
        ]

    def wait_for(self, count: int, timeout: float, **attributes: Any) -> list[SpanRecord]:
        """The spans whose attributes hold ``attributes``, once there are ``count`` of them."""
        found: list[SpanRecord] = []

        def enough() -> bool:
            found[:] = self.where(**attributes)
            return len(found) >= count

        wait_for(enough, timeout, f"{count} spans with {attributes} never arrived: {self.all()}")
        return found


def from_sdk(span: ReadableSpan) -> SpanRecord:
    context = span.get_span_context()
    assert context is not None
    return SpanRecord(
        name=span.name,
        trace_id=f"{context.trace_id:032x}",
        span_id=f"{context.span_id:016x}",
        parent_id=f"{span.parent.span_id:016x}" if span.parent else None,
        kind=span.kind.name,
        attributes=dict(span.attributes or {}),
        links=tuple(
            (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") for link in span.links
        ),
        service=str(span.resource.attributes.get("service.name", "")),
        status=span.status.status_code.name,
    )


@contextmanager
def in_memory() -> Iterator[Callable[[], list[SpanRecord]]]:
    """This process's provider exports to memory for the block (``bus.observability.tracing.use``);
    yields
    how to read what it exported."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield lambda: [from_sdk(span) for span in exporter.get_finished_spans()]
    finally:
        tracing.use(None)
        provider.shutdown()


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _records(request: ExportTraceServiceRequest) -> Iterator[SpanRecord]:
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield SpanRecord(
                    name=span.name,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_id=span.parent_span_id.hex() or None,
                    kind=KINDS.get(span.kind, str(span.kind)),
                    attributes={a.key: _value(a.value) for a in span.attributes},
                    links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                    service=str(resource.get("service.name", "")),
                    status={0: "UNSET", 1: "OK", 2: "ERROR"}.get(span.status.code, "?"),
                )


class OtlpReceiver:
    """``POST /v1/traces`` (OTLP/HTTP, protobuf) on 127.0.0.1, keeping every span it is sent;
    use it as a context manager. ``endpoint`` is for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""

    def __init__(self) -> None:
        self.spans = SpanStore()
        store = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                store.add(_records(request))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
