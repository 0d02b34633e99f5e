"""Idempotency keys: a publish's ``Idempotency-Key`` header and the SQL of its table.

The IETF draft "The Idempotency-Key HTTP Header Field", with Stripe's API as the model. A
publish carrying a key runs in a transaction of its own that first takes a transaction-level
advisory lock on (tenant, key) without waiting (``pg_try_advisory_xact_lock``): not taken, a
request with that key is in flight (409). Taken, the key's row decides: the same fingerprint is
answered the stored response again, another is a 422; no row (or an expired one), the event(s)
and the key's row are written in that one transaction, so a commit holds both or neither and a
retry after the API died between commit and answer finds the row. The lock goes with the
commit or rollback, and a commit is visible before its locks are released, so the next holder
reads the row. A request refused before anything is stored (4xx) stores no key.

SQLite (``eventbus dev``) has no advisory locks; it needs none: every write transaction there
is ``BEGIN IMMEDIATE`` (``bus.storage.db``), so a second request with a key waits for the first to
commit and is answered the replay (never a 409).

Kept apart from ``bus/storage/event_store.py``: a table of requests, not of events.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Table, delete, select, text, tuple_

from bus.storage.models import idempotency_keys

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_table: Table = idempotency_keys


PURGE_BATCH = 1000
"""Expired keys deleted per relay pass at most: a pass stays short whatever piled up."""


def lock_id(tenant_id: uuid.UUID, key: str) -> int:
    """The advisory lock's 64-bit id for (tenant, key): the first 8 bytes of a sha256, signed
    (a collision between two live keys would only make one of them wait for a 409's retry)."""
    digest = hashlib.sha256(b"eventbus.idempotency\x00" + tenant_id.bytes + key.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:id)")


def try_lock(session: Session, tenant_id: uuid.UUID, key: str) -> bool:
    """Take (tenant, key)'s lock until the transaction ends, without waiting; ``False``: another
    transaction holds it. Always ``True`` off PostgreSQL (see the module's docstring)."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.execute(_TRY_LOCK, {"id": lock_id(tenant_id, key)}).scalar_one())


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """What a key's first request was answered."""

    fingerprint: str
    status_code: int
    body: str


def find(session: Session, tenant_id: uuid.UUID, key: str, now: datetime) -> StoredResponse | None:
    """The unexpired response stored for (tenant, key), if any."""
    row = session.execute(
        select(_table.c.fingerprint, _table.c.status_code, _table.c.response).where(
            _table.c.tenant_id == tenant_id,
            _table.c.key == key,
            _table.c.expires_at > now,
        )
    ).one_or_none()
    if row is None:
        return None
    return StoredResponse(row.fingerprint, row.status_code, row.response)


def store(
    session: Session,
    tenant_id: uuid.UUID,
    key: str,
    response: StoredResponse,
    now: datetime,
    ttl: timedelta,
) -> None:
    """Keep ``response`` for (tenant, key) until ``now + ttl``, replacing an expired row the
    purge has not reached yet (the caller holds the key's lock)."""
    session.execute(delete(_table).where(_table.c.tenant_id == tenant_id, _table.c.key == key))
    session.execute(
        _table.insert().values(
            tenant_id=tenant_id,
            key=key,
            fingerprint=response.fingerprint,
            status_code=response.status_code,
            response=response.body,
            created_at=now,
            expires_at=now + ttl,
        )
    )


def purge_expired(session: Session, now: datetime, limit: int = PURGE_BATCH) -> int:
    """Delete up to ``limit`` expired keys; returns how many. Several relays may purge at once:
    each takes rows no other holds (SKIP LOCKED on PostgreSQL)."""
    expired = (
        select(_table.c.tenant_id, _table.c.key)
        .where(_table.c.expires_at <= now)
        .order_by(_table.c.expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = session.execute(
        delete(_table).where(tuple_(_table.c.tenant_id, _table.c.key).in_(expired))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
