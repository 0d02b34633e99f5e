"""The errors a caller of the bus sees, from the client (:mod:`eventbus.client`) and from the
outbox (:mod:`eventbus.outbox`): each carries the HTTP status and the API's exact message."""

from __future__ import annotations


class EventBusError(Exception):
    """The bus refused or failed a call: ``status`` (None when no answer came) and ``message``,
    the ``message`` of the API's ``{"success": false, ...}`` envelope."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"{status} {message}" if status is not None else message)
        self.status = status
        self.message = message


class AuthError(EventBusError):
    """401 (no, or a bad, token) or 403 (not allowed, another tenant)."""


class NotFound(EventBusError):
    """404 ``Event not found``."""


class InvalidRequest(EventBusError):
    """400, 413 or 422: the request itself is wrong (``Field required event_type``…)."""


class Conflict(EventBusError):
    """409: a request with the same Idempotency-Key is still in progress."""


class ServerError(EventBusError):
    """5xx, or no answer at all (``status`` None) once the client's retries are spent."""


def error_for(status: int | None, message: str) -> EventBusError:
    """The exception class that names ``status``."""
    if status in (401, 403):
        return AuthError(status, message)
    if status == 404:
        return NotFound(status, message)
    if status in (400, 413, 422):
        return InvalidRequest(status, message)
    if status == 409:
        return Conflict(status, message)
    if status is None or status >= 500:
        return ServerError(status, message)
    return EventBusError(status, message)
