"""The job store's PostgreSQL sessions plan each statement for the tables as they are."""

import pytest
from sqlalchemy.pool import StaticPool

from conftest import POSTGRES_URL, require_service, unique
from pyramid_scheduler.store.db import create_db_engine
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.records import RunEnd, RunStart


@pytest.fixture
def pg_ledger():
    require_service("postgresql")
    # One connection: the session whose prepared statements are looked at.
    engine = create_db_engine(POSTGRES_URL, poolclass=StaticPool)
    ledger = Ledger(engine, unique("plan_"))
    yield ledger
    ledger.metadata.drop_all(engine)
    engine.dispose()


def request(job_id):
    return {
        "id": job_id,
        "queue": "jobs",
        "func": "m:f",
        "trigger": {"type": "now"},
        "mid": f"m-{job_id}",
        "args": [],
        "kwargs": {},
        "options": {},
    }


def test_run_writes_are_planned_each_time_not_by_a_plan_made_when_the_tables_were_small(pg_ledger):
    ledger = pg_ledger
    with ledger.engine.connect() as conn:
        if conn.dialect.server_version_info < (14,):
            pytest.skip("plan_cache_mode is PostgreSQL 12's; pg_prepared_statements counts plans from 14")
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_custom_plan"
    jobs = [f"p{i}" for i in range(60)]
    ledger.add_jobs([request(job) for job in jobs])
    previous: list[str] = []
    # The driver prepares a statement run five times; PostgreSQL would then
    # keep a generic plan made for these few rows.
    for first in range(0, len(jobs), 3):
        batch = jobs[first : first + 3]
        ends = [RunEnd(job, f"{job}@1", "done", True) for job in previous]
        written = ledger.write_runs([RunStart(job, "jobs", f"{job}@1", 1.0, "me") for job in batch], ends)
        assert written == {f"{job}@1" for job in batch + previous}
        previous = batch
    with ledger.engine.connect() as conn:
        # Still one session after the pool's rollback: the setting holds.
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_custom_plan"
        plans = conn.exec_driver_sql(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE 'WITH marked%%'"
        ).all()
    assert plans and all(generic == 0 and custom >= 5 for generic, custom in plans), plans
    assert ledger.get_job("p0")["status"] == "done" and ledger.get_job(jobs[-1])["status"] == "running"


def test_a_plan_cache_mode_set_for_the_database_role_or_connection_is_kept():
    require_service("postgresql")
    engine = create_db_engine(POSTGRES_URL, connect_args={"options": "-c plan_cache_mode=force_generic_plan"})
    try:
        with engine.connect() as conn:
            if conn.dialect.server_version_info < (12,):
                pytest.skip("plan_cache_mode is PostgreSQL 12's")
            assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_generic_plan"
    finally:
        engine.dispose()
