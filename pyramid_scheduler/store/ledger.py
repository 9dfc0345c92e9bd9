"""The ledger: every read and write of the scheduler's own tables.

The tables are described in :mod:`pyramid_scheduler.store.tables`. A run's
start and end (:mod:`pyramid_scheduler.store.records`) are written one at a
time (:meth:`Ledger.start_run`, :meth:`Ledger.finish_run`) or several at once
for the group commit (:meth:`Ledger.write_runs`, used by
:mod:`pyramid_scheduler.store.runs`), by the statements of
:mod:`pyramid_scheduler.store.runwrites`. The job stores, the lease and the
restricted unpickler are :mod:`~pyramid_scheduler.store.jobstores`,
:mod:`~pyramid_scheduler.store.lease` and :mod:`~pyramid_scheduler.store.unpickle`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, NamedTuple

import sqlalchemy as sa
from apscheduler.jobstores.base import ConflictingIdError
from sqlalchemy.engine import Connection, Engine

from pyramid_scheduler.store.flows import Flows
from pyramid_scheduler.store.records import RunAfter, RunEnd, RunStart
from pyramid_scheduler.store.reports import Reports
from pyramid_scheduler.store.runwrites import RunWrites
from pyramid_scheduler.store.schema import upgrade
from pyramid_scheduler.store.tables import FINAL, LIVE, aps_tablename
from pyramid_scheduler.wire.flows import flow_of


class JobRow(NamedTuple):
    """The head of a job's record: what reconciling declared jobs compares."""

    id: str
    queue: str
    mid: str
    status: str
    request: str


class Ledger(Reports):
    """The scheduler's own tables (:class:`~pyramid_scheduler.store.tables.Tables`),
    brought up to date, and every read and write of them (those for
    operators in :class:`~pyramid_scheduler.store.reports.Reports`)."""

    def __init__(self, engine: Engine, prefix: str = "pyramid_scheduler_") -> None:
        super().__init__(prefix)
        self.engine = engine
        #: Dead letters dropped, oldest first, to keep scheduler.dead_letters.max.
        self.dead_letters_dropped = 0
        upgrade(engine, self.metadata, prefix)
        self._insert_job = self.jobs.insert()
        #: What the end of a step of a chain or group makes (:mod:`.flows`).
        self.flow_steps = Flows(self, self._job_row)
        #: The writes of runs (and of their jobs' rows at the run's start and end).
        self.run_writes = RunWrites(self, engine, self.flow_steps)
        self._autocommit = self.run_writes.autocommit
        #: The daemon writing through this ledger, when several share the
        #: queues (:meth:`serve_as`); None for every other user.
        self.owner: str | None = None

    def serve_as(self, owner: str) -> None:
        """Write as the daemon *owner*, one of several sharing the queues:
        the jobs it stores are its own (``owner``) until another takes them,
        and a run starts only while *owner* is alive
        (:meth:`RunWrites.fence <pyramid_scheduler.store.runwrites.RunWrites.fence>`)."""
        self.owner = owner
        self.run_writes.fence()

    # -- jobs -------------------------------------------------------------------------
    def _job_row(self, request: dict[str, Any]) -> dict[str, Any]:
        stamp = self.now()
        flow = flow_of(request)
        return {
            "parent": flow["id"] if flow else None,
            "position": flow["position"] if flow else None,
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
            "owner": self.owner,
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
        if len(requests) == 1 and self._autocommit is not None:
            # One INSERT, its own transaction (several rows are an executemany).
            with self._autocommit.connect() as conn:
                conn.execute(self._insert_job, self._job_row(requests[0]))
            return
        with self.engine.begin() as conn:
            self.insert_jobs(conn, requests)

    def insert_jobs(self, conn: Connection, requests: list[dict[str, Any]]) -> None:
        """Record new jobs in *conn*'s transaction, with one multi-row INSERT.

        :raises sqlalchemy.exc.IntegrityError: an id is already known (the
            transaction is to be rolled back; record them one by one with
            :meth:`insert_job` then).
        """
        rows = [self._job_row(request) for request in requests]
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

    def list_jobs(
        self, queue: str | None, status: str | None, limit: int, func: str | None = None, offset: int = 0
    ) -> list[dict[str, Any]]:
        query = sa.select(self.jobs).order_by(self.jobs.c.updated_at.desc(), self.jobs.c.id).limit(limit).offset(offset)
        if func is not None:
            query = query.where(self.jobs.c.func.contains(func, autoescape=True))
        if queue is not None:
            query = query.where(self.jobs.c.queue == queue)
        if status is not None:
            query = query.where(self.jobs.c.status == status)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def list_daemons(self) -> list[dict[str, Any]]:
        """Every daemon's row (:mod:`pyramid_scheduler.store.membership`), oldest first."""
        query = sa.select(self.daemons).order_by(self.daemons.c.started_at, self.daemons.c.owner)
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
        values: dict[str, Any] = {"status": status, "updated_at": self.now()}
        if error is not None:
            values["error"] = error
        with self.engine.begin() as conn:
            moved = conn.execute(
                self.jobs.update()
                .where(self.jobs.c.id == job_id, self.jobs.c.queue == queue, self.jobs.c.status.in_(only_from))
                .values(**values)
            ).rowcount
            if moved and status == "canceled":  # a canceled step cancels the rest of its chain
                self.flow_steps.after_end(conn, job_id)
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
                .values(request=json.dumps(request), kind=trigger["type"], updated_at=self.now())
            )
        return True

    def park(self, conn: Connection, job_id: str, reason: str) -> bool:
        """Mark a job that cannot be loaded ``parked``, with *reason*, in
        *conn*'s transaction; True if it was not parked yet."""
        jobs = self.jobs
        return bool(
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.status != "parked")
                .values(status="parked", error=reason, updated_at=self.now())
            ).rowcount
        )

    def parked(self, queue: str, aps_table: sa.Table) -> list[dict[str, Any]]:
        """The parked jobs of *queue*: of each its ``id``, ``request``,
        ``error``, and its ``job_state`` in *aps_table* (None: not stored)."""
        jobs = self.jobs
        query = (
            sa.select(jobs.c.id, jobs.c.request, jobs.c.error, aps_table.c.job_state)
            .outerjoin(aps_table, aps_table.c.id == jobs.c.id)
            .where(jobs.c.queue == queue, jobs.c.status == "parked")
        )
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def unpark(self, conn: Connection, job_id: str, func: str) -> None:
        """A parked job loads again (its function now *func*): ``scheduled``,
        in *conn*'s transaction."""
        jobs = self.jobs
        conn.execute(
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.status == "parked")
            .values(status="scheduled", func=func, error=None, updated_at=self.now())
        )

    def declared(self, job_ids: list[str], mid_prefix: str, queues: tuple[str, ...]) -> list[JobRow]:
        """The jobs of *job_ids*, and those of *queues* whose message id
        starts with *mid_prefix* (declared by an application)."""
        jobs = self.jobs
        query = sa.select(jobs.c.id, jobs.c.queue, jobs.c.mid, jobs.c.status, jobs.c.request).where(
            sa.or_(jobs.c.id.in_(job_ids), sa.and_(jobs.c.mid.like(mid_prefix + "%"), jobs.c.queue.in_(queues)))
        )
        with self.engine.connect() as conn:
            return [JobRow(*row) for row in conn.execute(query)]

    def redeclare(self, request: dict[str, Any]) -> None:
        """Replace a stored job's request by its changed declaration
        *request* (a wire message); the job is ``scheduled`` again."""
        jobs = self.jobs
        with self.engine.begin() as conn:
            conn.execute(
                jobs.update()
                .where(jobs.c.id == request["id"])
                .values(
                    mid=request["mid"],
                    func=request["func"],
                    kind=(request.get("trigger") or {}).get("type"),
                    request=json.dumps(request),
                    status="scheduled",
                    error=None,
                    updated_at=self.now(),
                )
            )

    # -- runs -------------------------------------------------------------------------
    def start_run(self, start: RunStart) -> str:
        """Record that a run starts (:meth:`RunWrites.start_run
        <pyramid_scheduler.store.runwrites.RunWrites.start_run>`): ``"start"``,
        or the status the run already had, or ``"canceled"``."""
        return self.run_writes.start_run(start)

    def finish_run(self, end: RunEnd) -> bool:
        """Record a run's end (:meth:`RunWrites.finish_run
        <pyramid_scheduler.store.runwrites.RunWrites.finish_run>`); False if
        its job was no longer live (canceled while it ran)."""
        return self.run_writes.finish_run(end)

    def write_runs(self, starts: list[RunStart], ends: list[RunEnd]) -> set[str]:
        """Record several run starts and ends at once, in the common case only
        (:meth:`RunWrites.write_runs <pyramid_scheduler.store.runwrites.RunWrites.write_runs>`);
        return the run keys written."""
        return self.run_writes.write_runs(starts, ends)

    def record_after(self, afters: list[RunAfter]) -> set[str]:
        """Record jobs that skipped record-first (``durable=False``) once
        their run is over: each job's record, final, with its run's, all in
        one transaction; if an id is known, none of several (record them one
        by one). One alone then reuses a finished job's id, as
        :meth:`insert_job` does. Return the run keys written: not that of a
        job whose id a live job has, or whose very message was recorded
        before (its ack was lost)."""
        stamp = self.now()
        job_rows = [{**self._job_row(after.request), **after.job_values(stamp)} for after in afters]
        if self.run_writes.write_after(job_rows, [after.run_row(stamp) for after in afters]):
            return {after.run_key for after in afters}
        if len(afters) != 1:
            return set()
        [after] = afters
        with self.engine.begin() as conn:
            try:
                self.insert_job(conn, after.request)
            except ConflictingIdError:
                return set()
            conn.execute(self.jobs.update().where(self.jobs.c.id == after.job_id).values(after.job_values(stamp)))
            conn.execute(self.runs.insert(), after.run_row(stamp))
        return {after.run_key}

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

    def recover(self, queues: tuple[str, ...], live: set[str]) -> list[dict[str, Any]]:
        """The runs left ``started`` on *queues* by daemons not in *live*
        (dead ones), with the job's request."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(self.runs, self.jobs.c.request)
                .join(self.jobs, self.jobs.c.id == self.runs.c.job_id)
                .where(self.runs.c.queue.in_(queues), self.runs.c.status == "started", self.runs.c.owner.not_in(live))
            ).all()
        return [dict(row._mapping) for row in rows]

    def orphans(self, queue: str, aps_table: sa.Table, live: set[str]) -> list[dict[str, Any]]:
        """Live jobs of *queue* that APScheduler no longer holds and that no
        live daemon (in *live*) took out of its table: submitted, removed by
        APScheduler, never started."""
        owner = self.jobs.c.owner
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(self.jobs.c.id, self.jobs.c.request, self.jobs.c.status, self.jobs.c.retry_at).where(
                    self.jobs.c.queue == queue,
                    self.jobs.c.status.in_(LIVE),
                    sa.or_(owner.is_(None), owner.not_in(live)),
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

    def purge(self, older_than: float, at: float | None = None) -> int:
        """Forget finished jobs, old dead letters and ended groups' rows (housekeeping).

        A job with its own ``ttl`` option goes once it has been finished for
        that long (at time *at*, default now); the others, and dead letters,
        once finished before *older_than*.
        """
        at = self.now() if at is None else at
        jobs = self.jobs
        expired = sa.case(
            (jobs.c.ttl.is_(None), jobs.c.updated_at < older_than), else_=jobs.c.updated_at + jobs.c.ttl < at
        )
        with self.engine.begin() as conn:
            # Parked jobs are kept until they load again or are canceled.
            gone = (jobs.c.status.in_(FINAL), jobs.c.status != "parked", expired)
            conn.execute(self.runs.delete().where(self.runs.c.job_id.in_(sa.select(jobs.c.id).where(*gone))))
            count = conn.execute(jobs.delete().where(*gone)).rowcount
            for table in (self.event_seqs, self.progress):
                conn.execute(table.delete().where(~sa.exists().where(jobs.c.id == table.c.job_id)))
            conn.execute(
                self.runs.delete().where(
                    self.runs.c.status.notin_(("started",)),
                    self.runs.c.finished_at < older_than,
                    self.runs.c.job_id.notin_(sa.select(jobs.c.id).where(jobs.c.ttl.is_not(None))),
                )
            )
            conn.execute(self.dead_letters.delete().where(self.dead_letters.c.received_at < older_than))
            flows = self.flows  # a group's row, once its then step is made (or canceled)
            conn.execute(flows.delete().where(flows.c.status != "running", flows.c.updated_at < older_than))
        return int(count)


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
