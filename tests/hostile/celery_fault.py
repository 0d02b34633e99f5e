"""Loaded by a test's worker through EVENTBUS_HANDLERS (after the integration handlers): Celery
raises, outside any handler, on each message whose task id starts with :data:`FAULT_PREFIX`,
as it did on ``stamped_headers=[[]]`` (``TypeError`` in ``Request.revoked``) before the intake
knew that header. The worker must refuse such a message and go on."""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request

FAULT_PREFIX = "celery-fault-"
_revoked = Request.revoked


def _faulty_revoked(self: Any) -> bool:
    if str(self.id).startswith(FAULT_PREFIX):
        raise TypeError("unhashable type: 'list' (tests.hostile.celery_fault)")
    result: bool = _revoked(self)
    return result


Request.revoked = _faulty_revoked  # type: ignore[method-assign]
