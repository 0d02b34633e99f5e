"""Structured JSON logs that carry the request id, tenant and event of the work at hand."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_CONTEXT: ContextVar[dict[str, str]] = ContextVar("eventbus_log_context", default={})  # noqa: B039
CONTEXT_KEYS = ("request_id", "tenant_id", "event_id")


@contextmanager
def log_context(**values: object) -> Iterator[None]:
    """Attach ``request_id`` / ``tenant_id`` / ``event_id`` to every record logged inside."""
    merged = {**_CONTEXT.get(), **{k: str(v) for k, v in values.items() if v is not None}}
    token = _CONTEXT.set(merged)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind(**values: object) -> None:
    """Add to the current context without a ``with`` block (e.g. once the tenant is known)."""
    _CONTEXT.set({**_CONTEXT.get(), **{k: str(v) for k, v in values.items() if v is not None}})


def current() -> dict[str, str]:
    return dict(_CONTEXT.get())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_CONTEXT.get())
        for key in CONTEXT_KEYS:
            value = record.__dict__.get(key)
            if value is not None:
                entry[key] = str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "INFO", *, json_output: bool = True) -> None:
    """Route the root logger to stderr, as JSON unless a person is reading a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json_output
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
