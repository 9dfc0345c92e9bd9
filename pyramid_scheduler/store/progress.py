"""Progress records: the latest progress of each job's run, and the stop requests read back.

Beneath :mod:`pyramid_scheduler.daemon.control`, which writes a running
job's progress here (throttled) and reads, for the runs it watches, whether
their job has been canceled meanwhile and what ``timeout`` it asked for; and
beneath :mod:`pyramid_scheduler.web.records`, which adds the progress to the
job's record. One row per job in ``<prefix>progress`` (the latest run's
report replaces the previous one); the row goes with its job at
housekeeping (:meth:`~pyramid_scheduler.store.ledger.Ledger.purge`).

The stop request itself is the job's ``canceled`` status in ``<prefix>jobs``:
whichever daemon consumes the ``cancel`` message writes it there, in the one
database every daemon of the queue shares, so the daemon running the job
finds it whichever daemon took the message.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pyramid_scheduler.store.tables import Tables

#: Most job ids read back in one statement.
CHUNK = 500


def write_progress(
    tables: Tables, engine: Engine, job_id: str, run_key: str, fraction: float, message: str, at: float
) -> None:
    """Record *job_id*'s latest progress (replacing the one before)."""
    table = tables.progress
    values = {"run_key": run_key, "fraction": fraction, "message": message, "at": at}
    with engine.begin() as conn:
        if conn.execute(table.update().where(table.c.job_id == job_id).values(**values)).rowcount:
            return
        try:
            with conn.begin_nested():
                conn.execute(table.insert().values(job_id=job_id, **values))
        except sa.exc.IntegrityError:  # another run of the job wrote first
            conn.execute(table.update().where(table.c.job_id == job_id).values(**values))


def read_progress(tables: Tables, engine: Engine, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The latest progress of each of *job_ids* that has one: ``fraction``,
    ``message``, ``at`` (epoch seconds) and ``run_key``."""
    table = tables.progress
    rows = _by_ids(engine, sa.select(table), table.c.job_id, job_ids)
    return {row.job_id: {k: v for k, v in row._mapping.items() if k != "job_id"} for row in rows}


def job_statuses(tables: Tables, engine: Engine, job_ids: Iterable[str]) -> dict[str, str]:
    """The status of each of *job_ids* still recorded (``canceled``: stop its run)."""
    jobs = tables.jobs
    return {row.id: row.status for row in _by_ids(engine, sa.select(jobs.c.id, jobs.c.status), jobs.c.id, job_ids)}


def job_timeouts(tables: Tables, engine: Engine, job_ids: Iterable[str]) -> dict[str, float | None]:
    """The ``timeout`` option each of *job_ids* was sent with (None: none)."""
    jobs = tables.jobs
    rows = _by_ids(engine, sa.select(jobs.c.id, jobs.c.request), jobs.c.id, job_ids)
    return {row.id: _timeout_of(row.request) for row in rows}


def _by_ids(engine: Engine, query: Any, column: Any, job_ids: Iterable[str]) -> list[Any]:
    ids = list(job_ids)
    rows: list[Any] = []
    with engine.connect() as conn:
        for start in range(0, len(ids), CHUNK):
            rows.extend(conn.execute(query.where(column.in_(ids[start : start + CHUNK]))))
    return rows


def _timeout_of(request: str) -> float | None:
    try:
        timeout = (json.loads(request).get("options") or {}).get("timeout")
    except (ValueError, AttributeError):
        return None
    return float(timeout) if isinstance(timeout, int | float) and not isinstance(timeout, bool) else None
