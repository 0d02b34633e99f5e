"""Structured JSON logs that carry the request id, tenant and event of the work at hand.

A :func:`log_context` opens a scope (an HTTP request, a task run); every record logged inside it,
in any thread that inherited the context, carries the scope's ids. :func:`bind` adds to the
innermost scope in place, so a tenant learnt deep in a request's worker thread still shows on
the request's later records.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_NO_SCOPE: dict[str, str] = {}
_CONTEXT: ContextVar[dict[str, str]] = ContextVar("eventbus_log_context", default=_NO_SCOPE)
CONTEXT_KEYS = ("request_id", "tenant_id", "event_id")


def _strings(values: dict[str, object]) -> dict[str, str]:
    return {k: str(v) for k, v in values.items() if v is not None}


@contextmanager
def log_context(**values: object) -> Iterator[None]:
    """Attach ``request_id`` / ``tenant_id`` / ``event_id`` to every record logged inside."""
    token = _CONTEXT.set({**_CONTEXT.get(), **_strings(values)})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind(**values: object) -> None:
    """Add to the current scope once a value is known (e.g. the tenant, after auth).

    Outside any :func:`log_context` it does nothing: a value set there would stick to the
    thread's unrelated later work.
    """
    scope = _CONTEXT.get()
    if scope is not _NO_SCOPE:
        scope.update(_strings(values))


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


TEXT_FORMAT = "%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s"


def wants_json(log_format: str) -> bool:
    """``json``, ``text``, or ``auto``: JSON unless a person is reading stderr on a terminal."""
    if log_format == "auto":
        return not sys.stderr.isatty()
    return log_format == "json"


def configure(level: str = "INFO", *, json_output: bool = True) -> None:
    """Route the root logger to stderr, as JSON unless a person is reading a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_output else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def dict_config(level: str = "INFO", *, json_output: bool = True) -> dict[str, Any]:
    """The same set-up as a ``logging.config.dictConfig`` dict, for uvicorn's ``log_config``:
    uvicorn applies it in each worker process it starts, and its own loggers join the root's."""
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if json_output else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"eventbus": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "eventbus",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
