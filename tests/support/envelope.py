"""The one check of a response's status and of the seed's error envelope."""

from __future__ import annotations

from typing import Any

from httpx import Response


def assert_envelope(
    response: Response, status: int | tuple[int, ...], message: str | None = None
) -> dict[str, Any]:
    """The status is ``status`` (or one of them); an error (4xx, 5xx) is exactly the seed's
    envelope ``{"success": false, "message": "..."}`` (no ``detail``, no extra key), with
    ``message`` to the letter when given. Returns the body."""
    allowed = (status,) if isinstance(status, int) else status
    assert response.status_code in allowed, (response.status_code, response.text)
    body: dict[str, Any] = response.json()
    if response.status_code >= 400:
        assert set(body) == {"success", "message"}, body
        assert body["success"] is False and isinstance(body["message"], str), body
        if message is not None:
            assert body["message"] == message, body
    else:
        assert message is None, f"a message is checked on an error only ({response.status_code})"
    return body
