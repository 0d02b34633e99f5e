"""The scheduler's SQL: claims on the in-flight set (``event_queue``), held keys, paused modules
and the tenants' usage.

A claim stamps up to N ready rows of one module (``claimed_until``, ``claimed_by``,
``claimed_pid``) in one statement and is committed before any handler runs: a claim still
stamped when its process is gone says that a run was lost (:attr:`Claim.lost`). Which rows:
ready (pending, or failed with its retry's time come), not claimed, of a module not paused, in
per-entity order where the handlers ask for it (no earlier row of the same key waits, unless
it failed for good without holding its key), and, among tenants, by virtual time: a tenant's
k-th candidate comes at ``(used + k * cost) / weight`` (``bus.delivery.fairness``).

PostgreSQL reads each tenant's first N candidates from ``ix_event_queue_target_tenant_created``
(a skip scan finds the tenants) and locks the chosen rows ``FOR UPDATE SKIP LOCKED``, so
claimers running at once share the rows. SQLite (``eventbus dev``, one worker) claims in commit
order, without tenant fairness.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Table,
    TextualSelect,
    Uuid,
    bindparam,
    delete,
    func,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from bus.storage.models import (
    UTCDateTime,
    claim_holders,
    event_queue,
    module_pauses,
    tenant_usage,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_queue: Table = event_queue

HOLD_BLOCK = "block"
HOLD_SKIP = "skip"
HOLD_RELEASED = "released"


@dataclass(frozen=True, slots=True)
class Order:
    """Which of a module's event types run in order per entity: those in ``types``, or with
    ``rest`` every type but those in ``except_types`` (an ordered catch-all handler)."""

    types: tuple[str, ...] = ()
    rest: bool = False
    except_types: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.types) or self.rest


@dataclass(frozen=True, slots=True)
class Usage:
    """A tenant's recorded usage of a module, as stored (decayed by the reader)."""

    tenant_id: uuid.UUID
    seconds: float
    events: float
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed event; ``lost``: why the claim before this one ended with no outcome (its
    process died: the reason :func:`expire` wrote), None when there was none."""

    id: uuid.UUID
    created_at: datetime
    lost: str | None


LEASE_RAN_OUT = (
    "AttemptInterrupted: the worker stopped before this attempt finished (its claim ran out)"
)


def _lost(before: datetime | None, by: str | None, pid: int | None) -> str | None:
    """Why the claim a row carried when claimed again ended: :func:`expire` leaves its reason
    in ``claimed_by`` (and no pid); a claim whose time ran out still names its worker."""
    if before is None:
        return None
    return by if pid is None and by else LEASE_RAN_OUT


# ``ready``: what may run now; ``free``: what no live claim holds; ``in_order``: an event of
# an ordered type whose key has no earlier event waiting. A failed event holds its key while
# a retry is to come, and after its last attempt only when its handler blocks on failure.
_READY = "(q.status = 'pending' OR q.due_at <= :now)"
_FREE = "(q.claimed_until IS NULL OR q.claimed_until < :now)"
_IN_ORDER = (
    "(NOT (q.event_type IN (SELECT value FROM {types}) OR (:rest AND q.event_type NOT IN "
    "(SELECT value FROM {except_types}))) OR NOT EXISTS (SELECT 1 FROM event_queue b "
    "WHERE b.target_module = q.target_module AND b.tenant_id = q.tenant_id "
    "AND b.entity_type = q.entity_type AND b.entity_id = q.entity_id "
    "AND (b.created_at, b.id) < (q.created_at, q.id) AND "
    "(b.status = 'pending' OR b.due_at IS NOT NULL OR b.hold = 'block')))"
)
_LITE_IN_ORDER = _IN_ORDER.format(
    types="json_each(:types)", except_types="json_each(:except_types)"
)
ORDER_WINDOW = 4
"""How many times a claim's size of a tenant's oldest ready events an ordered module's claim
looks among for events whose entity has no earlier one in flight."""
_NOT_PAUSED = "NOT EXISTS (SELECT 1 FROM module_pauses p WHERE p.target_module = :module)"

_PG_KEYED = (
    "({q}.event_type IN (SELECT value FROM unnest(CAST(:types AS text[])) AS t(value)) OR "
    "(:rest AND {q}.event_type NOT IN "
    "(SELECT value FROM unnest(CAST(:except_types AS text[])) AS x(value))))"
)
# An ordered event may be claimed behind earlier events of its key that this claim may take
# too (keyed, ready and free: then in the window, which is a prefix in commit order): a claim
# takes an entity's run of events, not only its first. Any other earlier event in flight
# holds it back (a failed one with no retry to come has no due time: NULL, hence coalesce).
_PG_CHAIN = f"""NOT EXISTS (
    SELECT 1 FROM event_queue b
    WHERE b.target_module = q.target_module AND b.tenant_id = q.tenant_id
      AND b.entity_type = q.entity_type AND b.entity_id = q.entity_id
      AND (b.created_at, b.id) < (q.created_at, q.id)
      AND (b.status = 'pending' OR b.due_at IS NOT NULL OR b.hold = 'block')
      AND NOT coalesce({_PG_KEYED.format(q="b")} AND {_READY.replace("q.", "b.")}
                        AND {_FREE.replace("q.", "b.")}, false))"""  # noqa: S608 - built from the constants above, never from input
ORDER_SHARE = 4
"""A claim of an ordered module takes the runs of at most a quarter of the keys ready in its
window (one at least), oldest first: the module's other claimers find keys of their own."""

_PG_TENANTS = """
WITH RECURSIVE t(tenant_id) AS (
    (SELECT tenant_id FROM event_queue WHERE target_module = :module ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT q.tenant_id FROM event_queue q
            WHERE q.target_module = :module AND q.tenant_id > t.tenant_id
            ORDER BY q.tenant_id LIMIT 1)
    FROM t WHERE t.tenant_id IS NOT NULL
), w AS (
    SELECT * FROM unnest(CAST(:weighted AS uuid[]), CAST(:weights AS float8[]))
        AS w(tenant_id, weight)
), s AS (
    SELECT t.tenant_id,
           coalesce(u.seconds * power(:decay, greatest(
               extract(epoch FROM CAST(:now AS timestamptz) - u.updated_at), 0)), 0)
               / coalesce(w.weight, 1.0) AS base,
           greatest(coalesce(u.seconds / nullif(u.events, 0), :cost), 1e-6)
               / coalesce(w.weight, 1.0) AS step
    FROM t
    LEFT JOIN tenant_usage u ON u.target_module = :module AND u.tenant_id = t.tenant_id
    LEFT JOIN w ON w.tenant_id = t.tenant_id
    -- The claim's commit need not wait for its WAL flush: a claim lost with the server is
    -- claimable again, and the batch's own commit (synchronous) flushes it anyway.
    CROSS JOIN (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
    WHERE t.tenant_id IS NOT NULL AND NOT (t.tenant_id = ANY(CAST(:skip AS uuid[])))
)"""

_PG_WINDOW = f"""SELECT q.* FROM event_queue q
            WHERE q.target_module = :module AND q.tenant_id = s.tenant_id
              AND {_READY} AND {_FREE}
            ORDER BY q.created_at, q.id"""  # noqa: S608 - built from the constants above, never from input

# Each tenant's first candidates, in commit order: unordered, simply its oldest ready events.
_PG_CANDIDATES = f"""
        SELECT q.id, q.tenant_id, q.entity_type, q.entity_id, false AS keyed, 0 AS key_seq,
               row_number() OVER (ORDER BY q.created_at, q.id) AS rank
        FROM ({_PG_WINDOW} LIMIT :limit) q"""  # noqa: S608 - built from the constants above, never from input

# Ordered: a bounded window of the tenant's oldest ready events (the order check probes each,
# so a long backlog of few entities costs a window, not the backlog); of its keys, the share's
# oldest (by their first event), each with its run in the window (``key_seq``: its place).
_PG_ORDERED_CANDIDATES = f"""
        SELECT o.id, o.tenant_id, o.entity_type, o.entity_id, o.keyed, o.key_seq,
               row_number() OVER (ORDER BY o.created_at, o.id) AS rank
        FROM (
            SELECT r.*, max(r.key_rank) OVER (PARTITION BY r.keyed) AS keys
            FROM (
                SELECT h.*,
                       dense_rank() OVER (PARTITION BY h.keyed ORDER BY h.head_at, h.head_id)
                           AS key_rank
                FROM (
                    SELECT k.*, first_value(k.created_at) OVER key AS head_at,
                           first_value(k.id) OVER key AS head_id,
                           row_number() OVER key AS key_seq
                    FROM (
                        SELECT q.id, q.created_at, q.target_module, q.tenant_id,
                               q.entity_type, q.entity_id, {_PG_KEYED.format(q="q")} AS keyed
                        FROM ({_PG_WINDOW} LIMIT :scan) q
                    ) k
                    WHERE NOT k.keyed OR {_PG_CHAIN.replace("q.", "k.")}
                    WINDOW key AS (PARTITION BY k.keyed, k.entity_type, k.entity_id
                                   ORDER BY k.created_at, k.id)
                ) h
            ) r
        ) o
        WHERE NOT o.keyed OR o.key_rank <= greatest(ceil(o.keys / CAST(:share AS float8)), 1)
        ORDER BY o.created_at, o.id
        LIMIT :limit"""  # noqa: S608 - built from the constants above, never from input

_PG_PICK = f"""
, c AS (
    SELECT c.id, c.tenant_id, c.entity_type, c.entity_id, c.keyed, c.key_seq,
           s.base + c.rank * s.step AS vt
    FROM s CROSS JOIN LATERAL ({{candidates}}
    ) c
), picked AS (
    SELECT q.id, q.created_at, c.tenant_id, c.entity_type, c.entity_id, c.keyed, c.key_seq,
           q.claimed_until AS before, q.claimed_by AS before_by, q.claimed_pid AS before_pid
    -- The best candidates, each probed by primary key (BY_INDEX).
    FROM (SELECT * FROM c ORDER BY c.vt LIMIT :limit) c JOIN event_queue q ON q.id = c.id
    WHERE {_READY} AND {_FREE} AND {_NOT_PAUSED}
    ORDER BY c.vt
    LIMIT :limit
    FOR UPDATE OF q SKIP LOCKED
), kept AS ({{kept}}
), holder AS (
    -- Where this process may hold claims (the set's rows have no index on who claimed them).
    INSERT INTO claim_holders (worker, pid, target_module, until)
    SELECT :worker, :pid, :module, :until WHERE EXISTS (SELECT 1 FROM kept)
    ON CONFLICT (worker, pid, target_module) DO UPDATE SET until = excluded.until
)
UPDATE event_queue q SET claimed_until = :until, claimed_by = :worker, claimed_pid = :pid
FROM kept WHERE q.id = kept.id
RETURNING q.id, q.created_at, kept.before, kept.before_by, kept.before_pid
"""  # noqa: S608 - built from the constants above, never from input


# An entity's run keeps only its part before a row the claim could not take (locked by another
# claimer, or taken meanwhile): nothing of a key runs ahead of an earlier event.
_PG_KEPT = """
    SELECT * FROM (
        SELECT p.*, row_number() OVER (
            PARTITION BY p.keyed, p.tenant_id, p.entity_type, p.entity_id
            ORDER BY p.created_at, p.id) AS pick_seq
        FROM picked p
    ) p WHERE NOT p.keyed OR p.pick_seq = p.key_seq"""


def _pg_claim(candidates: str, kept: str) -> TextualSelect:
    sql = _PG_TENANTS + _PG_PICK.format(candidates=candidates, kept=kept)
    return text(sql).columns(id=Uuid(), created_at=UTCDateTime(), before=UTCDateTime())


BY_INDEX = text(
    "SELECT set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)"
)
"""Before a claim, in its transaction: its few hundred rows are joined to the set by primary
key. With hash or merge joins allowed the planner read the whole set instead once it held some
10,000 rows (cheaper on paper than 500 index probes): a claim of 500 on a 100k backlog took
77 ms, 7 ms by index."""

_PG_CLAIM = _pg_claim(_PG_CANDIDATES, " SELECT * FROM picked")
_PG_CLAIM_ORDERED = _pg_claim(_PG_ORDERED_CANDIDATES, _PG_KEPT)
"""One statement: the module's tenants (a skip scan, one index probe each), each one's share
from its decayed usage and weight, its first candidates, the chosen ones locked and stamped,
and the process's row of ``claim_holders``."""

_LITE_CLAIM = text(
    f"""
SELECT q.id, q.created_at, q.claimed_until AS before, q.claimed_by AS before_by,
       q.claimed_pid AS before_pid
FROM event_queue q
WHERE q.target_module = :module AND {_READY} AND {_FREE} AND {_NOT_PAUSED}
  AND (NOT :ordered OR {_LITE_IN_ORDER})
  AND q.tenant_id NOT IN (SELECT value FROM json_each(:skip))
ORDER BY q.created_at, q.id LIMIT :limit
"""  # noqa: S608 - built from the constants above, never from input
).columns(id=Uuid(), created_at=UTCDateTime(), before=UTCDateTime())

_TIMES = (bindparam("now", type_=UTCDateTime()), bindparam("until", type_=UTCDateTime()))


def claim(
    session: Session,
    module: str,
    order: Order,
    *,
    weights: Mapping[uuid.UUID, float],
    decay: float,
    cost: float,
    now: datetime,
    until: datetime,
    worker: str,
    pid: int,
    limit: int,
    skip: Collection[uuid.UUID] = (),
) -> list[Claim]:
    """Claim up to ``limit`` ready events of ``module`` for ``worker`` (process ``pid``) until
    ``until``, none of the tenants in ``skip``; the caller commits. On PostgreSQL in
    virtual-time order across tenants (their usage decayed by ``decay`` a second, divided by
    ``weights``; ``cost``: the cost of an event of a tenant with no usage yet), each tenant's in
    commit order; on SQLite in commit order."""
    connection = session.connection()
    params: dict[str, Any] = {
        "module": module,
        "now": now,
        "until": until,
        "worker": worker,
        "pid": pid,
        "limit": limit,
        "scan": limit * ORDER_WINDOW,
        "ordered": order.any,
        "rest": order.rest,
    }
    if connection.dialect.name == "postgresql":
        params.update(
            weighted=list(weights),
            weights=list(weights.values()),
            decay=decay,
            cost=cost,
            types=list(order.types),
            except_types=list(order.except_types),
            skip=list(skip),
        )
        stmt = (_PG_CLAIM_ORDERED if order.any else _PG_CLAIM).bindparams(*_TIMES)
        connection.execute(BY_INDEX)
        rows = connection.execute(stmt, {**params, "share": ORDER_SHARE})
        got = [Claim(r.id, r.created_at, _lost(r.before, r.before_by, r.before_pid)) for r in rows]
        return sorted(got, key=_commit_order)
    params.update(
        types=json.dumps(list(order.types)),
        except_types=json.dumps(list(order.except_types)),
        skip=json.dumps([tenant.hex for tenant in skip]),  # how SQLite stores a Uuid
    )
    found = connection.execute(_LITE_CLAIM.bindparams(_TIMES[0]), params)
    claims = [Claim(r.id, r.created_at, _lost(r.before, r.before_by, r.before_pid)) for r in found]
    claims.sort(key=_commit_order)
    if claims:
        stamp(session, module, [c.id for c in claims], worker, pid, until)
    return claims


def _commit_order(claim: Claim) -> tuple[datetime, uuid.UUID]:
    return claim.created_at, claim.id


def stamp(
    session: Session,
    module: str,
    event_ids: Collection[uuid.UUID],
    worker: str,
    pid: int,
    until: datetime,
) -> None:
    """Claim these rows of ``module`` for ``worker``'s process ``pid`` (again: after a status
    change cleared the claim), and note the process as a holder of the module's claims."""
    if not event_ids:
        return
    session.execute(
        update(_queue)
        .where(_queue.c.id.in_(list(event_ids)))
        .values(claimed_until=until, claimed_by=worker, claimed_pid=pid)
    )
    _hold(session, module, worker, pid, until)


def _hold(session: Session, module: str, worker: str, pid: int, until: datetime) -> None:
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(claim_holders).values(worker=worker, pid=pid, target_module=module, until=until)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["worker", "pid", "target_module"], set_={"until": stmt.excluded.until}
        )
    )


def release(session: Session, event_ids: Collection[uuid.UUID], worker: str) -> None:
    """Give back claims of ``worker`` that were not run (no run was lost)."""
    if event_ids:
        session.execute(
            update(_queue)
            .where(_queue.c.id.in_(list(event_ids)), _queue.c.claimed_by == worker)
            .values(claimed_until=None, claimed_by=None, claimed_pid=None)
        )


def end(
    session: Session, lost: Collection[tuple[uuid.UUID, str]], worker: str, now: datetime
) -> None:
    """End ``worker``'s claims of these rows as :func:`expire` ends a dead process's: stamped
    with the reason their run was lost and no pid, so the next claim says :attr:`Claim.lost`."""
    for event_id, reason in lost:
        session.execute(
            update(_queue)
            .where(_queue.c.id == event_id, _queue.c.claimed_by == worker)
            .values(claimed_until=now, claimed_by=reason[:255], claimed_pid=None)
        )


def release_pid(session: Session, worker: str, pid: int) -> None:
    """Give back every claim of ``worker``'s process ``pid``."""
    h = claim_holders.c
    modules = select(h.target_module).where(h.worker == worker, h.pid == pid)
    session.execute(
        update(_queue)
        .where(
            _queue.c.target_module.in_(modules),
            _queue.c.claimed_by == worker,
            _queue.c.claimed_pid == pid,
        )
        .values(claimed_until=None, claimed_by=None, claimed_pid=None)
    )
    session.execute(delete(claim_holders).where(h.worker == worker, h.pid == pid))


def claimed_pids(session: Session, worker: str, now: datetime) -> set[int]:
    """The processes of ``worker`` that may hold live claims (they claimed within a lease)."""
    h = claim_holders.c
    stmt = select(h.pid).where(h.worker == worker, h.until >= now).distinct()
    return set(session.scalars(stmt))


@dataclass(frozen=True, slots=True)
class Expired:
    """A claim ended because its process died: the event's module and type, and whether it
    has no run to come (failed with its attempts spent: the run that died was its last)."""

    id: uuid.UUID
    target_module: str
    event_type: str
    spent: bool


def expire(
    session: Session,
    now: datetime,
    reason: str,
    *,
    worker: str | None = None,
    pids: Collection[int] = (),
    unless_workers: Collection[str] | None = None,
    modules: Collection[str] | None = None,
) -> list[Expired]:
    """End live claims whose process is gone: those of ``worker``'s ``pids``, or (with
    ``unless_workers``) of every worker not in it, in ``modules``. Their rows stay stamped
    (``claimed_until = now``, ``claimed_by = reason``, no pid), so the next claim knows a run
    was lost, and why; a row with no run to come is unstamped instead (nothing will claim it).

    The holders of such claims come from ``claim_holders`` (a few rows); only when there are
    some are the set's rows of their modules read, once per death."""
    h = claim_holders.c
    # Holders whose claims all ran out have nothing to end: the next claim counts those.
    session.execute(delete(claim_holders).where(h.until < now))
    found = select(h.worker, h.pid, h.target_module)
    if worker is not None:
        found = found.where(h.worker == worker, h.pid.in_(list(pids)))
    if unless_workers is not None:
        found = found.where(h.worker.not_in(list(unless_workers)))
    if modules is not None:
        found = found.where(h.target_module.in_(list(modules)))
    holders = [(w, p, m) for w, p, m in session.execute(found)]
    if not holders:
        return []
    c = _queue.c
    values = {"claimed_until": now, "claimed_by": reason[:255], "claimed_pid": None}
    spent = (c.status == "failed") & c.due_at.is_(None)
    ended: list[Expired] = []
    for module, of_module in _by_module(holders).items():
        rows = session.execute(
            update(_queue)
            .where(
                c.target_module == module,
                c.claimed_until > now,
                tuple_(c.claimed_by, c.claimed_pid).in_(of_module),
            )
            .values(values)
            .returning(c.id, c.target_module, c.event_type, spent)
        ).all()
        ended += [Expired(r[0], r[1], r[2], bool(r[3])) for r in rows]
        session.execute(
            delete(claim_holders).where(
                h.target_module == module, tuple_(h.worker, h.pid).in_(of_module)
            )
        )
    done = [e.id for e in ended if e.spent]
    if done:
        session.execute(
            update(_queue)
            .where(_queue.c.id.in_(done))
            .values(claimed_until=None, claimed_by=None, claimed_pid=None)
        )
    return ended


def _by_module(holders: Sequence[tuple[str, int, str]]) -> dict[str, list[tuple[str, int]]]:
    by_module: dict[str, list[tuple[str, int]]] = {}
    for worker, pid, module in holders:
        by_module.setdefault(module, []).append((worker, pid))
    return by_module


def set_hold(session: Session, holds: Collection[tuple[uuid.UUID, str]]) -> None:
    """Mark failed events of ordered handlers: ``block`` holds their key, ``skip`` not."""
    for hold in {h for _, h in holds}:
        ids = [event_id for event_id, h in holds if h == hold]
        session.execute(update(_queue).where(_queue.c.id.in_(ids)).values(hold=hold))


def ready_modules(
    session: Session, modules: Collection[str], now: datetime, grace: float = 0.0
) -> dict[str, uuid.UUID]:
    """Those of ``modules`` not paused with an event that could be claimed now (ready and
    free; per-entity order aside) and due for ``grace`` seconds at least (a pending event is
    due from its creation), each with one such event's id."""
    found: dict[str, uuid.UUID] = {}
    q = _queue
    due = now - timedelta(seconds=grace)
    for module in sorted(modules):
        ready = (
            select(q.c.id)
            .where(
                q.c.target_module == module,
                q.c.due_at <= due,
                q.c.claimed_until.is_(None) | (q.c.claimed_until < now),
            )
            .limit(1)
        )
        event_id = session.scalars(ready).first()
        if event_id is not None:
            found[module] = event_id
    if found:
        for module in paused(session, list(found)):
            del found[module]
    return found


_PG_MODULES = text(
    """
WITH RECURSIVE m(target_module) AS (
    (SELECT target_module FROM event_queue ORDER BY target_module LIMIT 1)
    UNION ALL
    SELECT (SELECT q.target_module FROM event_queue q WHERE q.target_module > m.target_module
            ORDER BY q.target_module LIMIT 1)
    FROM m WHERE m.target_module IS NOT NULL
)
SELECT target_module FROM m WHERE target_module IS NOT NULL
"""
)


def modules_in_flight(session: Session) -> list[str]:
    """Every module with an event in flight (PostgreSQL: a skip scan, one probe a module)."""
    if session.get_bind().dialect.name == "postgresql":
        return list(session.scalars(_PG_MODULES))
    stmt = select(_queue.c.target_module).distinct().order_by(_queue.c.target_module)
    return list(session.scalars(stmt))


# --- paused modules ---------------------------------------------------------------------------


def pause(session: Session, module: str, now: datetime, reason: str | None) -> bool:
    """Pause ``module``; False if it was paused already (the first pause is kept)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(module_pauses).values(target_module=module, paused_at=now, reason=reason)
    result = session.execute(stmt.on_conflict_do_nothing(index_elements=["target_module"]))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def resume(session: Session, module: str) -> bool:
    """Resume ``module``; False if it was not paused."""
    result = session.execute(delete(module_pauses).where(module_pauses.c.target_module == module))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def paused(
    session: Session, modules: Collection[str] | None = None
) -> dict[str, tuple[datetime, str | None]]:
    """Paused modules (of ``modules``, or all): when, and why."""
    stmt = select(module_pauses.c.target_module, module_pauses.c.paused_at, module_pauses.c.reason)
    if modules is not None:
        stmt = stmt.where(module_pauses.c.target_module.in_(list(modules)))
    return {m: (at, reason) for m, at, reason in session.execute(stmt)}


# --- usage --------------------------------------------------------------------------------------


def add_usage(
    session: Session,
    module: str,
    used: Sequence[tuple[uuid.UUID, float, float]],
    now: datetime,
    decay: float,
) -> None:
    """Add each tenant's handler seconds and events of a batch to its usage in ``module``,
    after decaying what is stored by ``decay`` per second elapsed (``0.5 ** (1 / half-life)``).
    """
    if not used:
        return
    dialect = session.get_bind().dialect.name
    rows: list[dict[str, Any]] = [
        {"target_module": module, "tenant_id": t, "seconds": s, "events": n, "updated_at": now}
        for t, s, n in used
    ]
    if dialect == "postgresql":
        stmt = postgresql.insert(tenant_usage).values(rows)
        age = func.extract("epoch", stmt.excluded.updated_at - tenant_usage.c.updated_at)
        keep = func.power(decay, func.greatest(age, 0))
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["target_module", "tenant_id"],
                set_={
                    "seconds": tenant_usage.c.seconds * keep + stmt.excluded.seconds,
                    "events": tenant_usage.c.events * keep + stmt.excluded.events,
                    "updated_at": stmt.excluded.updated_at,
                },
            )
        )
        return
    # SQLite (one worker): read, decay in Python, write.
    stored = {u.tenant_id: u for u in tenants_usage(session, module)}
    for row in rows:
        old = stored.get(row["tenant_id"])
        if old is not None:
            keep_ = decay ** max((now - old.updated_at).total_seconds(), 0.0)
            row["seconds"] += old.seconds * keep_
            row["events"] += old.events * keep_
        session.execute(
            sqlite.insert(tenant_usage)
            .values(row)
            .on_conflict_do_update(
                index_elements=["target_module", "tenant_id"],
                set_={k: row[k] for k in ("seconds", "events", "updated_at")},
            )
        )


def tenants_usage(session: Session, module: str) -> list[Usage]:
    """Every tenant's stored usage of ``module``."""
    u = tenant_usage.c
    rows = session.execute(
        select(u.tenant_id, u.seconds, u.events, u.updated_at).where(u.target_module == module)
    )
    return [Usage(*r) for r in rows]


# --- held keys ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeldKey:
    """An entity whose events wait behind a failed one (an ordered handler that blocks)."""

    tenant_id: uuid.UUID
    target_module: str
    entity_type: str
    entity_id: str
    event_id: uuid.UUID
    event_type: str
    held_since: datetime
    waiting: int


def held_keys(
    session: Session, tenant_id: uuid.UUID | None, module: str | None = None, limit: int = 100
) -> list[HeldKey]:
    """Keys held by a failed event (the oldest failure of each key), oldest first, with how
    many events of the key wait behind it."""
    h = _queue.alias("h")
    b = _queue.alias("b")
    waiting = (
        select(func.count())
        .where(
            b.c.target_module == h.c.target_module,
            b.c.tenant_id == h.c.tenant_id,
            b.c.entity_type == h.c.entity_type,
            b.c.entity_id == h.c.entity_id,
            b.c.created_at > h.c.created_at,
        )
        .scalar_subquery()
    )
    stmt = select(
        h.c.tenant_id,
        h.c.target_module,
        h.c.entity_type,
        h.c.entity_id,
        h.c.id,
        h.c.event_type,
        h.c.created_at,
        waiting,
    ).where(h.c.hold == HOLD_BLOCK, h.c.status == "failed", h.c.due_at.is_(None))
    if tenant_id is not None:
        stmt = stmt.where(h.c.tenant_id == tenant_id)
    if module is not None:
        stmt = stmt.where(h.c.target_module == module)
    stmt = stmt.order_by(h.c.created_at, h.c.id).limit(limit)
    return [HeldKey(*row) for row in session.execute(stmt)]


def release_key(session: Session, event_id: uuid.UUID, tenant_id: uuid.UUID | None) -> str | None:
    """Let the key held by failed event ``event_id`` move on (the event stays failed); returns
    its module, or None if the event holds no key (in ``tenant_id``; any when None)."""
    stmt = update(_queue).where(_queue.c.id == event_id, _queue.c.hold == HOLD_BLOCK)
    if tenant_id is not None:
        stmt = stmt.where(_queue.c.tenant_id == tenant_id)
    result = session.execute(
        stmt.values(hold=HOLD_RELEASED).returning(_queue.c.target_module)
    ).first()
    return None if result is None else str(result[0])


def in_flight(session: Session, event_id: uuid.UUID, tenant_id: uuid.UUID | None) -> bool:
    """Whether event ``event_id`` (of ``tenant_id``; any when None) is in the in-flight set."""
    stmt = select(_queue.c.id).where(_queue.c.id == event_id)
    if tenant_id is not None:
        stmt = stmt.where(_queue.c.tenant_id == tenant_id)
    return session.execute(stmt).first() is not None


def held_counts(session: Session) -> dict[str, int]:
    """Held keys per module (the metric)."""
    stmt = (
        select(_queue.c.target_module, func.count())
        .where(_queue.c.hold == HOLD_BLOCK, _queue.c.status == "failed", _queue.c.due_at.is_(None))
        .group_by(_queue.c.target_module)
    )
    return {m: int(n) for m, n in session.execute(stmt)}


__all__ = [
    "Claim",
    "HeldKey",
    "Order",
    "Usage",
    "claim",
    "expire",
    "release",
    "stamp",
]
