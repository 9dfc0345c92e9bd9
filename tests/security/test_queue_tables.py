"""Distinct queue names, distinct APScheduler tables (issue 16, item 4).

Queues ``a.b``, ``a_b`` and ``a-b`` used to share the table
``<prefix>aps_a_b``. Names of letters, digits and ``_`` keep their table
(``<prefix>aps_jobs``, as in every release); any other name gets a digest
of itself appended. Names a database cannot tell apart are refused.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from pyramid.exceptions import ConfigurationError
from test_security import harmless, running  # noqa: F401

from conftest import wait_for
from pyramid_scheduler.settings import parse_settings
from pyramid_scheduler.store.tables import MAX_TABLENAME, aps_tablename


@pytest.mark.parametrize("queue", ["jobs", "default", "reports_2", "Reports", "x" * 100])
def test_ordinary_names_keep_their_table(queue):
    assert aps_tablename("pyramid_scheduler_", queue) == f"pyramid_scheduler_aps_{queue}"


def test_names_that_need_escaping_get_distinct_tables():
    names = ["a.b", "a-b", "a_b", "a.b.c", "a-b.c", "a_b_c", "a.b-c", "x" * 99 + ".", "x" * 99 + "-"]
    tables = [aps_tablename("pyramid_scheduler_", name) for name in names]
    assert len(set(tables)) == len(names)
    escaped = [table for table, name in zip(tables, names, strict=True) if table != f"pyramid_scheduler_aps_{name}"]
    assert len(escaped) == 7 and all(len(table) <= MAX_TABLENAME for table in escaped)
    assert tables[2] == "pyramid_scheduler_aps_a_b"


@pytest.mark.parametrize("queues", ["Jobs jobs", "REPORTS reports"])
def test_names_a_database_cannot_tell_apart_are_refused(queues):
    with pytest.raises(ConfigurationError, match="would share one job table"):
        parse_settings({"scheduler.queues": queues})


def test_each_queue_stores_its_jobs_in_its_own_table(running):  # noqa: F811
    proxy, service = running(queues="a.b a_b a-b")
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    for queue in ("a.b", "a_b", "a-b"):
        proxy.add_date_job(harmless, later, args=[queue], id=f"job-{queue}", queue=queue)
    prefix = proxy.settings.jobstore_tablename_prefix
    engine = service.engine.db

    def ids(queue):
        table = sa.table(aps_tablename(prefix, queue), sa.column("id"))
        with engine.connect() as conn:
            return [row.id for row in conn.execute(sa.select(table.c.id))]

    wait_for(lambda: all(ids(queue) for queue in ("a.b", "a_b", "a-b")))
    assert {queue: ids(queue) for queue in ("a.b", "a_b", "a-b")} == {
        queue: [f"job-{queue}"] for queue in ("a.b", "a_b", "a-b")
    }
    for queue in ("a.b", "a_b", "a-b"):
        assert proxy.get_job(f"job-{queue}")["status"] == "scheduled"
        proxy.cancel_job(f"job-{queue}", queue=queue)
    wait_for(lambda: not any(ids(queue) for queue in ("a.b", "a_b", "a-b")))
