"""``pyramid_scheduler.alembic``: Alembic's autogenerate, run for real on a
database that holds an application's tables and every table of the
scheduler, proposes nothing about the scheduler's tables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from conftest import POSTGRES_URL, require_service, run_combined, unique
from integration.sampleapp import jobs
from pyramid_scheduler import alembic as hooks


class Base(DeclarativeBase):
    pass


class MyModel(Base):
    """The starter's model."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None]
    value: Mapped[int | None]


sa.Index("my_index", MyModel.name, unique=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A database the application and the scheduler share, with the
    scheduler's tables made by the scheduler itself (a job stored and run)."""
    schema = None
    if request.param == "sqlite":
        url, prefix = f"sqlite:///{tmp_path}/app.sqlite", "pyramid_scheduler_"
    else:
        # A schema of its own: the shared test database holds other runs' tables,
        # which Alembic would report too.
        require_service("postgresql")
        schema, prefix = unique("alembic"), f"{unique()}_"
        admin = sa.create_engine(POSTGRES_URL)
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    settings = {
        "scheduler.combined": "true",
        "scheduler.jobstore.url": url,
        "scheduler.broker.url": url if request.param == "sqlite" else f"sqlite:///{tmp_path}/b.sqlite",
        "scheduler.jobstore.tablename_prefix": prefix,
        "scheduler.lease.ttl": "3",
    }
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    try:
        # A row in APScheduler's table too.
        run_combined(settings, lambda scheduler: scheduler.add_interval_job(jobs.noop, args=[2], hours=1))
        yield url, settings
    finally:
        engine.dispose()
        if schema is not None:
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


def diffs(url: str, **options: Any) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn, opts=options), Base.metadata))
    finally:
        engine.dispose()


def test_autogenerate_leaves_the_scheduler_tables_alone(shared_db: tuple[str, dict[str, str]]) -> None:
    url, settings = shared_db
    prefix = settings["scheduler.jobstore.tablename_prefix"]
    # Without the hooks Alembic would drop every table of the scheduler ...
    dropped = {d[1].name for d in diffs(url) if d[0] == "remove_table"}
    assert {f"{prefix}jobs", f"{prefix}runs", f"{prefix}leases", f"{prefix}aps_default"} <= {
        name.lower() for name in dropped
    } | dropped
    # ... with them, nothing: the application's own model is in step.
    assert diffs(url, **hooks.filters(settings)) == []


def test_default_hooks_cover_the_default_prefix(shared_db: tuple[str, dict[str, str]]) -> None:
    url, settings = shared_db
    found = diffs(url, include_name=hooks.include_name, include_object=hooks.include_object)
    if settings["scheduler.jobstore.tablename_prefix"] == hooks.DEFAULT_PREFIX:
        assert found == []
    else:  # another prefix: the default hooks do not know it, filters(settings) does
        assert found and {d[0] for d in found} <= {"remove_table", "remove_index"}


def test_a_change_to_the_application_model_still_shows(shared_db: tuple[str, dict[str, str]]) -> None:
    url, settings = shared_db
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX my_index"))
    engine.dispose()
    found = diffs(url, **hooks.filters(settings))
    assert [d[0] for d in found] == ["add_index"]
