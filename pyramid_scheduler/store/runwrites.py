"""Every write of the run ledger: a run's start, its end, and several of both at once.

(And the one write of jobs recorded after their run, ``durable=False``:
:meth:`RunWrites.write_after`.)

One at a time, :meth:`RunWrites.start_run` and :meth:`RunWrites.finish_run`
(the ledger's :meth:`~pyramid_scheduler.store.ledger.Ledger.start_run` and
:meth:`~pyramid_scheduler.store.ledger.Ledger.finish_run`): their common case
is one statement on PostgreSQL, two elsewhere, and anything else (a run
already recorded, a job canceled meanwhile) is written by a transaction that
looks first.

Several at once, :meth:`RunWrites.write_runs`, for the group commit
(:mod:`pyramid_scheduler.store.runs`): on PostgreSQL one statement of
data-modifying CTEs over arrays (one round trip where a transaction had
six), elsewhere one transaction of a few statements.

Each statement is built once per kind of write (:class:`~pyramid_scheduler.store.records.EndKind`)
and kept: SQLAlchemy then skips building and caching it per call (about half
the CPU of a write).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Engine

from pyramid_scheduler.store.flows import Flows
from pyramid_scheduler.store.records import EndKind, RunEnd, RunStart
from pyramid_scheduler.store.tables import FAILED_RUNS, LIVE, Tables


class RunWrites:
    """The writes of the runs table (and of their jobs' rows) of *tables* on *engine*."""

    def __init__(self, tables: Tables, engine: Engine, flows: Flows) -> None:
        self.engine = engine
        self.tables = tables
        self.jobs, self.runs = tables.jobs, tables.runs
        #: What a step of a chain or group makes at its end, in the end's
        #: transaction: the one-statement and batch writes leave steps
        #: (``parent`` set) to :meth:`finish_run`'s transaction.
        self.flows = flows
        #: Runs start only while their owner is not declared dead in
        #: ``<prefix>daemons`` (:meth:`fence`): off for the ledger's other users.
        self.fenced = False
        self._build()

    def fence(self) -> None:
        """From now on, record a run's start only while its owner is not
        declared dead in ``<prefix>daemons`` (:mod:`pyramid_scheduler.store.membership`),
        checked in the statement that records it."""
        self.fenced = True
        self._build()

    def alive(self) -> Any:
        """The fence: the owner of the run (``p_owner``) is not declared dead
        (also the fence of a concurrency slot: :mod:`pyramid_scheduler.store.slots`)."""
        daemons = self.tables.daemons
        return sa.exists().where(daemons.c.owner == sa.bindparam("p_owner", type_=sa.String), daemons.c.expires_at > 0)

    def _build(self) -> None:
        jobs, runs, param = self.jobs, self.runs, sa.bindparam
        self._insert_run = runs.insert()
        # Each run write by key, and the same for several keys at once
        # (write_runs: one statement for many rows, where an executemany
        # would send one per row).
        # A job held back by a flow limit (``waiting``) starts as a scheduled one.
        held = sa.or_(jobs.c.status == "scheduled", jobs.c.status == "waiting")
        self._marking = jobs.update().values(
            status=sa.case((held, "running"), else_=jobs.c.status), updated_at=param("p_stamp"), waiting_reason=None
        )
        if self.fenced:
            self._marking = self._marking.where(self.alive())
        self._mark_running = self._marking.where(jobs.c.id == param("p_job_id"), jobs.c.status != "canceled")
        self._mark_all_running = self._marking.where(
            jobs.c.id.in_(param("p_job_ids", expanding=True)), jobs.c.status != "canceled"
        )
        #: On PostgreSQL, the engine in autocommit (else None): a write of one
        #: statement is then its own transaction, with no BEGIN and COMMIT
        #: round trips. start_run's common case is one such statement: the
        #: run is inserted only if the job's row was marked, and a known run
        #: fails the whole statement (four round trips become one).
        engine = self.engine
        self.autocommit = (
            engine.execution_options(isolation_level="AUTOCOMMIT") if engine.dialect.name == "postgresql" else None
        )
        self._start_alone: Any = None
        if self.autocommit is not None:
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
        self._finishing = runs.update().values(
            status=param("p_status"), finished_at=param("p_stamp"), error=param("p_error")
        )
        self._finish_run = self._finishing.where(runs.c.run_key == param("p_run_key"))
        self._finish_all_runs = self._finishing.where(runs.c.run_key.in_(param("p_run_keys", expanding=True)))
        self._finish_cache: dict[tuple[Any, ...], Any] = {}

    def start_run(self, start: RunStart) -> str:
        """Record that a run starts. Returns ``"start"``, or the status the run
        already had (``"started"`` means it was cut short by a crash), or
        ``"canceled"``."""
        if self._start_common(start, self.tables.now()):
            return "start"
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(self.runs.c.status).where(self.runs.c.run_key == start.run_key)).first()
            if row is not None:
                return str(row.status)
            status = conn.execute(sa.select(self.jobs.c.status).where(self.jobs.c.id == start.job_id)).scalar()
            if status == "canceled":
                # A run (a retry) stored just as the job was canceled: not run.
                return "canceled"
            stamp = self.tables.now()
            if self.fenced and not conn.execute(sa.select(self.alive()), {"p_owner": start.owner}).scalar():
                return "fenced"  # this daemon is dead to the others: they run it
            conn.execute(self._insert_run, start.row(stamp))
            conn.execute(
                self.jobs.update()
                .where(self.jobs.c.id == start.job_id, self.jobs.c.status.in_(("scheduled", "waiting")))
                .values(status="running", updated_at=stamp, waiting_reason=None)
            )
        return "start"

    def _start_common(self, start: RunStart, stamp: float) -> bool:
        """:meth:`start_run`'s common case in two statements (one on
        PostgreSQL): the job is there and not canceled, and the run is new.
        True if the run was started; False if nothing was written (a known
        run fails the ``INSERT``, and all is rolled back)."""
        try:
            if self.autocommit is not None:
                with self.autocommit.connect() as conn:
                    params = {
                        "p_job_id": start.job_id,
                        "p_run_key": start.run_key,
                        "p_queue": start.queue,
                        "p_scheduled_at": start.scheduled_at,
                        "p_owner": start.owner,
                        "p_stamp": stamp,
                    }
                    return conn.execute(self._start_alone, params).first() is not None
            with self.engine.begin() as conn:
                marking = {"p_job_id": start.job_id, "p_stamp": stamp, "p_owner": start.owner}
                if not conn.execute(self._mark_running, marking).rowcount:
                    return False  # no live job: nothing was changed
                conn.execute(self._insert_run, start.row(stamp))
                return True
        except sa.exc.IntegrityError:
            return False

    def finish_run(self, end: RunEnd) -> bool:
        """Record a run's outcome (``done``, ``failed``, ``timed-out``,
        ``stopped``, ``missed`` or ``interrupted``) and the job's status after it.

        With ``end.retry_at`` (a failed run to be retried), the job stays
        ``scheduled`` with its next attempt due then, so a daemon that
        starts before the retry is in APScheduler's store schedules it
        (:meth:`orphans`). Returns False if the job was no longer live
        (canceled while it ran), so nothing is to be retried.
        """
        stamp = self.tables.now()
        run_params, job_params = end.run_params(stamp), end.job_params(stamp)
        if self.autocommit is not None:  # the common case in one statement
            with self.autocommit.connect() as conn:
                if conn.execute(self._finish_alone(end.kind), {**run_params, **job_params}).first():
                    return True
        job_update, canceled_update = self._finish_statements(end.kind)
        handed: list[dict[str, Any]] = []
        with self.engine.begin() as conn:
            updated = conn.execute(self._finish_run, run_params).rowcount
            if not updated:
                conn.execute(
                    self._insert_run,
                    {
                        "run_key": end.run_key,
                        "job_id": end.job_id,
                        "queue": end.queue,
                        "status": end.status,
                        "owner": end.owner,
                        "error": end.error,
                        "started_at": None,
                        "scheduled_at": end.scheduled_at if end.scheduled_at is not None else stamp,
                        "finished_at": stamp,
                    },
                )
            moved = conn.execute(job_update, job_params).rowcount
            if not moved:
                # Canceled while it ran: keep that status, but record the run.
                conn.execute(canceled_update, job_params)
            if end.final and end.retry_at is None:
                handed = self.flows.after_end(conn, end.job_id)
        if handed and self.flows.handed is not None:
            self.flows.handed(handed)
        return bool(moved)

    def _finish_alone(self, kind: EndKind) -> Any:
        """:meth:`finish_run`'s common case on PostgreSQL, one statement that
        is its own transaction: the live job's ``UPDATE`` (in a CTE) if the
        run's row is there, and the run's ``UPDATE`` if the job's was made;
        both or neither. Anything else (no such run, the job canceled
        meanwhile) writes nothing: :meth:`finish_run` then writes it all in
        its transaction."""
        statement = self._finish_cache.get((kind, "alone"))
        if statement is None:
            runs, param = self.runs, sa.bindparam
            job_update, _ = self._finish_statements(kind)
            live_job = (
                job_update.where(self.jobs.c.parent.is_(None))
                .where(sa.exists(sa.select(runs.c.run_key).where(runs.c.run_key == param("p_run_key"))))
                .returning(self.jobs.c.id)
                .cte("finished_job")
            )
            statement = (
                self._finish_run.where(sa.exists(sa.select(live_job.c.id))).add_cte(live_job).returning(runs.c.run_key)
            )
            self._finish_cache[(kind, "alone")] = statement
        return statement

    def _finish_statements(self, kind: EndKind, many: bool = False) -> tuple[Any, Any]:
        """The two job updates of :meth:`finish_run` for one kind of end
        (built once per kind): to the status after the run if the job is
        live, else (canceled while it ran) keeping its status. By
        ``p_job_id``, or with *many* by the list ``p_job_ids``."""
        statements = self._finish_cache.get((kind, many))
        if statements is None:
            by_id = (
                self.jobs.c.id.in_(sa.bindparam("p_job_ids", expanding=True))
                if many
                else self.jobs.c.id == sa.bindparam("p_job_id")
            )
            statements = self._finish_cache[(kind, many)] = self._finish_updates(kind, by_id, flows_apart=many)
        return statements

    def _finish_updates(
        self, kind: EndKind, by_id: Any, result: Any = None, flows_apart: bool = False
    ) -> tuple[Any, Any]:
        """:meth:`_finish_statements`, for the jobs chosen by the clause *by_id*
        (a done run's result: ``p_result``, or the expression *result*); with
        *flows_apart*, not the steps of a chain or group (left to
        :meth:`finish_run`, which makes what their end makes)."""
        jobs, param = self.jobs, sa.bindparam
        values: dict[str, Any] = {"updated_at": param("p_stamp")}
        if kind.status in ("done", *FAILED_RUNS):
            values.update(runs=jobs.c.runs + 1, last_run_at=param("p_stamp"))
        if kind.status == "done":
            values.update(result=param("p_result") if result is None else result, error=None)
        elif kind.has_error:
            values["error"] = param("p_error")
        live = sa.case((jobs.c.status == "paused", "paused"), else_="scheduled")
        # A timed-out run fails its job; a stopped one's job was canceled.
        ended = "failed" if kind.status in FAILED_RUNS else kind.status
        job_status: Any = ended if kind.final and not kind.retry else live
        retry_values: dict[str, Any] = {"retry_at": param("p_retry_at")}
        if kind.retry:
            retry_values["attempt"] = jobs.c.attempt + 1
        apart = (jobs.c.parent.is_(None),) if flows_apart else ()
        return (
            # status = a OR status = b ...: an IN would be rendered again at each call.
            jobs.update()
            .where(by_id, sa.or_(*(jobs.c.status == s for s in LIVE)), *apart)
            .values(status=job_status, **values, **retry_values),
            jobs.update().where(by_id).values(**values),
        )

    def write_after(self, job_rows: list[dict[str, Any]], run_rows: list[dict[str, Any]]) -> bool:
        """Insert the final records of jobs that skipped record-first
        (``durable=False``: :class:`~pyramid_scheduler.store.records.RunAfter`)
        and their runs' records, one multi-row ``INSERT`` each, in one
        transaction. False if an id or a run key is known: nothing is written."""
        try:
            with self.engine.begin() as conn:
                conn.execute(self.jobs.insert(), job_rows[0] if len(job_rows) == 1 else job_rows)
                conn.execute(self._insert_run, run_rows[0] if len(run_rows) == 1 else run_rows)
        except sa.exc.IntegrityError:
            return False
        return True

    # -- several at once ----------------------------------------------------------------
    def write_runs(self, starts: list[RunStart], ends: list[RunEnd]) -> set[str]:
        """Record several run starts and ends at once, no job twice -- in the
        common case only: each start's job live and its run new, each end's
        run started and its job live. Return the run keys written; the others
        were not written at all (neither their run nor their job touched):
        record those one by one.

        On PostgreSQL, when the ends are alike but for their results (same
        outcome: the common case), this is one statement in autocommit, each
        run written with its job or neither (:meth:`_runs_at_once`); else one
        transaction, all of them written or none.

        :raises sqlalchemy.exc.IntegrityError: a start's run is known; nothing
            is written.
        """
        if not starts and not ends:
            return set()
        stamp = self.tables.now()
        if self.autocommit is not None and len(_alike(ends, results_apart=True)) <= 1:
            return self._runs_at_once(starts, ends, stamp)
        with self.engine.connect() as conn:
            transaction = conn.begin()
            if not self._write_together(conn, starts, ends, stamp):
                transaction.rollback()
                return set()
            transaction.commit()
        return {start.run_key for start in starts} | {end.run_key for end in ends}

    def _write_together(self, conn: sa.Connection, starts: list[RunStart], ends: list[RunEnd], stamp: float) -> bool:
        """:meth:`write_runs` in the transaction of *conn*: the starts, then
        the ends alike but for their keys (the common case: all done, with
        the same result), each set by one statement per table. False as soon
        as a statement finds a row not as the common case has it: then roll
        the transaction back."""
        if starts:
            owners = {start.owner for start in starts}
            marking = {"p_job_ids": [start.job_id for start in starts], "p_stamp": stamp, "p_owner": min(owners)}
            marked = conn.execute(self._mark_all_running, marking).rowcount
            if marked != len(starts) or len(owners) > 1:
                return False
            conn.execute(self._insert_run, [start.row(stamp) for start in starts])
        for alike in _alike(ends).values():
            run_keys, job_ids = [end.run_key for end in alike], [end.job_id for end in alike]
            run_params, job_params = _shared_params(alike[0], stamp)
            job_update, _ = self._finish_statements(alike[0].kind, many=True)
            if conn.execute(self._finish_all_runs, {**run_params, "p_run_keys": run_keys}).rowcount != len(run_keys):
                return False
            if conn.execute(job_update, {**job_params, "p_job_ids": job_ids}).rowcount != len(job_ids):
                return False
        return True

    def _runs_at_once(self, starts: list[RunStart], ends: list[RunEnd], stamp: float) -> set[str]:
        """:meth:`write_runs` on PostgreSQL for *starts* and *ends* alike but
        for their results, as one statement (:meth:`_at_once`): one round
        trip, and one statement for SQLAlchemy to execute where the
        transaction had four and its ``BEGIN`` and ``COMMIT``."""
        params: dict[str, Any] = {}
        kind = None
        if ends:
            kind = ends[0].kind
            run_params, job_params = _shared_params(ends[0], stamp)
            job_params.pop("p_result", None)  # each end's own: f_results
            params.update(run_params, **job_params, f_keys=[end.run_key for end in ends])
            if kind.status == "done":
                params.update(f_ids=[end.job_id for end in ends], f_results=[end.stored_result() for end in ends])
        if starts:  # one array per field
            params.update(
                s_ids=[start.job_id for start in starts],
                s_queues=[start.queue for start in starts],
                s_keys=[start.run_key for start in starts],
                s_times=[start.scheduled_at for start in starts],
                s_owners=[start.owner for start in starts],
                p_owner=starts[0].owner,  # the fence's: one writer, one owner
            )
        params["p_stamp"] = stamp  # one stamp for the batch
        assert self.autocommit is not None
        with self.autocommit.connect() as conn:
            return set(conn.execute(self._at_once(bool(starts), kind), params).scalars())

    def _at_once(self, starts: bool, kind: EndKind | None) -> Any:
        """The statement of :meth:`_runs_at_once` (built once per kind of
        end): data-modifying CTEs over the arrays of the starts
        (``s_*``) and of the ends' run keys (``f_keys``), returning the run
        keys written.

        A start's run is inserted only if its job's row was marked running
        (not canceled); an end's job is updated only if its run's row is
        there, and its run only if the job's update was made (as in
        :meth:`_finish_alone`). A known run fails the whole statement."""
        cache_key = ("at once", starts, kind)
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
        if kind is not None:
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
                kind, jobs.c.id.in_(sa.select(runs.c.job_id).where(ended)), result=result, flows_apart=True
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


def _alike(ends: list[RunEnd], results_apart: bool = False) -> dict[tuple[Any, ...], list[RunEnd]]:
    """*ends* grouped by what they write but for their keys (and, with
    *results_apart*, but for their results), in their order."""
    alike: dict[tuple[Any, ...], list[RunEnd]] = {}
    for end in ends:
        result = end.stored_result() if end.status == "done" and not results_apart else None
        alike.setdefault((end.kind, end.error, end.retry_at, result), []).append(end)
    return alike


def _shared_params(end: RunEnd, stamp: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's and the job's parameters of *end* (:meth:`RunEnd.run_params`,
    :meth:`RunEnd.job_params`) that ends alike share: all but their keys."""
    run_params, job_params = end.run_params(stamp), end.job_params(stamp)
    del run_params["p_run_key"], job_params["p_job_id"]
    return run_params, job_params
