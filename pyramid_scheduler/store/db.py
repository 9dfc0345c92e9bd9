"""Database engines shared by the SQL transport, the job store and the ledger.

SQLite gets what a file shared by several processes needs: WAL journal, a
busy timeout, and ``BEGIN IMMEDIATE`` so a read-then-write transaction takes
the write lock up front instead of failing with "database is locked" when
another process wrote in between. Relative SQLite paths are made relative to
the current directory, and their folder is created.

:func:`create_tables` lets many processes start on a fresh database at once.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool

from pyramid_scheduler.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")

#: Seconds a SQLite connection waits for a lock before raising.
SQLITE_BUSY_TIMEOUT = 30.0


def create_db_engine(url: str, busy_timeout: float = SQLITE_BUSY_TIMEOUT, wal: bool = True, **kwargs: Any) -> Engine:
    """Create an engine for *url*, tuned for concurrent scheduler use.

    *busy_timeout*: seconds a SQLite statement waits for another process's
    lock before it fails. *wal*: switch a SQLite file to the WAL journal
    (``scheduler.sqlite.wal``); the journal mode is a property of the file,
    kept after the scheduler's connections close, so a database shared with
    the application changes for its connections too. The other settings
    (``synchronous = NORMAL``, the busy timeout) are the scheduler's own
    connections' only.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        engine = sa.create_engine(parsed, **kwargs)
        if parsed.get_backend_name() == "postgresql":
            sa.event.listen(engine, "connect", _plan_each_statement)
        return engine

    database = parsed.database or ""
    memory = not database or database == ":memory:"
    if memory:
        # One connection holds the database: every thread shares it.
        kwargs.update(poolclass=StaticPool)
    else:
        folder = os.path.dirname(os.path.abspath(database))
        os.makedirs(folder, exist_ok=True)
    kwargs.setdefault("connect_args", {})
    kwargs["connect_args"].update(timeout=busy_timeout, check_same_thread=False)
    engine = sa.create_engine(parsed, **kwargs)
    if memory:
        _one_thread_at_a_time(engine)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        # Let SQLAlchemy, not the driver, issue BEGIN (see "begin" below).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        if wal and not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _plan_each_statement(dbapi_conn: Any, record: Any) -> None:
    """PostgreSQL 12 and later: plan each statement for its parameters and
    the tables as they are (``plan_cache_mode = force_custom_plan``), for the
    session -- unless a mode other than the default ``auto`` is set for the
    database, the role or the connection.

    The driver prepares a statement it has run a few times (psycopg 3: five),
    and PostgreSQL may then keep one generic plan for it for the rest of the
    session, chosen for the tables' sizes at that moment and not made again
    until the table is analyzed. The scheduler's tables go from empty to
    tens of thousands of rows within one session (a new install, a drain of
    a backlog) and back (the purge): a plan made while a table was small
    scans all of it ever after. ``python -m bench.plans`` measures the run
    writer's statements on tables that grow from empty in one session:
    writing a run's start and end took 0.43 ms per job at 3,072 jobs and
    2.64 ms at 21,504 with the default plan cache, and 0.28-0.40 ms
    throughout with a plan per execution; planning a statement of this
    package costs less than its commit.
    """
    cursor = dbapi_conn.cursor()
    try:
        # Not over a mode set for the database, the role or the connection.
        cursor.execute(
            "SELECT set_config('plan_cache_mode', 'force_custom_plan', false) "
            "WHERE current_setting('server_version_num')::int >= 120000 "
            "AND current_setting('plan_cache_mode') = 'auto'"
        )
        dbapi_conn.commit()  # a session setting: kept by the pool's rollbacks
    except Exception as exc:  # noqa: BLE001 - a server that refuses it still stores jobs
        dbapi_conn.rollback()
        log.warning(
            "could not set plan_cache_mode for the job store's sessions (%s); statements "
            "may keep plans made while the tables were small",
            exc,
        )
    finally:
        cursor.close()


#: Attempts at creating tables that another process is creating too.
CREATE_ATTEMPTS = 5


def add_missing_columns(conn: sa.Connection, metadata: sa.MetaData) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for each column of *metadata* that an
    existing table lacks (a table made by an earlier version), then the
    indexes it lacks. Such columns are nullable or have a server default."""
    inspector = sa.inspect(conn)
    preparer = conn.dialect.identifier_preparer
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                spec = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
                log.info("table %s: adding column %s", table.name, column.name)
                conn.execute(sa.text(f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN {spec}"))
        indexed = {index["name"] for index in sa.inspect(conn).get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexed:
                log.info("table %s: adding index %s", table.name, index.name)
                index.create(conn)


def create_tables(engine: Engine, metadata: sa.MetaData) -> None:
    """Create *metadata*'s missing tables and columns; safe when processes race to do it."""

    def create(conn: sa.Connection) -> None:
        metadata.create_all(conn)
        add_missing_columns(conn, metadata)

    under_ddl_lock(engine, metadata, create)


def under_ddl_lock(engine: Engine, metadata: sa.MetaData, work: Callable[[sa.Connection], T]) -> T:
    """``work(conn)`` in one transaction that creates or alters *metadata*'s
    tables, safe when several processes do it at once.

    ``create_all`` checks, then creates: two processes starting together on a
    fresh database both see no table and one fails (on PostgreSQL with
    ``IntegrityError`` on ``pg_type``). On PostgreSQL a transaction-scoped
    advisory lock serialises them; elsewhere a failed attempt is retried, and
    the next one finds the other process's work done.
    """
    key = zlib.crc32(",".join(sorted(metadata.tables)).encode()) - 2**31
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
                return work(conn)
        except sa.exc.DBAPIError:
            if attempt == CREATE_ATTEMPTS:
                raise
            time.sleep(0.05 * attempt)
    raise AssertionError("not reached")  # pragma: no cover


def _one_thread_at_a_time(engine: Engine) -> None:
    """An in-memory database is one connection shared by every thread: a
    thread that checks it out holds it (re-entrantly) until it checks it in,
    so two threads' transactions never interleave on it. A check-in by
    another thread (a connection collected there) still gives it back, which
    an ``RLock`` would refuse, leaving it held for ever."""
    turn = threading.Condition()
    holder: int | None = None  # the thread holding it
    depth = 0  # how many times it holds it

    @sa.event.listens_for(engine, "checkout")
    def _taken(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        nonlocal holder, depth
        me = threading.get_ident()
        with turn:
            turn.wait_for(lambda: holder in (None, me))
            holder, depth = me, depth + 1

    @sa.event.listens_for(engine, "checkin")
    def _given_back(dbapi_conn: Any, record: Any) -> None:
        nonlocal holder, depth
        with turn:
            depth = max(depth - 1, 0)
            if not depth:
                holder = None
                turn.notify_all()
