"""Store: the job ledger, the per-queue APScheduler job stores and the leases.

All of it lives in the job store's database (``scheduler.jobstore.url``):

* ``<prefix>jobs``: one row per job request (its wire message, status, run
  count, last result or error). It absorbs redelivered and duplicate messages
  by job id, and it is what users can read back.
* ``<prefix>runs``: one row per scheduled run, keyed by ``run_key``
  (``job_id@scheduled time``): started -> done | failed | missed |
  interrupted. It closes APScheduler 3's gaps (it submits a run before
  updating its store, and removes a date job before the run finishes): a run
  found ``started`` after a crash is reported interrupted, never re-run.
* ``<prefix>aps_<queue>``: APScheduler's own table, one per queue, so a
  daemon restricted with ``-q`` only loads its queues' jobs.
* ``<prefix>leases``: which daemon executes each queue, with an epoch.
* ``<prefix>dead_letters``: messages refused at the daemon's door, with why.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from apscheduler.job import Job
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.util import datetime_to_utc_timestamp, utc_timestamp_to_datetime
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine

from pyramid_scheduler.daemon.catchup import CatchUpJob
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.store.schema import upgrade
from pyramid_scheduler.triggers.cron import WallClockCronTrigger
from pyramid_scheduler.wire.refs import check_ref

log = get_logger(__name__)

#: Job statuses. ``scheduled``, ``running`` and ``paused`` are live; the others are final.
LIVE = ("scheduled", "running", "paused")
FINAL = ("done", "failed", "missed", "canceled", "interrupted", "parked")


def now() -> float:
    return time.time()


#: The longest table name every supported database keeps whole (PostgreSQL: 63).
MAX_TABLENAME = 63


def aps_tablename(prefix: str, queue: str) -> str:
    """The name of *queue*'s APScheduler table: distinct queues, distinct tables.

    A queue name of letters, digits and ``_`` is used as it is (the names
    of 0.3.4 and of every release so far). Any other name (``a.b``, ``a-b``)
    has its other characters replaced by ``_`` and a digest of the exact
    name appended, so ``a.b``, ``a-b`` and ``a_b`` no longer share a table.
    """
    if re.fullmatch(r"[A-Za-z0-9_]+", queue):
        return f"{prefix}aps_{queue}"
    digest = hashlib.sha256(queue.encode("utf-8")).hexdigest()[:10]
    readable = f"{prefix}aps_{re.sub(r'[^A-Za-z0-9_]', '_', queue)}"
    return f"{readable[: MAX_TABLENAME - len(digest) - 1]}_{digest}"


def table_clash(prefix: str, queues: tuple[str, ...]) -> tuple[str, str] | None:
    """Two of *queues* whose tables a database would take for one (names
    equal but for case, as SQLite and MySQL compare them, or in their first
    :data:`MAX_TABLENAME` characters, where PostgreSQL cuts them), or None."""
    seen: dict[str, str] = {}
    for queue in queues:
        key = aps_tablename(prefix, queue).lower()[:MAX_TABLENAME]
        if key in seen:
            return seen[key], queue
        seen[key] = queue
    return None


class Ledger:
    """The scheduler's own tables, and every read and write of them."""

    def __init__(self, engine: Engine, prefix: str = "pyramid_scheduler_") -> None:
        self.engine = engine
        self.prefix = prefix
        #: Dead letters dropped, oldest first, to keep scheduler.dead_letters.max.
        self.dead_letters_dropped = 0
        self.metadata = sa.MetaData()
        self.jobs = sa.Table(
            f"{prefix}jobs",
            self.metadata,
            sa.Column("id", sa.String(200), primary_key=True),
            sa.Column("queue", sa.String(200), nullable=False, index=True),
            sa.Column("func", sa.String(500), nullable=False),
            sa.Column("kind", sa.String(20), nullable=False),
            sa.Column("status", sa.String(20), nullable=False, index=True),
            sa.Column("mid", sa.String(64), nullable=False),
            sa.Column("request", sa.Text, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("updated_at", sa.Float, nullable=False),
            sa.Column("runs", sa.Integer, nullable=False, default=0),
            sa.Column("last_run_at", sa.Float),
            sa.Column("result", sa.Text),
            sa.Column("error", sa.Text),
            # Retries: the number of the next (or current) attempt at the job's
            # run, and when the next retry is due (None: none pending).
            sa.Column("attempt", sa.Integer, nullable=False, server_default="1"),
            sa.Column("retry_at", sa.Float),
            # Seconds the finished record is kept (None: scheduler.result_ttl).
            sa.Column("ttl", sa.Float),
        )
        self.runs = sa.Table(
            f"{prefix}runs",
            self.metadata,
            sa.Column("run_key", sa.String(300), primary_key=True),
            sa.Column("job_id", sa.String(200), nullable=False, index=True),
            sa.Column("queue", sa.String(200), nullable=False),
            sa.Column("scheduled_at", sa.Float, nullable=False),
            sa.Column("status", sa.String(20), nullable=False, index=True),
            sa.Column("owner", sa.String(200), nullable=False),
            sa.Column("started_at", sa.Float),
            sa.Column("finished_at", sa.Float),
            #: Why a run was missed, failed or interrupted.
            sa.Column("error", sa.Text),
        )
        self.leases = sa.Table(
            f"{prefix}leases",
            self.metadata,
            sa.Column("queue", sa.String(200), primary_key=True),
            sa.Column("owner", sa.String(200), nullable=False),
            sa.Column("epoch", sa.Integer, nullable=False),
            sa.Column("expires_at", sa.Float, nullable=False),
        )
        self.event_seqs = sa.Table(
            f"{prefix}event_seqs",
            self.metadata,
            sa.Column("job_id", sa.String(200), primary_key=True),
            sa.Column("seq", sa.Integer, nullable=False),
        )
        self.dead_letters = sa.Table(
            f"{prefix}dead_letters",
            self.metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("queue", sa.String(200), nullable=False),
            sa.Column("received_at", sa.Float, nullable=False),
            sa.Column("reason", sa.Text, nullable=False),
            #: The first DEAD_LETTER_PREFIX bytes of the body (as text).
            sa.Column("body", sa.Text, nullable=False),
            #: The whole body's size in bytes and SHA-256 (hex).
            sa.Column("size", sa.BigInteger),
            sa.Column("sha256", sa.String(64)),
        )
        upgrade(engine, self.metadata, prefix)
        # The statements of every run, built once: SQLAlchemy then skips
        # building and caching them per call (about half the CPU of a write).
        jobs, runs, param = self.jobs, self.runs, sa.bindparam
        self._insert_job = jobs.insert()
        self._insert_run = runs.insert()
        # Each run write by key, and the same for several keys at once
        # (write_runs: one statement for many rows, where an executemany
        # would send one per row).
        mark_running = self._marking = jobs.update().values(
            status=sa.case((jobs.c.status == "scheduled", "running"), else_=jobs.c.status), updated_at=param("p_stamp")
        )
        self._mark_running = mark_running.where(jobs.c.id == param("p_job_id"), jobs.c.status != "canceled")
        self._mark_all_running = mark_running.where(
            jobs.c.id.in_(param("p_job_ids", expanding=True)), jobs.c.status != "canceled"
        )
        # On PostgreSQL a write of one statement runs in autocommit: the
        # statement is its own transaction, with no BEGIN and COMMIT round
        # trips. start_run's common case is one such statement: the run is
        # inserted only if the job's row was marked, and a known run fails
        # the whole statement (four round trips become one).
        self._autocommit = (
            engine.execution_options(isolation_level="AUTOCOMMIT") if engine.dialect.name == "postgresql" else None
        )
        self._start_alone: Any = None
        if self._autocommit is not None:
            marked = self._mark_running.returning(jobs.c.id).cte("marked")
            started = sa.select(
                param("p_run_key", type_=sa.String),
                marked.c.id,
                param("p_queue", type_=sa.String),
                param("p_scheduled_at", type_=sa.Float),
                sa.literal("started"),
                param("p_owner", type_=sa.String),
                param("p_stamp", type_=sa.Float),
            )
            self._start_alone = (
                runs.insert()
                .from_select(["run_key", "job_id", "queue", "scheduled_at", "status", "owner", "started_at"], started)
                .add_cte(marked)
                .returning(runs.c.run_key)
            )
        finish_run = self._finishing = runs.update().values(
            status=param("p_status"), finished_at=param("p_stamp"), error=param("p_error")
        )
        self._finish_run = finish_run.where(runs.c.run_key == param("p_run_key"))
        self._finish_all_runs = finish_run.where(runs.c.run_key.in_(param("p_run_keys", expanding=True)))
        self._finish_cache: dict[tuple[Any, ...], Any] = {}

    # -- jobs -------------------------------------------------------------------------
    def _job_row(self, request: dict[str, Any]) -> dict[str, Any]:
        stamp = now()
        return {
            "id": request["id"],
            "queue": request["queue"],
            "func": request["func"],
            "kind": request["trigger"]["type"],
            "status": "scheduled",
            "mid": request["mid"],
            "request": json.dumps(request),
            "created_at": stamp,
            "updated_at": stamp,
            "runs": 0,
            "attempt": 1,
            "ttl": (request.get("options") or {}).get("ttl"),
        }

    def insert_job(self, conn: Connection, request: dict[str, Any]) -> None:
        """Record a new job in *conn*'s transaction.

        :raises ConflictingIdError: a live job has this id, or this very message
            (same ``mid``) was stored before: a duplicate to absorb.
        """
        job_id = request["id"]
        row = conn.execute(sa.select(self.jobs.c.status, self.jobs.c.mid).where(self.jobs.c.id == job_id)).first()
        if row is not None:
            if row.status in LIVE or row.mid == request["mid"]:
                raise ConflictingIdError(job_id)
            # A finished job's id is being reused by a new request.
            conn.execute(self.runs.delete().where(self.runs.c.job_id == job_id))
            conn.execute(self.jobs.delete().where(self.jobs.c.id == job_id))
        conn.execute(self._insert_job, self._job_row(request))

    def add_job(self, request: dict[str, Any]) -> None:
        """Record a new job in a transaction of its own: one INSERT when the id
        is new (the common case), else :meth:`insert_job`'s checks.

        :raises ConflictingIdError: as :meth:`insert_job`.
        """
        try:
            self.add_jobs([request])
            return
        except sa.exc.IntegrityError:
            pass  # the id is known: a duplicate, or a finished job's id reused
        with self.engine.begin() as conn:
            self.insert_job(conn, request)

    def add_jobs(self, requests: list[dict[str, Any]]) -> None:
        """Record new jobs in one transaction (one multi-row INSERT).

        :raises sqlalchemy.exc.IntegrityError: an id is already known; nothing
            is recorded (then record them one by one with :meth:`add_job`).
        """
        rows = [self._job_row(request) for request in requests]
        if len(rows) == 1 and self._autocommit is not None:
            # One INSERT, its own transaction (several rows are an executemany).
            with self._autocommit.connect() as conn:
                conn.execute(self._insert_job, rows[0])
            return
        with self.engine.begin() as conn:
            conn.execute(self._insert_job, rows[0] if len(rows) == 1 else rows)

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(self.jobs).where(self.jobs.c.id == job_id)).first()
        return None if row is None else dict(row._mapping)

    def next_run_times(self, rows: list[dict[str, Any]]) -> dict[str, float | None]:
        """The next run time (epoch seconds; None: paused, parked or none) of
        each job in *rows*, read from its queue's APScheduler table, which the
        daemon keeps exact."""
        times: dict[str, float | None] = {}
        by_queue: dict[str, list[str]] = {}
        for row in rows:
            by_queue.setdefault(row["queue"], []).append(row["id"])
        for queue, ids in by_queue.items():
            table = sa.table(aps_tablename(self.prefix, queue), sa.column("id"), sa.column("next_run_time"))
            try:
                with self.engine.connect() as conn:
                    times.update(
                        conn.execute(sa.select(table.c.id, table.c.next_run_time).where(table.c.id.in_(ids))).all()
                    )
            except sa.exc.DBAPIError:  # no daemon has created the queue's table yet
                continue
        return times

    def list_runs(self, job_id: str, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """A job's recorded runs (each retry is a run), oldest first: in the
        order they started (missed runs: were recorded); with *limit*, the
        latest *limit* of them."""
        runs = self.runs
        happened = sa.func.coalesce(runs.c.started_at, runs.c.finished_at, runs.c.scheduled_at)
        query = (
            sa.select(runs)
            .where(runs.c.job_id == job_id)
            .order_by(happened.desc(), runs.c.scheduled_at.desc())
            .limit(limit)
        )
        if status is not None:
            query = query.where(runs.c.status == status)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in reversed(conn.execute(query).all())]

    def list_jobs(self, queue: str | None, status: str | None, limit: int) -> list[dict[str, Any]]:
        query = sa.select(self.jobs).order_by(self.jobs.c.updated_at.desc()).limit(limit)
        if queue is not None:
            query = query.where(self.jobs.c.queue == queue)
        if status is not None:
            query = query.where(self.jobs.c.status == status)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def list_leases(self) -> list[dict[str, Any]]:
        """Each queue's lease: which daemon holds it, and until when."""
        query = sa.select(self.leases).order_by(self.leases.c.queue)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def set_status(
        self, job_id: str, queue: str, status: str, only_from: tuple[str, ...] = LIVE, error: str | None = None
    ) -> bool:
        """Move a job of *queue* to *status* if it is in one of *only_from*;
        True if it moved."""
        values: dict[str, Any] = {"status": status, "updated_at": now()}
        if error is not None:
            values["error"] = error
        with self.engine.begin() as conn:
            moved = conn.execute(
                self.jobs.update()
                .where(self.jobs.c.id == job_id, self.jobs.c.queue == queue, self.jobs.c.status.in_(only_from))
                .values(**values)
            ).rowcount
        return bool(moved)

    def set_trigger(self, job_id: str, queue: str, trigger: dict[str, Any]) -> bool:
        """Replace a live job's trigger spec in its record (``reschedule_job``);
        True if the job was found."""
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(self.jobs.c.request).where(
                    self.jobs.c.id == job_id, self.jobs.c.queue == queue, self.jobs.c.status.in_(LIVE)
                )
            ).first()
            if row is None:
                return False
            request = dict(json.loads(row.request), trigger=trigger)
            conn.execute(
                self.jobs.update()
                .where(self.jobs.c.id == job_id)
                .values(request=json.dumps(request), kind=trigger["type"], updated_at=now())
            )
        return True

    # -- runs -------------------------------------------------------------------------
    def start_run(self, job_id: str, queue: str, run_key: str, scheduled_at: float, owner: str) -> str:
        """Record that a run starts. Returns ``"start"``, or the status the run
        already had (``"started"`` means it was cut short by a crash), or
        ``"canceled"``."""
        # The common case in two statements (one on PostgreSQL): the job is
        # there and not canceled, and the run is new (else the INSERT fails,
        # and all is rolled back and looked at below).
        stamp = now()
        try:
            if self._autocommit is not None:
                with self._autocommit.connect() as conn:
                    if conn.execute(
                        self._start_alone,
                        {
                            "p_job_id": job_id,
                            "p_run_key": run_key,
                            "p_queue": queue,
                            "p_scheduled_at": scheduled_at,
                            "p_owner": owner,
                            "p_stamp": stamp,
                        },
                    ).first():
                        return "start"
                    raise Unusual()
            with self.engine.begin() as conn:
                if conn.execute(self._mark_running, {"p_job_id": job_id, "p_stamp": stamp}).rowcount:
                    conn.execute(
                        self._insert_run, self._started_row(job_id, queue, run_key, scheduled_at, owner, stamp)
                    )
                    return "start"
                raise Unusual()
        except (sa.exc.IntegrityError, Unusual):
            pass
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(self.runs.c.status).where(self.runs.c.run_key == run_key)).first()
            if row is not None:
                return str(row.status)
            status = conn.execute(sa.select(self.jobs.c.status).where(self.jobs.c.id == job_id)).scalar()
            if status == "canceled":
                # A run (a retry) stored just as the job was canceled: not run.
                return "canceled"
            stamp = now()
            conn.execute(
                self.runs.insert().values(
                    run_key=run_key,
                    job_id=job_id,
                    queue=queue,
                    scheduled_at=scheduled_at,
                    status="started",
                    owner=owner,
                    started_at=stamp,
                )
            )
            conn.execute(
                self.jobs.update()
                .where(self.jobs.c.id == job_id, self.jobs.c.status == "scheduled")
                .values(status="running", updated_at=stamp)
            )
        return "start"

    @staticmethod
    def _started_row(
        job_id: str, queue: str, run_key: str, scheduled_at: float, owner: str, stamp: float
    ) -> dict[str, Any]:
        return {
            "run_key": run_key,
            "job_id": job_id,
            "queue": queue,
            "scheduled_at": scheduled_at,
            "status": "started",
            "owner": owner,
            "started_at": stamp,
        }

    def finish_run(
        self,
        job_id: str,
        run_key: str,
        status: str,
        final: bool,
        result: Any = None,
        error: str | None = None,
        scheduled_at: float | None = None,
        queue: str = "",
        owner: str = "",
        retry_at: float | None = None,
    ) -> bool:
        """Record a run's outcome (``done``, ``failed``, ``missed`` or
        ``interrupted``) and the job's status after it.

        With *retry_at* (a failed run to be retried), the job stays
        ``scheduled`` with its next attempt due then, so a daemon that
        starts before the retry is in APScheduler's store schedules it
        (:meth:`orphans`). Returns False if the job was no longer live
        (canceled while it ran), so nothing is to be retried.
        """
        stamp = now()
        key, run_params, job_params = self.finish_params(job_id, run_key, status, final, result, error, retry_at, stamp)
        if self._autocommit is not None:  # the common case in one statement
            with self._autocommit.connect() as conn:
                if conn.execute(self._finish_alone(key), {**run_params, **job_params}).first():
                    return True
        job_update, canceled_update = self._finish_statements(*key)
        with self.engine.begin() as conn:
            updated = conn.execute(self._finish_run, run_params).rowcount
            if not updated:
                conn.execute(
                    self._insert_run,
                    {
                        "run_key": run_key,
                        "job_id": job_id,
                        "queue": queue,
                        "status": status,
                        "owner": owner,
                        "error": error,
                        "started_at": None,
                        "scheduled_at": scheduled_at if scheduled_at is not None else stamp,
                        "finished_at": stamp,
                    },
                )
            moved = conn.execute(job_update, job_params).rowcount
            if not moved:
                # Canceled while it ran: keep that status, but record the run.
                conn.execute(canceled_update, job_params)
        return bool(moved)

    @staticmethod
    def finish_params(
        job_id: str,
        run_key: str,
        status: str,
        final: bool,
        result: Any,
        error: str | None,
        retry_at: float | None,
        stamp: float,
    ) -> tuple[tuple[str, bool, bool, bool], dict[str, Any], dict[str, Any]]:
        """What :meth:`finish_run` writes: the kind of outcome (which picks
        its statements), the run's parameters and the job's."""
        params = {"p_job_id": job_id, "p_stamp": stamp, "p_error": error, "p_retry_at": retry_at}
        if status == "done":
            params["p_result"] = _json_or_repr(result)
        return (
            (status, final, error is not None, retry_at is not None),
            {"p_run_key": run_key, "p_status": status, "p_stamp": stamp, "p_error": error},
            params,
        )

    def write_runs(
        self,
        starts: list[tuple[str, str, str, float, str]],
        finishes: list[tuple[tuple[str, bool, bool, bool], dict[str, Any], dict[str, Any]]],
    ) -> set[str]:
        """Record several run starts (:meth:`start_run`'s arguments) and run
        ends (:meth:`finish_params`) at once, no job twice -- in the common
        case only: each start's job live and its run new, each end's run
        started and its job live. Return the run keys written; the others
        were not written at all (neither their run nor their job touched):
        record those one by one.

        On PostgreSQL, when the ends are alike but for their results (same
        outcome: the common case), this is one statement in autocommit, each
        run written with its job or neither (:meth:`_runs_at_once`); else one
        transaction, all of them written or none.

        :raises sqlalchemy.exc.IntegrityError: a start's run is known; nothing
            is written.
        """
        if not starts and not finishes:
            return set()
        stamp = now()
        if self._autocommit is not None:
            alike = _alike(finishes, per_run="p_result")
            if len(alike) <= 1:
                return self._runs_at_once(starts, next(iter(alike.items()), None), stamp)
        # The ends alike but for their keys (the common case: all done, with
        # the same result), each set written by one statement per table.
        alike = _alike(finishes)
        try:
            with self.engine.begin() as conn:
                if starts:
                    marked = conn.execute(
                        self._mark_all_running, {"p_job_ids": [start[0] for start in starts], "p_stamp": stamp}
                    ).rowcount
                    if marked != len(starts):
                        raise Unusual()
                    conn.execute(self._insert_run, [self._started_row(*start, stamp) for start in starts])
                for (key, run_values, job_values), (run_keys, job_ids, _) in alike.items():
                    job_update, _ = self._finish_statements(*key, many=True)
                    if conn.execute(
                        self._finish_all_runs, {**dict(run_values), "p_run_keys": run_keys}
                    ).rowcount != len(run_keys) or conn.execute(
                        job_update, {**dict(job_values), "p_job_ids": job_ids}
                    ).rowcount != len(job_ids):
                        raise Unusual()
        except Unusual:
            return set()
        return {start[2] for start in starts} | {key for run_keys, _, _ in alike.values() for key in run_keys}

    def _runs_at_once(
        self, starts: list[tuple[str, str, str, float, str]], ends: tuple[_EndsKey, _Ends] | None, stamp: float
    ) -> set[str]:
        """:meth:`write_runs` on PostgreSQL for *starts* and one set of *ends*
        alike but for their results, as one statement (:meth:`_at_once`): one
        round trip, and one statement for SQLAlchemy to execute where the
        transaction had four and its ``BEGIN`` and ``COMMIT``."""
        params: dict[str, Any] = {}
        key = None
        if ends is not None:
            (key, run_values, job_values), (run_keys, job_ids, results) = ends
            params.update(run_values, **dict(job_values), f_keys=run_keys)
            if key[0] == "done":
                params.update(f_ids=job_ids, f_results=results)
        if starts:  # start_run's arguments, as one array each
            columns = [list(column) for column in zip(*starts, strict=True)]
            params.update(zip(("s_ids", "s_queues", "s_keys", "s_times", "s_owners"), columns, strict=True))
        params.setdefault("p_stamp", stamp)  # one stamp for the batch (an end's, if any)
        assert self._autocommit is not None
        with self._autocommit.connect() as conn:
            return set(conn.execute(self._at_once(bool(starts), key), params).scalars())

    def _at_once(self, starts: bool, key: tuple[str, bool, bool, bool] | None) -> Any:
        """The statement of :meth:`_runs_at_once` (built once per kind of
        end): data-modifying CTEs over the arrays of the starts
        (``s_*``) and of the ends' run keys (``f_keys``), returning the run
        keys written.

        A start's run is inserted only if its job's row was marked running
        (not canceled); an end's job is updated only if its run's row is
        there, and its run only if the job's update was made (as in
        :meth:`_finish_alone`). A known run fails the whole statement."""
        cache_key = ("at once", starts, key)
        statement = self._finish_cache.get(cache_key)
        if statement is not None:
            return statement
        jobs, runs, param = self.jobs, self.runs, sa.bindparam
        texts = ARRAY(sa.String)
        written = []
        if starts:
            start = (
                sa.func.unnest(
                    param("s_keys", type_=texts),
                    param("s_ids", type_=texts),
                    param("s_queues", type_=texts),
                    param("s_times", type_=ARRAY(sa.Float)),
                    param("s_owners", type_=texts),
                )
                .table_valued("run_key", "job_id", "queue", "scheduled_at", "owner")
                .render_derived("s")
            )
            marked = (
                self._marking.where(jobs.c.id == sa.any_(param("s_ids", type_=texts)), jobs.c.status != "canceled")
                .returning(jobs.c.id)
                .cte("marked")
            )
            started = (
                runs.insert()
                .from_select(
                    ["run_key", "job_id", "queue", "scheduled_at", "status", "owner", "started_at"],
                    sa.select(
                        start.c.run_key,
                        start.c.job_id,
                        start.c.queue,
                        start.c.scheduled_at,
                        sa.literal("started"),
                        start.c.owner,
                        param("p_stamp", type_=sa.Float),
                    ).join_from(start, marked, marked.c.id == start.c.job_id),
                )
                .returning(runs.c.run_key)
                .cte("started")
            )
            written.append(sa.select(started.c.run_key))
        if key is not None:
            # The runs by their keys (the primary key), their jobs by the runs'.
            ended = runs.c.run_key == sa.any_(param("f_keys", type_=texts))
            # Each job's own result, from the arrays of the ends' job ids and results.
            given = (
                sa.func.unnest(param("f_ids", type_=texts), param("f_results", type_=texts))
                .table_valued("job_id", "result")
                .render_derived("g")
            )
            result = sa.select(given.c.result).where(given.c.job_id == jobs.c.id).scalar_subquery()
            job_update, _ = self._finish_updates(
                *key, jobs.c.id.in_(sa.select(runs.c.job_id).where(ended)), result=result
            )
            finished_jobs = job_update.returning(jobs.c.id).cte("finished_jobs")
            finished = (
                self._finishing.where(ended, runs.c.job_id.in_(sa.select(finished_jobs.c.id)))
                .returning(runs.c.run_key)
                .cte("finished")
            )
            written.append(sa.select(finished.c.run_key))
        statement = self._finish_cache[cache_key] = sa.union_all(*written) if len(written) > 1 else written[0]
        return statement

    def _finish_alone(self, key: tuple[str, bool, bool, bool]) -> Any:
        """:meth:`finish_run`'s common case on PostgreSQL, one statement that
        is its own transaction: the live job's ``UPDATE`` (in a CTE) if the
        run's row is there, and the run's ``UPDATE`` if the job's was made;
        both or neither. Anything else (no such run, the job canceled
        meanwhile) writes nothing: :meth:`finish_run` then writes it all in
        its transaction."""
        statement = self._finish_cache.get(key + ("alone",))
        if statement is None:
            runs, param = self.runs, sa.bindparam
            job_update, _ = self._finish_statements(*key)
            live_job = (
                job_update.where(sa.exists(sa.select(runs.c.run_key).where(runs.c.run_key == param("p_run_key"))))
                .returning(self.jobs.c.id)
                .cte("finished_job")
            )
            statement = (
                self._finish_run.where(sa.exists(sa.select(live_job.c.id))).add_cte(live_job).returning(runs.c.run_key)
            )
            self._finish_cache[key + ("alone",)] = statement
        return statement

    def _finish_statements(
        self, status: str, final: bool, has_error: bool, retry: bool, many: bool = False
    ) -> tuple[Any, Any]:
        """The two job updates of :meth:`finish_run` for one kind of outcome
        (built once per kind): to the status after the run if the job is
        live, else (canceled while it ran) keeping its status. By
        ``p_job_id``, or with *many* by the list ``p_job_ids``."""
        key = (status, final, has_error, retry, many)
        statements = self._finish_cache.get(key)
        if statements is None:
            by_id = (
                self.jobs.c.id.in_(sa.bindparam("p_job_ids", expanding=True))
                if many
                else self.jobs.c.id == sa.bindparam("p_job_id")
            )
            statements = self._finish_cache[key] = self._finish_updates(status, final, has_error, retry, by_id)
        return statements

    def _finish_updates(
        self, status: str, final: bool, has_error: bool, retry: bool, by_id: Any, result: Any = None
    ) -> tuple[Any, Any]:
        """:meth:`_finish_statements`, for the jobs chosen by the clause *by_id*
        (a done run's result: ``p_result``, or the expression *result*)."""
        jobs, param = self.jobs, sa.bindparam
        values: dict[str, Any] = {"updated_at": param("p_stamp")}
        if status in ("done", "failed"):
            values.update(runs=jobs.c.runs + 1, last_run_at=param("p_stamp"))
        if status == "done":
            values.update(result=param("p_result") if result is None else result, error=None)
        elif has_error:
            values["error"] = param("p_error")
        live = sa.case((jobs.c.status == "paused", "paused"), else_="scheduled")
        job_status: Any = status if final and not retry else live
        retry_values: dict[str, Any] = {"retry_at": param("p_retry_at")}
        if retry:
            retry_values["attempt"] = jobs.c.attempt + 1
        return (
            # status = a OR status = b ...: an IN would be rendered again at each call.
            jobs.update()
            .where(by_id, sa.or_(*(jobs.c.status == s for s in LIVE)))
            .values(status=job_status, **values, **retry_values),
            jobs.update().where(by_id).values(**values),
        )

    def recorded_runs(self, run_keys: list[str]) -> set[str]:
        """Those of *run_keys* that have a row in the run ledger."""
        if not run_keys:
            return set()
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(self.runs.c.run_key).where(self.runs.c.run_key.in_(run_keys))).scalars())

    def was_interrupted(self, job_id: str) -> bool:
        """True if a run of *job_id* was already recorded as interrupted."""
        with self.engine.connect() as conn:
            return (
                conn.execute(
                    sa.select(self.runs.c.run_key)
                    .where(self.runs.c.job_id == job_id, self.runs.c.status == "interrupted")
                    .limit(1)
                ).first()
                is not None
            )

    def recover(self, queues: tuple[str, ...], owner: str) -> list[dict[str, Any]]:
        """Mark runs left ``started`` by other owners on *queues* as
        interrupted and return them (with the job's request)."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(self.runs, self.jobs.c.request)
                .join(self.jobs, self.jobs.c.id == self.runs.c.job_id)
                .where(self.runs.c.queue.in_(queues), self.runs.c.status == "started", self.runs.c.owner != owner)
            ).all()
        return [dict(row._mapping) for row in rows]

    def orphans(self, queue: str, aps_table: sa.Table) -> list[dict[str, Any]]:
        """Live jobs of *queue* that APScheduler no longer holds and that have
        no run under way: submitted, removed by APScheduler, never started."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(self.jobs.c.id, self.jobs.c.request, self.jobs.c.status, self.jobs.c.retry_at).where(
                    self.jobs.c.queue == queue,
                    self.jobs.c.status.in_(LIVE),
                    ~sa.exists().where(aps_table.c.id == self.jobs.c.id),
                )
            ).all()
        return [_retry_request(dict(row._mapping)) for row in rows]

    def next_event_seq(self, job_id: str) -> int:
        """The next number of *job_id*'s events on the fan-out (1, 2, ...);
        kept here so that a restarted daemon goes on counting."""
        table = self.event_seqs
        with self.engine.begin() as conn:
            moved = conn.execute(table.update().where(table.c.job_id == job_id).values(seq=table.c.seq + 1)).rowcount
            if not moved:
                conn.execute(table.insert().values(job_id=job_id, seq=1))
                return 1
            return int(conn.execute(sa.select(table.c.seq).where(table.c.job_id == job_id)).scalar_one())

    def dead_letter_many(self, letters: list[tuple[str, str, Any]], keep: int | None = None) -> int:
        """Write the dead letters *letters* ((queue, reason, body)) in one
        transaction: of each body its first :data:`DEAD_LETTER_PREFIX` bytes,
        its size and SHA-256. Then, if more than *keep* dead letters are
        kept, the oldest beyond that are dropped: return how many (counted in
        :attr:`dead_letters_dropped`)."""
        stamp = now()
        rows = [
            dict(queue=_storable(queue, 200), received_at=stamp, reason=_storable(reason, 2000), **_letter_body(body))
            for queue, reason, body in letters
        ]
        table = self.dead_letters
        dropped = 0
        with self.engine.begin() as conn:
            conn.execute(table.insert(), rows)
            if keep is not None:
                newest = sa.select(table.c.id).order_by(table.c.id.desc()).offset(keep).limit(1).scalar_subquery()
                dropped = int(conn.execute(table.delete().where(table.c.id <= newest)).rowcount or 0)
        self.dead_letters_dropped += dropped
        return dropped

    def purge(self, older_than: float, at: float | None = None) -> int:
        """Forget finished jobs and old dead letters (housekeeping).

        A job with its own ``ttl`` option goes once it has been finished for
        that long (at time *at*, default now); the others, and dead letters,
        once finished before *older_than*.
        """
        at = now() if at is None else at
        jobs = self.jobs
        expired = sa.case(
            (jobs.c.ttl.is_(None), jobs.c.updated_at < older_than), else_=jobs.c.updated_at + jobs.c.ttl < at
        )
        with self.engine.begin() as conn:
            # Parked jobs are kept until they load again or are canceled.
            gone = (jobs.c.status.in_(FINAL), jobs.c.status != "parked", expired)
            conn.execute(self.runs.delete().where(self.runs.c.job_id.in_(sa.select(jobs.c.id).where(*gone))))
            count = conn.execute(jobs.delete().where(*gone)).rowcount
            conn.execute(self.event_seqs.delete().where(~sa.exists().where(jobs.c.id == self.event_seqs.c.job_id)))
            conn.execute(
                self.runs.delete().where(
                    self.runs.c.status.notin_(("started",)),
                    self.runs.c.finished_at < older_than,
                    self.runs.c.job_id.notin_(sa.select(jobs.c.id).where(jobs.c.ttl.is_not(None))),
                )
            )
            conn.execute(self.dead_letters.delete().where(self.dead_letters.c.received_at < older_than))
        return int(count)


#: Bytes of a refused message's body a dead letter keeps.
DEAD_LETTER_PREFIX = 4096


def _storable(text: str, longest: int) -> str:
    """*text* cut to *longest* characters, with what no database column
    takes (NUL, lone surrogates) escaped."""
    text = text[:longest]
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _letter_body(body: Any) -> dict[str, Any]:
    """A dead letter's ``body`` (prefix), ``size`` and ``sha256``."""
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    elif not isinstance(body, (bytes, bytearray)):
        try:
            body = json.dumps(body).encode("utf-8", "surrogatepass")
        except (TypeError, ValueError):
            body = repr(body).encode("utf-8", "surrogatepass")
    data = bytes(body)
    text = data[:DEAD_LETTER_PREFIX].decode("utf-8", "backslashreplace")
    return {
        "body": _storable(text, DEAD_LETTER_PREFIX * 4),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


class Unusual(Exception):
    """Rolls back a fast-path write whose assumption did not hold."""


#: Run ends alike (:func:`_alike`): the kind of outcome, the run's values
#: and the job's, and of each end its run key, its job id and its own values.
_EndsKey = tuple[tuple[str, bool, bool, bool], tuple[Any, ...], tuple[Any, ...]]
_Ends = tuple[list[str], list[str], list[Any]]


def _alike(
    finishes: list[tuple[tuple[str, bool, bool, bool], dict[str, Any], dict[str, Any]]], per_run: str | None = None
) -> dict[_EndsKey, _Ends]:
    """*finishes* (:meth:`Ledger.finish_params`) grouped by what they write
    but for their keys and the job parameter named *per_run*, whose values
    are kept per end (else None)."""
    own = {"p_job_id", per_run}
    alike: dict[_EndsKey, _Ends] = {}
    for key, run_params, job_params in finishes:
        run_values = tuple(sorted((k, v) for k, v in run_params.items() if k != "p_run_key"))
        job_values = tuple(sorted((k, v) for k, v in job_params.items() if k not in own))
        run_keys, job_ids, values = alike.setdefault((key, run_values, job_values), ([], [], []))
        run_keys.append(run_params["p_run_key"])
        job_ids.append(job_params["p_job_id"])
        values.append(job_params.get(per_run) if per_run else None)
    return alike


def _retry_request(row: dict[str, Any]) -> dict[str, Any]:
    """An orphan's row, its request due at its pending retry if it has one
    (the daemon stopped after recording the failure, before storing the retry)."""
    if row.get("retry_at") is not None:
        request = json.loads(row["request"])
        trigger = request.get("trigger") or {}
        when = datetime.fromtimestamp(row["retry_at"], timezone.utc).isoformat()
        request["trigger"] = {"type": trigger.get("type", "date"), "timezone": "UTC", "run_date": when}
        row["request"] = json.dumps(request)
    return row


def _json_or_repr(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return json.dumps(repr(value))


def _loadable_globals() -> dict[tuple[str, str], Any]:
    """Every global a stored job's pickle may name, by (module, name) exactly
    as pickle writes it: the trigger classes (and their cron fields and
    expressions) and the date/time types. Nothing else: no function, no
    dotted name (pickle protocol 4 would follow ``a.b`` through attributes),
    no module-wide prefix."""
    from datetime import date, time
    from zoneinfo import ZoneInfo

    from apscheduler.triggers.calendarinterval import CalendarIntervalTrigger
    from apscheduler.triggers.combining import AndTrigger, OrTrigger
    from apscheduler.triggers.cron import CronTrigger, expressions, fields
    from apscheduler.triggers.date import DateTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    classes: list[type] = [
        datetime,
        date,
        time,
        timedelta,
        timezone,
        ZoneInfo,
        DateTrigger,
        IntervalTrigger,
        CronTrigger,
        WallClockCronTrigger,
        CalendarIntervalTrigger,
        AndTrigger,
        OrTrigger,
        fields.BaseField,
        fields.WeekField,
        fields.DayOfMonthField,
        fields.DayOfWeekField,
        fields.MonthField,
        expressions.AllExpression,
        expressions.RangeExpression,
        expressions.MonthRangeExpression,
        expressions.WeekdayRangeExpression,
        expressions.WeekdayPositionExpression,
        expressions.LastDayOfMonthExpression,
    ]
    loadable: dict[tuple[str, str], Any] = {(cls.__module__, cls.__qualname__): cls for cls in classes}
    # Where releases before the package's subpackages pickled it from.
    loadable[("pyramid_scheduler.catchup", "WallClockCronTrigger")] = WallClockCronTrigger
    # ZoneInfo pickles as getattr(ZoneInfo, "_unpickle"), and only that getattr is served.
    loadable[("builtins", "getattr")] = _zoneinfo_getattr
    return loadable


def _zoneinfo_getattr(obj: Any, name: str) -> Any:
    from zoneinfo import ZoneInfo

    if obj is ZoneInfo and name == "_unpickle":
        return ZoneInfo._unpickle  # type: ignore[attr-defined]
    raise pickle.UnpicklingError(f"refusing getattr({obj!r:.80}, {name!r:.80}) in a stored job")


class JobUnpickler(pickle.Unpickler):
    """Loads APScheduler job state, and nothing else.

    A row of the job store written by someone else (an SQL injection in the
    application, a shared database role) must not run code when loaded: only
    the (module, name) pairs of :func:`_loadable_globals` are accepted, never
    a dotted or ``_``-prefixed name, and every other value is plain data. Job
    functions are stored as ``module:qualname`` strings, checked by
    :func:`pyramid_scheduler.wire.refs.check_ref` as the job loads.
    """

    _loadable: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if "." in name or name.startswith("_"):
            raise pickle.UnpicklingError(
                f"refusing to load {module!r:.80}, {name!r:.80} from a stored job (a dotted or private name)"
            )
        if JobUnpickler._loadable is None:
            JobUnpickler._loadable = _loadable_globals()
        try:
            return JobUnpickler._loadable[(module, name)]
        except (KeyError, TypeError):
            raise pickle.UnpicklingError(f"refusing to load {module!r:.80}.{name!r:.80} from a stored job") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id in a stored job")


class _Adding:
    """Lets the engine pass the wire request along with APScheduler's add_job."""

    _local: threading.local

    @contextmanager
    def adding(self, request: dict[str, Any] | None) -> Iterator[None]:
        """Make the next ``add_job`` in this thread record *request* (``None``
        when re-adding a known job)."""
        self._local.request = request
        try:
            yield
        finally:
            self._local.request = None


class MemoryQueueStore(_Adding, MemoryJobStore):
    """The memory job store (``scheduler.jobstore.url = memory``), per queue."""

    def __init__(self, on_added: Any = None) -> None:
        super().__init__()
        self.on_added = on_added
        self._local = threading.local()

    def add_job(self, job: Job) -> None:
        job.__class__ = CatchUpJob  # same slots: only how overdue runs are planned changes
        super().add_job(job)
        request = getattr(self._local, "request", None)
        if request is not None and self.on_added is not None:
            self.on_added(job, request)


class QueueJobStore(_Adding, SQLAlchemyJobStore):
    """APScheduler's SQL job store for one queue, writing the ledger row in the
    same transaction as the job, and parking (not deleting) jobs it cannot load.
    """

    #: Seconds between polls of the store while fenced.
    FENCED_POLL = 1.0

    def __init__(
        self,
        ledger: Ledger,
        queue: str,
        tablename: str,
        on_added: Any = None,
        fence: Callable[[], bool] | None = None,
        aliases: Mapping[str, str] | None = None,
        on_parked: Callable[[str, str, str], None] | None = None,
        allowed: tuple[str, ...] = (),
    ) -> None:
        super().__init__(engine=ledger.engine, tablename=tablename, pickle_protocol=pickle.HIGHEST_PROTOCOL)
        self.ledger = ledger
        self.queue = queue
        self.on_added = on_added
        self.fence = fence
        #: ``scheduler.func_aliases``: renamed job functions, applied on load.
        self.aliases = dict(aliases or {})
        #: ``scheduler.allowed_modules``: a stored job's function is checked
        #: against it (and must be named where it is defined) as it loads.
        self.allowed = allowed
        #: Called with (job id, queue, reason) when a job is newly parked.
        self.on_parked = on_parked
        self._local = threading.local()
        # APScheduler builds these at each call; the scheduler thread makes
        # them for every due job, so here they are built once.
        table, param = self.jobs_t, sa.bindparam
        self._due = (
            sa.select(table.c.id, table.c.job_state)
            .where(table.c.next_run_time <= param("p_now"))
            .order_by(table.c.next_run_time)
        )
        self._next = (
            sa.select(table.c.next_run_time)
            .where(table.c.next_run_time.is_not(None))
            .order_by(table.c.next_run_time)
            .limit(1)
        )
        self._update = (
            table.update()
            .where(table.c.id == param("p_id"))
            .values(next_run_time=param("p_next"), job_state=param("p_state"))
        )
        self._remove = table.delete().where(table.c.id == param("p_id"))
        self._remove_many = table.delete().where(table.c.id.in_(param("p_ids", expanding=True)))
        # The jobs due by p_until, and the row(s) of the first next run time
        # after it (without their state): both in one round trip.
        following = (
            sa.select(sa.func.min(table.c.next_run_time))
            .where(table.c.next_run_time > param("p_until"))
            .scalar_subquery()
        )
        self._window = (
            sa.select(
                table.c.id,
                table.c.next_run_time,
                sa.case((table.c.next_run_time <= param("p_until"), table.c.job_state)),
            )
            .where(table.c.next_run_time <= sa.func.coalesce(following, param("p_until")))
            .order_by(table.c.next_run_time)
        )
        #: Rows the scheduler thread has yet to write, by job id: the job
        #: handed over with its next run time, or None (delete the row).
        self._pending: dict[str, Job | None] = {}
        self._pending_lock = threading.RLock()
        #: Bumped by every change of the table that the scheduler thread did
        #: not make itself (see :mod:`pyramid_scheduler.daemon.scheduling`).
        self.changes = 0

    def fenced(self) -> bool:
        """True while this daemon's lease may have lapsed: it takes no due job then."""
        return self.fence is not None and not self.fence()

    def get_due_jobs(self, now: datetime) -> list[Job]:
        # A daemon whose lease may have lapsed (paused, cut off from the store)
        # must not let APScheduler take due jobs: APScheduler removes a date
        # job from the store as it submits it, and the new holder would never
        # see it. It sees nothing due until its lease is renewed.
        if self.fenced():
            return []
        self.flush()
        return self._load(self._due, {"p_now": datetime_to_utc_timestamp(now)})

    def get_next_run_time(self) -> datetime | None:
        self.flush()
        with self.engine.connect() as conn:
            next_run = utc_timestamp_to_datetime(conn.execute(self._next).scalar())
        if next_run is not None and self.fenced():
            # Poll instead of spinning on a due job we may not take.
            return max(next_run, datetime.now(timezone.utc) + timedelta(seconds=self.FENCED_POLL))
        return next_run

    # -- the scheduler thread's window and its deferred writes --------------------------
    def load_window(self, until: datetime) -> tuple[list[Job], datetime | None]:
        """The jobs due by *until* (oldest first; unloadable ones parked), and
        the earliest next run time after it (None: none), in one query.

        The caller writes its pending rows first (:meth:`flush`), or it gets
        the jobs it handed over again."""
        jobs: list[Job] = []
        parked: list[tuple[str, str]] = []
        following = None
        with self.engine.begin() as conn:
            for row in conn.execute(self._window, {"p_until": datetime_to_utc_timestamp(until)}):
                state = row[2]
                if state is None:
                    following = utc_timestamp_to_datetime(row.next_run_time)
                    break
                try:
                    jobs.append(self._reconstitute_job(state))
                except BaseException as exc:  # noqa: BLE001 - any failure to load parks the job
                    parked.extend(self._park(conn, row.id, exc))
        self._report_parked(parked)
        return jobs, following

    def defer_remove(self, job_id: str) -> None:
        """Delete the row of a job handed over for its last run at the next :meth:`flush`."""
        with self._pending_lock:
            self._pending[job_id] = None

    def defer_update(self, job: Job) -> None:
        """Write *job* (moved to its next run time) at the next :meth:`flush`."""
        with self._pending_lock:
            self._pending[job.id] = job

    def pending(self) -> int:
        """How many rows :meth:`flush` has to write."""
        return len(self._pending)

    def flush(self) -> None:
        """Write the rows the scheduler thread deferred, in one transaction.

        Called by every other read or change of the table first, so that
        nothing outside the scheduler thread sees a row it has not written
        yet. A row found gone was removed by a cancel meanwhile.

        :raises sqlalchemy.exc.SQLAlchemyError: nothing was written; the rows
            stay pending.
        """
        with self._pending_lock:
            if not self._pending:
                return
            removes = [job_id for job_id, job in self._pending.items() if job is None]
            updates = [
                {
                    "p_id": job.id,
                    "p_next": datetime_to_utc_timestamp(job.next_run_time),
                    "p_state": pickle.dumps(job.__getstate__(), self.pickle_protocol),
                }
                for job in self._pending.values()
                if job is not None
            ]
            with self.engine.begin() as conn:
                if removes:
                    conn.execute(self._remove_many, {"p_ids": removes})
                if updates:
                    conn.execute(self._update, updates[0] if len(updates) == 1 else updates)
            self._pending.clear()

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """Around a change of the table by another thread than the scheduler
        thread: its pending rows written first, its window loaded again after."""
        self.flush()
        try:
            yield
        finally:
            with self._pending_lock:
                self.changes += 1

    def remove_all_jobs(self) -> None:
        with self._changing():
            super().remove_all_jobs()

    def shutdown(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - the next daemon's start settles them
            log.warning(
                "queue %s: %d row(s) of jobs handed over not written (%s); the next daemon start settles them",
                self.queue,
                self.pending(),
                exc,
            )
        super().shutdown()

    def add_job(self, job: Job) -> None:
        request = getattr(self._local, "request", None)
        state = pickle.dumps(job.__getstate__(), self.pickle_protocol)
        try:
            with self._changing(), self.engine.begin() as conn:
                if request is not None:
                    self.ledger.insert_job(conn, request)
                conn.execute(
                    self.jobs_t.insert().values(
                        id=job.id, next_run_time=datetime_to_utc_timestamp(job.next_run_time), job_state=state
                    )
                )
        except sa.exc.IntegrityError:
            raise ConflictingIdError(job.id) from None
        if request is not None and self.on_added is not None:
            self.on_added(job, request)

    def update_job(self, job: Job) -> None:
        state = pickle.dumps(job.__getstate__(), self.pickle_protocol)
        with self._changing(), self.engine.begin() as conn:
            if not conn.execute(
                self._update, {"p_id": job.id, "p_state": state, "p_next": datetime_to_utc_timestamp(job.next_run_time)}
            ).rowcount:
                raise JobLookupError(job.id)

    def remove_job(self, job_id: str) -> None:
        with self._changing(), self.engine.begin() as conn:
            if not conn.execute(self._remove, {"p_id": job_id}).rowcount:
                raise JobLookupError(job_id)

    def _reconstitute_job(self, job_state: bytes) -> Job:
        state = JobUnpickler(io.BytesIO(job_state)).load()
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"a stored job's state is a {type(state).__name__}, not a dict")
        if state.get("func") in self.aliases:
            state["func"] = self.aliases[state["func"]]
        # The door's rule (APScheduler's __setstate__ would import any reference).
        check_ref(state.get("func"), self.allowed)
        state["jobstore"] = self
        job = CatchUpJob.__new__(CatchUpJob)
        job.__setstate__(state)
        job._scheduler = self._scheduler
        job._jobstore_alias = self._alias
        return job

    def _get_jobs(self, *conditions: Any) -> list[Job]:
        selectable = sa.select(self.jobs_t.c.id, self.jobs_t.c.job_state).order_by(self.jobs_t.c.next_run_time)
        selectable = selectable.where(sa.and_(*conditions)) if conditions else selectable
        self.flush()
        return self._load(selectable, {})

    def _load(self, selectable: Any, params: dict[str, Any]) -> list[Job]:
        jobs = []
        parked: list[tuple[str, str]] = []
        with self.engine.begin() as conn:
            for row in conn.execute(selectable, params):
                try:
                    jobs.append(self._reconstitute_job(row.job_state))
                except BaseException as exc:  # noqa: BLE001 - any failure to load parks the job
                    parked.extend(self._park(conn, row.id, exc))
        self._report_parked(parked)
        return jobs

    def lookup_job(self, job_id: str) -> Job | None:
        # APScheduler's lookup raises on a job it cannot load; a parked job is
        # "not loadable" here, so that cancel_job can still remove its row.
        self.flush()
        parked: list[tuple[str, str]] = []
        with self.engine.begin() as conn:
            state = conn.execute(sa.select(self.jobs_t.c.job_state).where(self.jobs_t.c.id == job_id)).scalar()
            if state is None:
                return None
            try:
                return self._reconstitute_job(state)
            except BaseException as exc:  # noqa: BLE001 - any failure to load parks the job
                parked.extend(self._park(conn, job_id, exc))
        self._report_parked(parked)
        return None

    def _park(self, conn: Connection, job_id: str, exc: BaseException) -> list[tuple[str, str]]:
        """Keep an unloadable job without a next run time (neither due nor
        deleted) and mark it parked; [(id, reason)] if it was not parked yet."""
        reason = f"cannot load the stored job: {type(exc).__name__}: {exc}"
        # A row with no ledger row (written by hand, or by someone else) is
        # reported too: once, as its next run time is taken away.
        moved = conn.execute(
            self.jobs_t.update()
            .where(self.jobs_t.c.id == job_id, self.jobs_t.c.next_run_time.is_not(None))
            .values(next_run_time=None)
        ).rowcount
        newly = conn.execute(
            self.ledger.jobs.update()
            .where(self.ledger.jobs.c.id == job_id, self.ledger.jobs.c.status != "parked")
            .values(status="parked", error=reason, updated_at=now())
        ).rowcount
        return [(job_id, reason)] if newly or moved else []

    def _report_parked(self, parked: list[tuple[str, str]]) -> None:
        for job_id, reason in parked:
            log.error("job %s (queue %s) parked: %s", job_id, self.queue, reason)
            if self.on_parked is not None:
                self.on_parked(job_id, self.queue, reason)

    def restore_parked(self) -> tuple[list[Job], list[dict[str, Any]]]:
        """Try every parked job of this queue again (its code may be back, or
        renamed in ``scheduler.func_aliases``).

        Returns the jobs that load now, stored again with their next run time
        (and the new function name), and the parked ledger rows that have no
        stored job (for the engine to schedule again from their request).
        """
        restored: list[Job] = []
        missing: list[dict[str, Any]] = []
        ledger = self.ledger.jobs
        query = (
            sa.select(ledger.c.id, ledger.c.request, ledger.c.error, self.jobs_t.c.job_state)
            .outerjoin(self.jobs_t, self.jobs_t.c.id == ledger.c.id)
            .where(ledger.c.queue == self.queue, ledger.c.status == "parked")
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        for row in rows:
            if row.job_state is None:
                missing.append(dict(row._mapping))
                continue
            try:
                job = self._reconstitute_job(row.job_state)
            except BaseException as exc:  # noqa: BLE001 - still cannot load: stays parked
                reason = f"cannot load the stored job: {type(exc).__name__}: {exc}"
                if reason != row.error:
                    self.ledger.set_status(row.id, self.queue, "parked", only_from=("parked",), error=reason)
                log.warning("job %s (queue %s) still parked: %s", row.id, self.queue, reason)
                continue
            if job.next_run_time is None:
                job.next_run_time = job.trigger.get_next_fire_time(None, datetime.now(timezone.utc))
            state = pickle.dumps(job.__getstate__(), self.pickle_protocol)
            with self.engine.begin() as conn:
                conn.execute(
                    self.jobs_t.update()
                    .where(self.jobs_t.c.id == job.id)
                    .values(job_state=state, next_run_time=datetime_to_utc_timestamp(job.next_run_time))
                )
                conn.execute(
                    ledger.update()
                    .where(ledger.c.id == job.id, ledger.c.status == "parked")
                    .values(status="scheduled", func=job.func_ref, error=None, updated_at=now())
                )
            log.info(
                "job %s (queue %s) restored: loads as %s, next run %s",
                job.id,
                self.queue,
                job.func_ref,
                job.next_run_time,
            )
            restored.append(job)
        if restored:  # (parked rows are never among the scheduler thread's pending ones)
            with self._pending_lock:
                self.changes += 1
        return restored, missing


def _owner_gone(owner: str) -> bool:
    """True if *owner* ("host:pid:nonce") was a process on this host that is gone,
    so a daemon restarted after ``kill -9`` need not wait for the lease to expire."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class _HeldError(Exception):
    """Another daemon holds a queue's lease (rolls the transaction back)."""


@dataclass
class Lease:
    """Which daemon executes a set of queues.

    A lease row per queue holds its owner, an epoch bumped at every change of
    owner, and an expiry. The holder renews it every ``ttl / 3`` seconds; a
    standby takes it over once it has expired. Before each run the holder
    checks that its last renewal is still within ``ttl`` (:meth:`valid`), so a
    process that was paused past its lease does not run jobs next to the new
    holder.
    """

    ledger: Ledger
    queues: tuple[str, ...]
    owner: str
    ttl: float
    epochs: dict[str, int] | None = None
    renewed_at: float = 0.0

    def try_acquire(self) -> bool:
        """Take every queue's lease, or none. True when all are held."""
        table = self.ledger.leases
        stamp = now()
        epochs: dict[str, int] = {}
        try:
            with self.ledger.engine.begin() as conn:
                for queue in sorted(self.queues):
                    row = conn.execute(sa.select(table).where(table.c.queue == queue)).first()
                    if row is None:
                        conn.execute(
                            table.insert().values(queue=queue, owner=self.owner, epoch=1, expires_at=stamp + self.ttl)
                        )
                        epochs[queue] = 1
                        continue
                    if row.owner != self.owner and row.expires_at > stamp and not _owner_gone(row.owner):
                        raise _HeldError(queue)
                    epoch = row.epoch if row.owner == self.owner else row.epoch + 1
                    moved = conn.execute(
                        table.update()
                        .where(table.c.queue == queue, table.c.epoch == row.epoch, table.c.owner == row.owner)
                        .values(owner=self.owner, epoch=epoch, expires_at=stamp + self.ttl)
                    ).rowcount
                    if not moved:
                        raise _HeldError(queue)
                    epochs[queue] = epoch
        except (_HeldError, sa.exc.IntegrityError):
            return False
        self.epochs = epochs
        self.renewed_at = stamp
        return True

    def renew(self) -> bool:
        """Extend the lease; False if another daemon holds it now."""
        if not self.epochs:
            return False
        table = self.ledger.leases
        stamp = now()
        with self.ledger.engine.begin() as conn:
            for queue, epoch in self.epochs.items():
                moved = conn.execute(
                    table.update()
                    .where(table.c.queue == queue, table.c.owner == self.owner, table.c.epoch == epoch)
                    .values(expires_at=stamp + self.ttl)
                ).rowcount
                if not moved:
                    return False
        self.renewed_at = stamp
        return True

    def valid(self, margin: float = 0.0) -> bool:
        """True while the last renewal is within ``ttl - margin`` seconds."""
        return bool(self.epochs) and now() < self.renewed_at + self.ttl - margin

    def fresh(self) -> bool:
        """:meth:`valid` with a third of the ttl to spare: what APScheduler
        needs before it may take due jobs from the store (a run it takes is
        checked again, with :meth:`valid`, just before it starts)."""
        return self.valid(self.ttl / 3)

    def release(self) -> None:
        if not self.epochs:
            return
        table = self.ledger.leases
        with self.ledger.engine.begin() as conn:
            for queue, epoch in self.epochs.items():
                conn.execute(
                    table.update()
                    .where(table.c.queue == queue, table.c.owner == self.owner, table.c.epoch == epoch)
                    .values(expires_at=0.0)
                )
        self.epochs = None
