"""Engines and sessions; the transaction is committed by the caller at the edge."""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

DATABASE_UNREACHABLE = (OperationalError, InterfaceError, PoolTimeout)
"""What a statement raises when the database cannot be reached or the connection broke (a
partition, a restart, a pool whose connections all hang): for a caller's handler to answer
"try again" (the API's 503), never a 500."""

NETWORK_TIMEOUT_SECONDS = 10.0
"""How long a PostgreSQL connection may go silent before either end gives it up (the default of
``EVENTBUS_DATABASE_NETWORK_TIMEOUT_SECONDS``)."""


def network_args(timeout: float) -> tuple[dict[str, Any], str]:
    """libpq parameters and server options under which a connection whose peer went silent (a
    partition, a half-open connection, a host gone) fails within about ``timeout`` seconds on
    both ends, not after the kernel's ~15 minutes of retransmissions or 2 hours of idle.

    The client: ``connect_timeout``, ``tcp_user_timeout`` (data sent and not acknowledged: a
    COMMIT into a partition) and keepalives (a reply that never comes). The server, through the
    startup options: the same keepalives and ``tcp_user_timeout``, so a backend whose client
    vanished mid-transaction rolls back and frees its row locks (the batch's history rows) in
    seconds. A silent peer is never confused with a slow query: the kernel acknowledges packets
    and probes of a live peer however long the statement runs."""
    ms = int(timeout * 1000)
    idle = max(1, round(timeout / 2))
    interval = max(1, round(timeout / 6))
    client = {
        "connect_timeout": max(2, round(timeout)),
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": interval,
        "keepalives_count": 3,
        "tcp_user_timeout": ms,
    }
    server = (
        f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} "
        f"-c tcp_keepalives_count=3 -c tcp_user_timeout={ms}"
    )
    return client, server


def make_engine(
    url: str, network_timeout: float = NETWORK_TIMEOUT_SECONDS, **kwargs: Any
) -> Engine:
    """An engine tuned for the bus: WAL and a busy timeout on SQLite, a warm pool on PostgreSQL
    whose connections give up a silent peer within ``network_timeout`` seconds."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
            # pysqlite starts transactions lazily and lets RELEASE SAVEPOINT commit; the bus
            # needs a handler's savepoint inside the transaction that records its outcome.
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(connection: Any) -> None:
            # IMMEDIATE: a transaction that reads then writes would otherwise fail at once
            # with "database is locked" whenever another one wrote in between.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_size", 20)
    kwargs.setdefault("max_overflow", 20)
    # No JIT: the bus's statements are short, and a plan whose estimate passes jit_above_cost
    # (a claim's skip scan and lateral joins do) paid ~50 ms compiling for a 5 ms run.
    connect_args = dict(kwargs.pop("connect_args", {}))
    client, server = network_args(network_timeout)
    connect_args = {**client, **connect_args}
    connect_args["options"] = f"{connect_args.get('options', '')} -c jit=off {server}".strip()
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    _ping_when_idle(engine, PING_AFTER_IDLE_SECONDS)
    return engine


PING_AFTER_IDLE_SECONDS = 1.0
_CHECKED_IN = "eventbus.checked_in"


def _ping_when_idle(engine: Engine, idle: float) -> None:
    """``pool_pre_ping``, for connections that sat in the pool more than ``idle`` seconds.

    A ping on every checkout is a round trip per request and per attempt. A connection used
    moments ago is as likely alive as one just pinged (a server can die between ping and query
    either way), and the first statement that meets a dead one invalidates the whole pool; a
    connection that sat idle, the one a restart or a firewall silently killed, is still pinged
    and replaced before use.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get(_CHECKED_IN, 0.0) <= idle:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool drops this connection and checks out another (or connects anew).
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit if the block succeeds, roll back if it raises."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


_own_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def own_sessions(
    database_url: str,
    shared: sessionmaker[Session],
    size: int,
    timeout: float,
    network_timeout: float = NETWORK_TIMEOUT_SECONDS,
) -> sessionmaker[Session]:
    """Sessions on a pool of ``size`` connections of their own (PostgreSQL), for a caller that
    must never wait behind requests holding every connection of the shared pool (the probes).
    SQLite (one embedded process) shares ``shared``."""
    if not database_url.startswith("postgresql"):
        return shared
    engine = make_engine(
        database_url, network_timeout, pool_size=size, max_overflow=0, pool_timeout=timeout
    )
    _own_engines.add(engine)
    return make_sessionmaker(engine)


def release_own(sessions: sessionmaker[Session]) -> None:
    """Close the pool :func:`own_sessions` made for ``sessions`` (nothing for shared ones)."""
    engine = sessions.kw.get("bind")
    if isinstance(engine, Engine) and engine in _own_engines:
        engine.dispose()
