"""Schema: the versions of the job store's own tables, and the upgrades between them.

Beneath the ledger (:class:`pyramid_scheduler.store.ledger.Ledger`), which calls :func:`upgrade`
when it opens the job store. The tables carry a version, kept in
``<prefix>schema`` (one row): a daemon or web process of this release
creates the tables it misses, then brings tables of an earlier release up to
:data:`SCHEMA_VERSION` by the steps of :data:`UPGRADES`, in order, each
logged at WARNING with the step's description, all in one transaction under
a lock (:func:`.db.under_ddl_lock`), so that processes starting together
upgrade once. Tables whose version is *newer*
than this release knows are refused (:class:`SchemaError`): an old daemon
must not write into tables it does not understand. Nothing is ever dropped.

Tables made by development builds before the version row existed are
brought up to version 1 by adding the columns they miss
(:func:`.db.add_missing_columns`), then stamped. APScheduler's own tables
(``<prefix>aps_<queue>``) are APScheduler's to version; the SQL broker's
table is made by :mod:`pyramid_scheduler.brokers.sql`.

A release that changes the tables adds a step here::

    UPGRADES = {
        2: ("dead letters keep the size and SHA-256 of the body", _add_columns("dead_letters")),
    }

and a test that upgrades the previous release's tables (tests/store/test_schema.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pyramid_scheduler.exceptions import SchemaError
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.store.db import add_missing_columns, under_ddl_lock

log = get_logger(__name__)

#: An upgrade step: ``step(conn, metadata)``, within the upgrade's transaction.
Step = Callable[[sa.Connection, sa.MetaData], None]


def _add_columns(*tables: str) -> Step:
    """A step that adds the columns of *tables* (names without the prefix)
    that the database lacks: new columns are nullable or have a default."""

    def step(conn: sa.Connection, metadata: sa.MetaData) -> None:
        wanted = sa.MetaData()
        for table in metadata.sorted_tables:
            if any(table.name.endswith(name) for name in tables):
                table.to_metadata(wanted)
        add_missing_columns(conn, wanted)

    return step


#: The steps from one version to the next: ``{version: (what changes, step)}``.
UPGRADES: dict[int, tuple[str, Step]] = {
    2: ("dead letters keep the size and SHA-256 of the body", _add_columns("dead_letters")),
    3: ("every daemon executes: the daemons table, and the daemon holding each job", _add_columns("jobs")),
    4: ("dead letters keep what replaying them needs", _add_columns("dead_letters")),
    5: ("chains and groups: the flows table, and each job's flow and place in it", _add_columns("jobs")),
    6: ("flow limits: the slots, rates and rate holds tables, and why a job waits", _add_columns("jobs")),
}
#: The version of the tables this release makes and writes.
SCHEMA_VERSION = max(UPGRADES, default=1)


def version_table(prefix: str, metadata: sa.MetaData | None = None) -> sa.Table:
    return sa.Table(
        f"{prefix}schema",
        metadata or sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def upgrade(engine: Engine, metadata: sa.MetaData, prefix: str) -> int:
    """Create the missing tables of *metadata* and bring the others up to
    :data:`SCHEMA_VERSION`; return the version found (0: new tables, -1:
    tables from before the version row). Processes starting together on one
    database upgrade once (:func:`.db.under_ddl_lock`).

    :raises SchemaError: the tables are newer than this release.
    """
    versions = version_table(prefix)
    return under_ddl_lock(engine, metadata, lambda conn: _upgrade(conn, metadata, versions))


def _upgrade(conn: sa.Connection, metadata: sa.MetaData, versions: sa.Table) -> int:
    existing = set(sa.inspect(conn).get_table_names())
    name = versions.name[: -len("schema")] + "*"
    if versions.name in existing:
        found = int(conn.execute(sa.select(versions.c.version)).scalar() or 0)
    elif any(table.name in existing for table in metadata.sorted_tables):
        found = -1  # made by a development build, before the tables had a version
    else:
        found = 0  # a new database
    if found > SCHEMA_VERSION:
        raise SchemaError(
            f"the job store's tables {name} are at schema version {found}, newer than this "
            f"pyramid_scheduler knows ({SCHEMA_VERSION}): a newer release upgraded them; install "
            "that release here too"
        )
    metadata.create_all(conn)
    versions.create(conn, checkfirst=True)
    if found == SCHEMA_VERSION:
        return found
    if found == -1:
        log.warning("job store tables %s: made before their schema had a version; adding the columns they miss", name)
        add_missing_columns(conn, metadata)
    for version in range(max(found, 1) + 1, SCHEMA_VERSION + 1) if found else ():
        what, step = UPGRADES[version]
        log.warning("job store tables %s: upgrading to schema version %d: %s", name, version, what)
        step(conn, metadata)
    conn.execute(versions.delete())
    conn.execute(versions.insert().values(id=1, version=SCHEMA_VERSION, updated_at=time.time()))
    if found:
        log.warning("job store tables %s: now at schema version %d", name, SCHEMA_VERSION)
    return found
