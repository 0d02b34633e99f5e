"""Domain errors: each carries the HTTP status and the seed's exact message."""

from __future__ import annotations


class BusError(Exception):
    """An error a client sees as ``{"success": false, "message": ...}``."""

    status_code = 400
    message = "Bad request"

    def __init__(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        super().__init__(self.message)


class FieldRequired(BusError):
    def __init__(self, field: str) -> None:
        self.field = field
        super().__init__(f"Field required {field}")


class InvalidField(BusError):
    def __init__(self, field: str) -> None:
        self.field = field
        super().__init__(f"Invalid {field}")


class UnknownQueryParameter(BusError):
    """A query parameter the call does not take (the message does not echo its name)."""

    message = "Unknown query parameter"


class InvalidStatus(BusError):
    message = "Invalid status"


class EventDataNotObject(BusError):
    message = "Event data must be object"


class EventDataTooLarge(BusError):
    status_code = 413
    message = "Event data too large"


class BodyTooLarge(BusError):
    status_code = 413
    message = "Request body too large"


class InvalidJSONBody(BusError):
    message = "Invalid JSON body"


class DuplicateKey(BusError):
    """A JSON object of the body names a key twice (the message does not echo it)."""

    message = "Duplicate key in JSON body"


class EventNotFound(BusError):
    status_code = 404
    message = "Event not found"


class AuthenticationRequired(BusError):
    status_code = 401
    message = "Authentication required"


class InvalidToken(BusError):
    status_code = 401
    message = "Invalid token"


class InsufficientPermissions(BusError):
    status_code = 403
    message = "Insufficient permissions"


class NotReady(BusError):
    """``/readyz``: a dependency the bus needs does not answer; the message names it."""

    status_code = 503

    def __init__(self, down: list[str]) -> None:
        super().__init__(f"Not ready: {' and '.join(down)} unreachable")


class TooManyEvents(BusError):
    message = "Too many events"


class EventsNotArray(BusError):
    message = "Events must be array"


class BatchItemInvalid(BusError):
    """An item of ``POST /system/events/batch`` failed the publish's rules: its message, with
    the item's place (``events[7]: Field required entity_id``); always a 400."""

    def __init__(self, index: int, error: BusError) -> None:
        super().__init__(f"events[{index}]: {error.message}")


class InvalidIdempotencyKey(BusError):
    """An ``Idempotency-Key`` header that is not 1 to 255 printable ASCII characters, or two."""

    message = "Invalid Idempotency-Key"


class IdempotencyKeyInProgress(BusError):
    """The first request with this key has not been answered yet: retry later."""

    status_code = 409
    message = "A request with this idempotency key is in progress"


class IdempotencyKeyReused(BusError):
    """The key was used for another request (another body or path) within its TTL."""

    status_code = 422
    message = "Idempotency key reused with a different request"


class InvalidCursor(BusError):
    """A list cursor this bus did not make for this tenant and these filters (altered, made
    up, another list's), or given with ``page``."""

    message = "Invalid cursor"


class UnknownBodyField(BusError):
    """A body field the call does not take (the message does not echo its name): a typo'd
    replay filter must not widen what is replayed."""

    message = "Unknown body field"


class DatabaseUnavailable(BusError):
    """The database could not be reached, or the connection broke mid-request: nothing was
    stored unless a retry (with the same ``Idempotency-Key``) finds it so."""

    status_code = 503
    message = "Database unavailable: retry"


class SchemaNotCurrent(BusError):
    """The database lacks migrations this code needs (``eventbus migrate`` has not run): the
    request is not one to fix, only to retry once it has."""

    status_code = 503
    message = "Database schema is not up to date"
