"""The job store's tables carry a schema version: new tables are stamped,
tables of an earlier build are upgraded in place (their rows kept), and
tables newer than this release are refused."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import jobstore_url, make_settings, run_combined, unique
from daemons import Daemon, pscheduler_argv, write_ini
from pyramid_scheduler.exceptions import SchemaError
from pyramid_scheduler.store.db import create_db_engine
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.schema import SCHEMA_VERSION


@pytest.fixture
def store(store_kind: str, tmp_var: Path) -> Iterator[tuple[sa.Engine, str]]:
    engine = create_db_engine(jobstore_url(store_kind, tmp_var))
    prefix = f"{unique()}_"
    try:
        yield engine, prefix
    finally:
        with engine.begin() as conn:
            for name in sa.inspect(conn).get_table_names():
                if name.startswith(prefix):
                    conn.execute(sa.text(f'DROP TABLE "{name}"'))
        engine.dispose()


def version(engine: sa.Engine, prefix: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f'SELECT version FROM "{prefix}schema"')).scalar_one())


def test_new_tables_are_stamped_with_this_version(store, caplog):
    engine, prefix = store
    with caplog.at_level(logging.WARNING, "pyramid_scheduler.store.schema"):
        Ledger(engine, prefix)
        Ledger(engine, prefix)  # a second process: nothing to do
    assert version(engine, prefix) == SCHEMA_VERSION
    assert caplog.records == []  # a new database is not an upgrade


def test_tables_from_before_the_version_are_upgraded_with_their_rows(store, caplog):
    engine, prefix = store
    # The jobs table as development builds made it, before retries and ttl.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f'CREATE TABLE "{prefix}jobs" (id VARCHAR(200) PRIMARY KEY, queue VARCHAR(200) NOT NULL, '
                "func VARCHAR(500) NOT NULL, kind VARCHAR(20) NOT NULL, status VARCHAR(20) NOT NULL, "
                "mid VARCHAR(64) NOT NULL, request TEXT NOT NULL, created_at FLOAT NOT NULL, "
                "updated_at FLOAT NOT NULL, runs INTEGER NOT NULL, last_run_at FLOAT, result TEXT, "
                "error TEXT)"
            )
        )
        conn.execute(
            sa.text(
                f"""INSERT INTO "{prefix}jobs" VALUES ('old-1', 'default', 'm:f', 'date', 'done', 'x', '{{}}',
            1.0, 2.0, 1, 2.0, '"kept"', NULL)"""
            )
        )
    with caplog.at_level(logging.WARNING, "pyramid_scheduler.store.schema"):
        ledger = Ledger(engine, prefix)
    assert version(engine, prefix) == SCHEMA_VERSION
    columns = {c["name"] for c in sa.inspect(engine).get_columns(f"{prefix}jobs")}
    assert {"attempt", "retry_at", "ttl"} <= columns
    with engine.connect() as conn:
        row = conn.execute(sa.select(ledger.jobs).where(ledger.jobs.c.id == "old-1")).mappings().one()
    assert row["result"] == '"kept"' and row["attempt"] == 1 and row["ttl"] is None
    messages = [record.getMessage() for record in caplog.records]
    assert (
        f"job store tables {prefix}*: made before their schema had a version; adding the columns they miss" in messages
    )
    assert f"job store tables {prefix}*: now at schema version {SCHEMA_VERSION}" in messages


def test_version_1_dead_letters_gain_size_and_digest(store, caplog):
    engine, prefix = store
    Ledger(engine, prefix)
    # Version 1: the dead letters had no size or sha256.
    with engine.begin() as conn:
        for column in ("size", "sha256"):
            conn.execute(sa.text(f'ALTER TABLE "{prefix}dead_letters" DROP COLUMN {column}'))
        conn.execute(
            sa.text(f"""INSERT INTO "{prefix}dead_letters" (queue, received_at, reason, body)
                                 VALUES ('jobs', 1.0, 'old', 'x')""")
        )
        conn.execute(sa.text(f'UPDATE "{prefix}schema" SET version = 1'))
    with caplog.at_level(logging.WARNING, "pyramid_scheduler.store.schema"):
        ledger = Ledger(engine, prefix)
    assert version(engine, prefix) == SCHEMA_VERSION >= 2
    ledger.dead_letter_many([("jobs", "new", b"body")])
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ledger.dead_letters).order_by(ledger.dead_letters.c.id)).all()
    assert [(row.reason, row.size) for row in rows] == [("old", None), ("new", 4)]
    assert (
        f"job store tables {prefix}*: upgrading to schema version 2: dead letters keep the size and "
        "SHA-256 of the body" in [record.getMessage() for record in caplog.records]
    )


def test_version_2_tables_gain_the_daemons_and_the_jobs_owner(store, caplog):
    engine, prefix = store
    Ledger(engine, prefix)
    # Version 2: no daemons table, no owner of a job.
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP TABLE "{prefix}daemons"'))
        conn.execute(sa.text(f'ALTER TABLE "{prefix}jobs" DROP COLUMN owner'))
        conn.execute(sa.text(f'UPDATE "{prefix}schema" SET version = 2'))
    with caplog.at_level(logging.WARNING, "pyramid_scheduler.store.schema"):
        ledger = Ledger(engine, prefix)
    assert version(engine, prefix) == SCHEMA_VERSION >= 3
    assert ledger.list_daemons() == []
    with engine.connect() as conn:
        assert "owner" in {column["name"] for column in sa.inspect(conn).get_columns(f"{prefix}jobs")}
    assert (
        f"job store tables {prefix}*: upgrading to schema version 3: every daemon executes: the daemons "
        "table, and the daemon holding each job" in [record.getMessage() for record in caplog.records]
    )


def test_version_3_dead_letters_gain_what_replaying_needs(store, caplog):
    engine, prefix = store
    Ledger(engine, prefix)
    with engine.begin() as conn:
        for column in ("message", "signed"):
            conn.execute(sa.text(f'ALTER TABLE "{prefix}dead_letters" DROP COLUMN {column}'))
        conn.execute(
            sa.text(f"""INSERT INTO "{prefix}dead_letters" (queue, received_at, reason, body, size)
                                 VALUES ('jobs', 1.0, 'old', 'x', 1)""")
        )
        conn.execute(sa.text(f'UPDATE "{prefix}schema" SET version = 3'))
    with caplog.at_level(logging.WARNING, "pyramid_scheduler.store.schema"):
        ledger = Ledger(engine, prefix)
    assert version(engine, prefix) == SCHEMA_VERSION >= 4
    ledger.dead_letter_many([("jobs", "new", b"{}", "{}", True)])
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ledger.dead_letters).order_by(ledger.dead_letters.c.id)).all()
    assert [(row.reason, row.message, row.signed) for row in rows] == [("old", None, None), ("new", "{}", True)]
    assert (
        f"job store tables {prefix}*: upgrading to schema version 4: dead letters keep what replaying them needs"
        in [record.getMessage() for record in caplog.records]
    )


def test_version_4_jobs_gain_their_flow_and_the_flows_table(store, caplog):
    engine, prefix = store
    Ledger(engine, prefix)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP TABLE "{prefix}flows"'))
        conn.execute(sa.text(f'DROP INDEX "ix_{prefix}jobs_parent"'))
        for column in ("parent", "position"):
            conn.execute(sa.text(f'ALTER TABLE "{prefix}jobs" DROP COLUMN {column}'))
        conn.execute(sa.text(f'UPDATE "{prefix}schema" SET version = 4'))
    with caplog.at_level(logging.WARNING, "pyramid_scheduler.store.schema"):
        ledger = Ledger(engine, prefix)
    assert version(engine, prefix) == SCHEMA_VERSION >= 5
    with engine.connect() as conn:
        columns = {column["name"] for column in sa.inspect(conn).get_columns(f"{prefix}jobs")}
        assert {"parent", "position"} <= columns
        indexes = {index["name"] for index in sa.inspect(conn).get_indexes(f"{prefix}jobs")}
        assert f"ix_{prefix}jobs_parent" in indexes  # the groups' queries read it
        assert conn.execute(sa.select(sa.func.count()).select_from(ledger.flows)).scalar() == 0
    assert (
        f"job store tables {prefix}*: upgrading to schema version 5: chains and groups: the flows table, "
        "and each job's flow and place in it" in [record.getMessage() for record in caplog.records]
    )


def test_tables_newer_than_this_release_are_refused(store):
    engine, prefix = store
    Ledger(engine, prefix)
    with engine.begin() as conn:
        conn.execute(sa.text(f'UPDATE "{prefix}schema" SET version = {SCHEMA_VERSION + 1}'))
    with pytest.raises(
        SchemaError,
        match=rf"at schema version {SCHEMA_VERSION + 1}, newer than this "
        rf"pyramid_scheduler knows \({SCHEMA_VERSION}\)",
    ):
        Ledger(engine, prefix)


def test_pscheduler_refuses_newer_tables_in_one_line(tmp_path: Path):

    settings = make_settings(tmp_path)
    engine = create_db_engine(settings["scheduler.jobstore.url"])
    prefix = settings["scheduler.jobstore.tablename_prefix"]
    Ledger(engine, prefix)
    with engine.begin() as conn:
        conn.execute(sa.text(f'UPDATE "{prefix}schema" SET version = {SCHEMA_VERSION + 1}'))
    engine.dispose()
    ini = write_ini(tmp_path / "app.ini", {**settings, "sampleapp.oracle": str(tmp_path / "o.sqlite")})
    daemon = Daemon([*pscheduler_argv(), str(ini)], tmp_path / "daemon.log", tmp_path)
    assert daemon.wait(60) == 20
    output = daemon.log()
    assert f"at schema version {SCHEMA_VERSION + 1}, newer than this pyramid_scheduler knows" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("wal, mode", [("true", "wal"), ("false", "delete")])
def test_sqlite_wal_can_be_left_off(tmp_path: Path, wal: str, mode: str):
    """``scheduler.sqlite.wal = false``: a database shared with the
    application keeps its journal mode (the job store's and the broker's)."""
    settings = {**make_settings(tmp_path), "scheduler.combined": "true", "scheduler.sqlite.wal": wal}
    app_db = tmp_path / "var" / "jobs.sqlite"
    settings["scheduler.broker.url"] = settings["scheduler.jobstore.url"] = f"sqlite:///{app_db}"
    run_combined(settings)
    with sqlite3.connect(app_db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == mode


def test_version_5_gains_the_flow_limits(store, caplog):
    engine, prefix = store
    Ledger(engine, prefix)
    with engine.begin() as conn:
        for table in ("slots", "rates", "rate_holds"):
            conn.execute(sa.text(f'DROP TABLE "{prefix}{table}"'))
        conn.execute(sa.text(f'ALTER TABLE "{prefix}jobs" DROP COLUMN waiting_reason'))
        conn.execute(sa.text(f'UPDATE "{prefix}schema" SET version = 5'))
    with caplog.at_level(logging.WARNING, "pyramid_scheduler.store.schema"):
        Ledger(engine, prefix)
    assert version(engine, prefix) == SCHEMA_VERSION >= 6
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        assert {f"{prefix}slots", f"{prefix}rates", f"{prefix}rate_holds"} <= set(inspector.get_table_names())
        assert "waiting_reason" in {column["name"] for column in inspector.get_columns(f"{prefix}jobs")}
    assert (
        f"job store tables {prefix}*: upgrading to schema version 6: flow limits: the slots, rates and rate "
        "holds tables, and why a job waits" in [record.getMessage() for record in caplog.records]
    )
