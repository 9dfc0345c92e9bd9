"""A real ``pscheduler`` killed (SIGKILL) as its scheduler thread is about to
write the job-store rows of the date jobs it handed over (crash point
``handed``), with some of those runs done, some started, some not: after a
restart past the jobs' misfire grace, every job ran at most once, those that
ran are ``done`` (not run again, not recorded missed), those that had not
started are missed (late past their grace), and no row is left.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from daemons import wait_until
from faults.test_crash_points import Scenario
from integration.sampleapp import jobs
from pyramid_scheduler.store.tables import aps_tablename

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_killed_before_writing_the_rows_of_jobs_handed_over(tmp_path: Any, drop_tables: Any, store: str) -> None:
    scenario = Scenario(tmp_path, store=store, misfire_grace_time="1")
    settings = scenario.settings
    drop_tables.append((settings["scheduler.jobstore.url"], settings["scheduler.jobstore.tablename_prefix"]))
    try:
        first = scenario.daemon(crash_at="handed").wait_consuming()
        start = datetime.now(timezone.utc) + timedelta(seconds=3)
        # 2 ms apart, closer than due.FLUSH_GAP: the rows wait until the last is handed over.
        ids = [
            scenario.scheduler.add_date_job(
                jobs.record, start + timedelta(milliseconds=2 * i), args=[scenario.oracle, f"h{i}"], id=f"h{i}"
            )
            for i in range(50)
        ]
        assert first.wait(60) == -9, first.log()
        assert "crash point 'handed' reached" in first.log()
        time.sleep(1.5)  # every job now past its misfire grace

        second = scenario.daemon().wait_consuming()

        def finished() -> list[dict[str, Any]]:
            records = [scenario.scheduler.get_job(job_id) for job_id in ids]
            return records if all(r["status"] not in ("scheduled", "running") for r in records) else []

        records = wait_until(finished, "every job to finish", 60, alive=[second])
        time.sleep(0.5)  # a second run, if there were one, would show up now
        calls = Counter(run["tag"] for run in jobs.runs(scenario.oracle))
        statuses = Counter(record["status"] for record in records)
        # Runs not started when it died are late by now: missed, as any date job past its grace.
        assert set(statuses) <= {"done", "interrupted", "missed"}, (statuses, second.log())
        for index, record in enumerate(records):
            assert calls[f"h{index}"] == {"done": 1, "missed": 0}.get(record["status"], calls[f"h{index}"])
            assert calls[f"h{index}"] <= 1, (record, second.log())
            if record["status"] == "done":
                assert [run["status"] for run in scenario.ledger_runs(record["id"])] == ["done"]
        assert statuses["done"] > 0, statuses  # some ran before the kill: their stale rows were settled
        ledger = scenario.scheduler._ledger()
        table = sa.table(aps_tablename(settings["scheduler.jobstore.tablename_prefix"], "jobs"), sa.column("id"))
        with ledger.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0
        assert second.terminate() == 0, second.log()
    finally:
        scenario.close()
