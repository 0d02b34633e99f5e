"""A webhook delivery as the API shows it (an event's detail, an endpoint's deliveries)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bus.events.schemas import format_timestamp


def delivery_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """One (event, endpoint) outcome: ``status`` acknowledged, failed or waiting; ``requests``
    sent in all; the last request's status code and error."""
    return {
        "event_id": str(row["event_id"]),
        "endpoint_id": str(row["endpoint_id"]),
        "status": row["status"],
        "requests": row["requests"],
        "last_status_code": row["last_status_code"],
        "last_error": row["last_error"],
        "last_attempt_at": format_timestamp(row["last_attempt_at"]),
        "acknowledged_at": format_timestamp(row["acknowledged_at"]),
    }
