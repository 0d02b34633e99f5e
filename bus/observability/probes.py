"""What operators' tools ask a running bus: is it ready (``/readyz``), what is waiting (the
backlog gauges of ``/metrics``).

The database and the broker are asked at once, on a small thread pool, under one deadline: a
dependency that hangs rather than refuses makes the answer "down" (or the gauges missing) in
bounded time instead of a hung probe. A lookup still stuck holds one pool thread until its own
socket timeout ends it; with every thread stuck, later lookups time out in the queue.

Nothing here waits on what requests use: the probes have their own threads (never the API's
request pool, which one tenant's load may fill) and, on PostgreSQL, their own two connections
(:func:`own_sessions`), and ``/readyz`` awaits :meth:`Probes.check` from the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from bus.broker.inspector import BrokerInspector
from bus.broker.queues import queue_name
from bus.errors import SchemaNotCurrent
from bus.events.schemas import MODULE_NAME
from bus.observability.metrics import Backlog
from bus.storage import claim_store, count_store, db, event_store
from bus.storage.migrate import SchemaCheck

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_TIMEOUT = 2.0
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="eventbus-probe")
_askers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="eventbus-readyz")
"""Where :meth:`Probes.check` waits for :meth:`Probes.readiness` (which waits on ``_pool``)."""
PROBE_CONNECTIONS = 2


def own_sessions(database_url: str, shared: sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions on a pool of the probes' own (PostgreSQL): requests holding every connection of
    theirs never leave a probe waiting for one. SQLite (one embedded process) shares."""
    return db.own_sessions(database_url, shared, PROBE_CONNECTIONS, DEFAULT_TIMEOUT)


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def result(self, future: Future[T]) -> T:
        """The future's result, or TimeoutError once the deadline has passed."""
        try:
            return future.result(max(0.0, self._end - time.monotonic()))
        except FutureTimeout as exc:
            future.cancel()
            raise TimeoutError(f"no answer within {self.seconds:.1f}s") from exc


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether each dependency answered."""

    database: bool
    broker: bool

    @property
    def ready(self) -> bool:
        return self.database and self.broker

    @property
    def down(self) -> list[str]:
        return [name for name in ("database", "broker") if not getattr(self, name)]


class Probes:
    """Readiness and backlog of one process's bus; logs when a dependency goes down or returns."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        broker: BrokerInspector,
        queue_prefix: str,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._sessions = sessions
        self._broker = broker
        self._prefix = queue_prefix
        self._timeout = timeout
        self._up: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._schema = SchemaCheck()

    async def check(self) -> Readiness:
        """:meth:`readiness`, awaited from the event loop: its waiting happens on the probes'
        threads, and an answer later than the timeout (every asker busy) is "all down"."""
        future = _askers.submit(self.readiness)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self._timeout + 1)
        except TimeoutError:
            future.cancel()
            down = {field.name: False for field in dataclasses.fields(Readiness)}
            return Readiness(**down)

    def close(self) -> None:
        """Release the probes' own connections (made by :func:`own_sessions`; none when they
        share the bus's)."""
        db.release_own(self._sessions)

    def readiness(self) -> Readiness:
        """Both dependencies asked at once; each is up if it answered within the timeout.
        A database that answers without this code's migrations is ``SchemaNotCurrent``."""
        deadline = _Deadline(self._timeout)
        database = _pool.submit(self._ping_database)
        broker = _pool.submit(self._broker.ping)
        readiness = Readiness(
            database=self._answered("database", database, deadline),
            broker=self._answered("broker", broker, deadline),
        )
        if readiness.database and not database.result():
            raise SchemaNotCurrent()
        return readiness

    def backlog(self, now: datetime | None = None) -> list[Backlog]:
        """Per module: messages on its queue, pending events, the oldest one's age in seconds.

        Modules with pending events, and on Redis every queue of the bus the broker knows (so
        an emptied queue reads 0 instead of vanishing). Raises if the database does not answer;
        a broker that does not answer only leaves the queue depths out.
        """
        deadline = _Deadline(self._timeout)
        pending_future = _pool.submit(self._pending)
        queues_future = _pool.submit(self._broker.queues, self._prefix)
        backlog, held, paused = deadline.result(pending_future)
        pending = {row.target_module: row for row in backlog}
        try:
            known = [q.removeprefix(self._prefix) for q in deadline.result(queues_future)]
        except Exception as exc:
            log.warning("backlog: broker queues unknown: %s: %s", type(exc).__name__, exc)
            known = []
        modules = sorted(
            set(pending) | set(held) | set(paused) | {m for m in known if MODULE_NAME.fullmatch(m)}
        )
        depths = self._depths(modules, deadline)
        now = now or datetime.now(UTC)
        rows = []
        for module in modules:
            row = pending.get(module)
            age = max(0.0, (now - row.oldest_created_at).total_seconds()) if row else 0.0
            depth = None if depths is None else depths.get(queue_name(module, self._prefix))
            count = row.pending if row else 0
            rows.append(Backlog(module, depth, count, age, held.get(module, 0), module in paused))
        return rows

    def _depths(self, modules: list[str], deadline: _Deadline) -> dict[str, int] | None:
        queues = [queue_name(m, self._prefix) for m in modules]
        try:
            return deadline.result(_pool.submit(self._broker.depths, queues))
        except Exception as exc:
            log.warning("backlog: queue depths unknown: %s: %s", type(exc).__name__, exc)
            return None

    def _ping_database(self) -> bool:
        """Whether the schema is current, once the database answered (asked until it is)."""
        with self._sessions() as session:
            event_store.ping(session)
            return self._schema.current(session.connection())

    def _pending(
        self,
    ) -> tuple[list[count_store.PendingModule], dict[str, int], set[str]]:
        with self._sessions() as session:
            return (
                count_store.pending_backlog(session),
                claim_store.held_counts(session),
                set(claim_store.paused(session)),
            )

    def _answered(self, name: str, future: Future[T], deadline: _Deadline) -> bool:
        try:
            deadline.result(future)
        except Exception as exc:
            self._note(name, False, f"{type(exc).__name__}: {exc}")
            return False
        self._note(name, True)
        return True

    def _note(self, name: str, up: bool, error: str = "") -> None:
        with self._lock:
            changed = self._up.get(name, True) != up
            self._up[name] = up
        if changed and up:
            log.info("readiness: %s reachable again", name)
        elif changed:
            log.warning("readiness: %s unreachable: %s", name, error)
