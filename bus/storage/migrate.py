"""Schema migrations (Alembic), run by ``eventbus migrate``; whether a database has them all.

A process started before ``eventbus migrate`` ran must say so rather than fail on every
statement: ``/readyz`` is 503 "Database schema is not up to date", a request that meets a
missing table or column is that 503 too (``api.errors``), and the worker and the relay wait,
saying why once (:func:`wait_until_current`).
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path

import psycopg.errors
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import ProgrammingError

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent / "migrations"

WAIT_INTERVAL_SECONDS = 2.0
"""How often a waiting worker or relay asks again whether the schema is up to date."""

NOT_CURRENT = "database schema is not up to date: run `eventbus migrate`"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database to ``revision`` (the newest by default)."""
    command.upgrade(alembic_config(database_url), revision)


@functools.cache
def _known() -> tuple[frozenset[str], frozenset[str]]:
    """This code's revisions, and its heads."""
    script = ScriptDirectory.from_config(alembic_config(""))
    known = frozenset(rev.revision for rev in script.walk_revisions())
    return known, frozenset(script.get_heads())


def is_current(connection: Connection) -> bool:
    """True when the database has every migration of this code.

    A revision this code does not know counts as current: a newer release migrated the
    database, and its migrations keep the release before working (a rolling upgrade migrates
    first), so older processes must not all turn unready then. Behind is a known revision
    that is not a head, or none at all (``eventbus migrate`` never ran).
    """
    revisions = MigrationContext.configure(connection).get_current_heads()
    known, heads = _known()
    return bool(revisions) and all(rev in heads or rev not in known for rev in revisions)


class SchemaCheck:
    """:func:`is_current`, asked until it is true once: a probe or a poll then costs nothing
    (a database is not migrated backwards under a running release). Says when it finds the
    schema behind, and when it is up to date after that, once each."""

    def __init__(self) -> None:
        self._current = False
        self._said_behind = False
        self._lock = threading.Lock()

    def current(self, connection: Connection) -> bool:
        if self._current:
            return True
        current = is_current(connection)
        with self._lock:
            if current and not self._current and self._said_behind:
                log.info("database schema is up to date now")
            elif not current and not self._said_behind:
                log.warning(NOT_CURRENT)
                self._said_behind = True
            self._current = current
        return current


def wait_until_current(
    engine: Engine, stop: threading.Event | None = None, interval: float = WAIT_INTERVAL_SECONDS
) -> bool:
    """Return once the database's schema is up to date (``True``) or ``stop`` is set
    (``False``), asking every ``interval`` seconds; one line says why it waits.

    A database that does not answer is not waited for here: the caller starts and meets the
    outage as it would later on (its own retries and logs cover that).
    """
    check = SchemaCheck()
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            with engine.connect() as connection:
                if check.current(connection):
                    return True
        except Exception as exc:
            log.debug("schema check skipped: %s: %s", type(exc).__name__, exc)
            return True
        stop.wait(interval)
    return False


STATEMENT_REFUSED = ProgrammingError
"""What a statement on a table or column the database lacks raises, for a caller's exception
handler (the API's), which asks :func:`schema_missing` whether the schema is the cause."""


def schema_missing(exc: BaseException) -> bool:
    """True if ``exc`` is PostgreSQL refusing a table or column this code expects: the schema
    is behind (or a statement is wrong: the caller still logs it)."""
    cause = getattr(exc, "orig", exc)
    return isinstance(cause, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn)
