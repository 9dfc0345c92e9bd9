"""Reports: the ledger's reads for operators.

Part of :class:`~pyramid_scheduler.store.ledger.Ledger` (its base class),
apart so that the ledger's own module stays about the daemon's writes. The
``pscheduler CONFIG-URI COMMAND`` commands (:mod:`pyramid_scheduler.commands`)
read through these: the latest runs of every job, the number of jobs by
queue and status, the runs and their lateness since a time; the dead
letters through its base, :class:`~pyramid_scheduler.store.deadletters.DeadLetters`.
Nothing here changes a job: the jobs are the daemon's to change.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pyramid_scheduler.store.deadletters import DeadLetters


class Reports(DeadLetters):
    """The operators' reads of the scheduler's tables."""

    engine: Engine

    def recent_runs(self, limit: int, status: str | None = None, queue: str | None = None) -> list[dict[str, Any]]:
        """The latest *limit* runs of any job (with *status*, *queue*: only
        those), oldest first, each with its ``job_id``."""
        runs = self.runs
        happened = sa.func.coalesce(runs.c.started_at, runs.c.finished_at, runs.c.scheduled_at)
        query = sa.select(runs).order_by(happened.desc(), runs.c.scheduled_at.desc()).limit(limit)
        if status is not None:
            query = query.where(runs.c.status == status)
        if queue is not None:
            query = query.where(runs.c.queue == queue)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in reversed(conn.execute(query).all())]

    def job_counts(self) -> list[dict[str, Any]]:
        """How many jobs each queue has in each status: ``queue``,
        ``status``, ``count``, by queue then status."""
        jobs = self.jobs
        query = (
            sa.select(jobs.c.queue, jobs.c.status, sa.func.count().label("count"))
            .group_by(jobs.c.queue, jobs.c.status)
            .order_by(jobs.c.queue, jobs.c.status)
        )
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def run_counts(self, since: float) -> list[dict[str, Any]]:
        """The runs that happened (started, else finished or were due) at
        *since* or later, by queue and status: ``queue``, ``status``,
        ``count``, and the lateness of those that started (``started_at``
        minus ``scheduled_at``, seconds): ``late_avg`` and ``late_max``
        (None when none started)."""
        runs = self.runs
        happened = sa.func.coalesce(runs.c.started_at, runs.c.finished_at, runs.c.scheduled_at)
        late = runs.c.started_at - runs.c.scheduled_at
        query = (
            sa.select(
                runs.c.queue,
                runs.c.status,
                sa.func.count().label("count"),
                sa.func.avg(late).label("late_avg"),
                sa.func.max(late).label("late_max"),
            )
            .where(happened >= since)
            .group_by(runs.c.queue, runs.c.status)
            .order_by(runs.c.queue, runs.c.status)
        )
        with self.engine.connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(query)]
        for row in rows:
            for key in ("late_avg", "late_max"):
                row[key] = None if row[key] is None else float(row[key])
        return rows

    def run_times(self, since: float, limit: int) -> list[dict[str, Any]]:
        """The latest *limit* runs that happened at *since* or later, oldest
        first: ``queue``, ``status``, ``scheduled_at``, ``started_at`` and
        ``finished_at`` only (the dashboard's chart buckets them)."""
        runs = self.runs
        happened = sa.func.coalesce(runs.c.started_at, runs.c.finished_at, runs.c.scheduled_at)
        columns = (runs.c.queue, runs.c.status, runs.c.scheduled_at, runs.c.started_at, runs.c.finished_at)
        query = sa.select(*columns).where(happened >= since).order_by(happened.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in reversed(conn.execute(query).all())]
