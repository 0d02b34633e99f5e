"""The history's days: partitions made ahead, and dropped whole past the retention
(``bus.storage.partitions`` says how; SQLite deletes finished rows instead)."""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timedelta

from bus.events.rules import utcnow
from bus.maintenance import archive
from bus.maintenance.chore import Chore
from bus.observability import metrics
from bus.runtime import Runtime
from bus.storage import archive_store, delivery_store, partitions
from bus.storage.db import transaction

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 60.0
"""Between passes: a day changes once a day, and a pass reads only the catalog when there is
nothing to do (spans shorter than 10 minutes pass every tenth of a span)."""

DELETE_BATCH = 5000
"""Rows a pass deletes from the default partition (or SQLite's table); a full batch runs
again at once."""


def make_ahead(runtime: Runtime, now: datetime | None = None) -> int:
    """Make the partitions of the span before this one to ``EVENTBUS_PARTITIONS_AHEAD`` spans
    on (days, unless ``EVENTBUS_PARTITION_MINUTES`` says less), each in a transaction of its
    own; returns how many were missing and made."""
    settings = runtime.settings
    span = timedelta(minutes=settings.partition_minutes)
    current = partitions.span_start(now or utcnow(), span)
    made = 0
    for offset in range(-1, settings.partitions_ahead + 1):
        with transaction(runtime.sessions) as session:
            connection = session.connection()
            if not partitions.is_partitioned(connection):
                return 0
            start = current + offset * span
            if partitions.make_span(connection, start, span, settings.history_fillfactor):
                made += 1
    return made


class Retention:
    """Drops the days past ``EVENTBUS_RETENTION_DAYS``: a day whose events are all finished
    goes whole; a day still holding an event in flight waits for it (said once per day).
    With ``EVENTBUS_ARCHIVE_URL``, a day is archived first (:mod:`bus.maintenance.archive`),
    and a day brought back by ``eventbus archive restore`` stays until its keep time."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._held: set[str] = set()
        url = runtime.settings.archive_url
        self._archive = archive.Archive(url) if url else None

    def run(self, now: datetime | None = None) -> int:
        """One pass; returns how many events left the history."""
        now = now or utcnow()
        before = now - timedelta(days=self._runtime.settings.retention_days)
        with transaction(self._runtime.sessions) as session:
            connection = session.connection()
            if not partitions.is_partitioned(connection):
                if self._archive is not None:  # no archive on SQLite: nothing leaves unarchived
                    return 0
                # SQLite (eventbus dev): one table, finished rows deleted a batch at a time
                return partitions.delete_finished(
                    connection, partitions.PARENT, before, DELETE_BATCH
                )
            restored = archive_store.kept(connection, now)
            expired = [p for p in partitions.expired(connection, before) if p.name not in restored]
        gone = sum(self._drop(p) for p in expired)
        if self._archive is not None:  # old strays get a day, archived and dropped next pass
            archive.house_strays(self._runtime, before)
            return gone
        with transaction(self._runtime.sessions) as session:
            stray = partitions.delete_finished(
                session.connection(), partitions.DEFAULT, before, DELETE_BATCH
            )
        return gone + stray

    def _drop(self, partition: partitions.Partition) -> int:
        name = partition.name
        with transaction(self._runtime.sessions) as session:
            connection = session.connection()
            write = None
            if self._archive is not None:  # written out, complete, before the drop commits
                write = functools.partial(self._archive.write, connection, partition)
            gone, waiting = partitions.drop(connection, partition, before=write)
        if waiting:
            if name not in self._held:
                self._held.add(name)
                log.warning(
                    "history partition %s is past the retention but kept: %d of its events "
                    "are still in flight (it goes once they finish)",
                    name,
                    waiting,
                )
            return 0
        self._held.discard(name)
        metrics.count_retention_dropped(gone)
        log.info("history partition %s dropped: %d events past the retention", name, gone)
        return gone


def purge_deliveries(runtime: Runtime, now: datetime | None = None) -> int:
    """Webhook delivery rows of finished events past the retention, a batch at a time."""
    before = (now or utcnow()) - timedelta(days=runtime.settings.retention_days)
    with transaction(runtime.sessions) as session:
        return delivery_store.purge_before(session, before, DELETE_BATCH)


def chores(runtime: Runtime) -> list[Chore]:
    retention = Retention(runtime)
    every = min(INTERVAL_SECONDS, runtime.settings.partition_minutes * 6.0)
    return [
        Chore("make_partitions", every, lambda: make_ahead(runtime)),
        Chore("retention", every, retention.run, batch=DELETE_BATCH),
        Chore("webhook_deliveries", every, lambda: purge_deliveries(runtime), batch=DELETE_BATCH),
    ]
