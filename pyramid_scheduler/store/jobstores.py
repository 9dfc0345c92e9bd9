"""The per-queue APScheduler job stores.

:class:`QueueJobStore` is APScheduler's SQL job store for one queue
(``<prefix>aps_<queue>``): it writes the job's ledger row in the same
transaction as the job, loads stored jobs through the restricted unpickler
(:mod:`pyramid_scheduler.store.unpickle`), parks (never deletes) a job it
cannot load, and defers the scheduler thread's writes (see
:mod:`pyramid_scheduler.daemon.scheduling`). The memory job store
(``scheduler.jobstore.url = memory``) is :mod:`pyramid_scheduler.store.memory`.
"""

from __future__ import annotations

import io
import pickle
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from apscheduler.job import Job
from apscheduler.jobstores.base import BaseJobStore, ConflictingIdError, JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.util import datetime_to_utc_timestamp, utc_timestamp_to_datetime
from sqlalchemy.engine import Connection

from pyramid_scheduler.daemon.aps import job_state, load_job
from pyramid_scheduler.daemon.catchup import CatchUpJob
from pyramid_scheduler.daemon.flow import FLOW_KEY, job_class
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.store.claims import Claims
from pyramid_scheduler.store.db import create_tables
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.memory import Adding, OnAdded
from pyramid_scheduler.store.unpickle import JobUnpickler
from pyramid_scheduler.wire.refs import check_ref

log = get_logger(__name__)


class QueueJobStore(Adding, SQLAlchemyJobStore):
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
        on_added: OnAdded | None = None,
        fence: Callable[[], bool] | None = None,
        aliases: Mapping[str, str] | None = None,
        on_parked: Callable[[str, str, str], None] | None = None,
        allowed: tuple[str, ...] = (),
        owner: str | None = None,
    ) -> None:
        super().__init__(engine=ledger.engine, tablename=tablename, pickle_protocol=pickle.HIGHEST_PROTOCOL)
        # Which daemon holds each job (None: none yet, or one found dead): see Claims.
        self.jobs_t.append_column(sa.Column("claimed_by", sa.String(200)))
        #: This daemon's name, when several daemons share the table (None: the
        #: testing kit's lone engine, which claims nothing).
        self.owner = owner
        self.claims = Claims(self.jobs_t, ledger, owner) if owner else None
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
        self._insert = table.insert()
        self._remove = table.delete().where(table.c.id == param("p_id"))
        self._remove_many = table.delete().where(table.c.id.in_(param("p_ids", expanding=True)))
        # A change made here takes the job over (see pyramid_scheduler.store.claims).
        self._change = table.update().where(table.c.id == param("p_id")).values(claimed_by=owner)
        # The jobs due by p_until, and the row(s) of the first next run time
        # after it (without their state): both in one round trip. With
        # claims, the due ones this daemon holds, and the first next run time
        # after them among its jobs and the unclaimed ones.
        later = table.c.next_run_time > param("p_until")
        ours: Any = sa.true()
        if self.claims is not None:
            # The scheduler thread writes back only rows it still holds.
            self._update = self.claims.where_mine(self._update)
            self._remove_many = self.claims.where_mine(self._remove_many)
            mine_or_free = sa.or_(self.claims.mine, table.c.claimed_by.is_(None))
            later = sa.and_(later, mine_or_free)
            ours = sa.or_(self.claims.mine, sa.and_(table.c.next_run_time > param("p_until"), mine_or_free))
        following = sa.select(sa.func.min(table.c.next_run_time)).where(later).scalar_subquery()
        self._window = (
            sa.select(
                table.c.id,
                table.c.next_run_time,
                sa.case((table.c.next_run_time <= param("p_until"), table.c.job_state)),
            )
            .where(table.c.next_run_time <= sa.func.coalesce(following, param("p_until")), ours)
            .order_by(table.c.next_run_time)
        )
        if self.claims is not None:
            self._unheld = sa.select(table.c.id, table.c.job_state).where(
                table.c.next_run_time <= param("p_now"), self.claims.claimable
            )
        #: Rows the scheduler thread has yet to write, by job id: the job
        #: handed over with its next run time, or None (delete the row).
        self._pending: dict[str, Job | None] = {}
        self._pending_lock = threading.RLock()
        #: Bumped by every change of the table that the scheduler thread did
        #: not make itself (see :mod:`pyramid_scheduler.daemon.scheduling`).
        self.changes = 0
        #: The next run time after the scheduler thread's window (a UTC
        #: timestamp; None: none, or being loaded): see :meth:`add_jobs`.
        self._bound: float | None = None

    def start(self, scheduler: Any, alias: str) -> None:
        # APScheduler's start() is BaseJobStore's, then a CREATE TABLE that
        # fails when daemons starting together race to it: the table (and the
        # claim column a table of an earlier release lacks) made under the
        # DDL lock instead.
        BaseJobStore.start(self, scheduler, alias)
        create_tables(self.engine, self.jobs_t.metadata)

    def due_unheld(self, now: datetime) -> list[Job]:
        """The jobs due by *now* that no live daemon holds (all due jobs
        without claims): what recovery settles."""
        if self.claims is None:
            return self.get_due_jobs(now)
        self.flush()
        return self._load(self._unheld, {"p_now": datetime_to_utc_timestamp(now)})

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
        the jobs it handed over again. With claims, the due jobs no live
        daemon holds are claimed first, in the same transaction; if more
        may be left to claim, *until* itself is returned as the next time
        to look."""
        jobs: list[Job] = []
        parked: list[tuple[str, str]] = []
        following = None
        bound = datetime_to_utc_timestamp(until)
        with self._pending_lock:
            self._bound = None  # a job added from here on may be missing from this load
        with self.engine.begin() as conn:
            if self.claims is not None and self.claims.take_due(conn, bound):
                following = until
            for row in conn.execute(self._window, {"p_until": bound}):
                state = row[2]
                if state is None:
                    if following is None:
                        following = utc_timestamp_to_datetime(row.next_run_time)
                    break
                try:
                    jobs.append(self._reconstitute_job(state))
                except BaseException as exc:  # noqa: BLE001 - any failure to load parks the job
                    parked.extend(self._park(conn, row.id, exc))
        with self._pending_lock:
            self._bound = None if following is None else datetime_to_utc_timestamp(following)
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
                    "p_state": pickle.dumps(job_state(job), self.pickle_protocol),
                }
                for job in self._pending.values()
                if job is not None
            ]
            with self.engine.begin() as conn:
                if removes:
                    conn.execute(self._remove_many, {"p_ids": removes})
                    if self.owner is not None:  # out of the table, into this daemon: its orphans if it dies
                        jobs = self.ledger.jobs
                        conn.execute(jobs.update().where(jobs.c.id.in_(removes)).values(owner=self.owner))
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
        flow = getattr(self._local, "flow", None)  # a job made by APScheduler's add_job: its flow options
        state = pickle.dumps({**job_state(job), FLOW_KEY: flow} if flow else job_state(job), self.pickle_protocol)
        try:
            with self._changing(), self.engine.begin() as conn:
                if request is not None:
                    self.ledger.insert_job(conn, request)
                conn.execute(
                    self.jobs_t.insert().values(
                        id=job.id,
                        next_run_time=datetime_to_utc_timestamp(job.next_run_time),
                        job_state=state,
                        claimed_by=self.owner,
                    )
                )
        except sa.exc.IntegrityError:
            raise ConflictingIdError(job.id) from None
        if request is not None and self.on_added is not None:
            self.on_added(job, request)

    def add_jobs(self, added: list[tuple[Job, dict[str, Any]]]) -> bool:
        """Store new jobs and their ledger rows (from their wire requests) in
        one transaction, one multi-row INSERT per table, then report each
        (``on_added``: CREATED) in order. Unlike :meth:`add_job`, jobs due
        after the scheduler thread's window's bound, where it looks again
        anyway, do not make it load that window again.

        :returns: True if it must: wake it (``DueScheduler.notice``).
        :raises sqlalchemy.exc.IntegrityError: an id is already known; nothing
            is stored (store them one by one with :meth:`add_job` then).
        """
        rows = [
            {
                "id": job.id,
                "next_run_time": datetime_to_utc_timestamp(job.next_run_time),
                "job_state": pickle.dumps(job_state(job), self.pickle_protocol),
                "claimed_by": self.owner,
            }
            for job, _ in added
        ]
        self.flush()
        with self.engine.begin() as conn:
            self.ledger.insert_jobs(conn, [request for _, request in added])
            conn.execute(self._insert, rows[0] if len(rows) == 1 else rows)
        if self.on_added is not None:
            for job, request in added:
                self.on_added(job, request)
        # Told after CREATED: the scheduler thread may run the jobs once told.
        soonest = min(row["next_run_time"] for row in rows)
        with self._pending_lock:
            if self._bound is not None and soonest >= self._bound:
                return False
            self.changes += 1
        return True

    def update_job(self, job: Job) -> None:
        state = pickle.dumps(job_state(job), self.pickle_protocol)
        with self._changing(), self.engine.begin() as conn:
            if self.owner is not None and not conn.execute(self._change, {"p_id": job.id}).rowcount:
                raise JobLookupError(job.id)
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
        return load_job(self, state, job_class(state, CatchUpJob))

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
        newly = self.ledger.park(conn, job_id, reason)
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
        for row in self.ledger.parked(self.queue, self.jobs_t):
            if row["job_state"] is None:
                missing.append(row)
                continue
            try:
                job = self._reconstitute_job(row["job_state"])
            except BaseException as exc:  # noqa: BLE001 - still cannot load: stays parked
                reason = f"cannot load the stored job: {type(exc).__name__}: {exc}"
                if reason != row["error"]:
                    self.ledger.set_status(row["id"], self.queue, "parked", only_from=("parked",), error=reason)
                log.warning("job %s (queue %s) still parked: %s", row["id"], self.queue, reason)
                continue
            if job.next_run_time is None:
                job.next_run_time = job.trigger.get_next_fire_time(None, datetime.now(timezone.utc))
            state = pickle.dumps(job_state(job), self.pickle_protocol)
            with self.engine.begin() as conn:
                conn.execute(
                    self.jobs_t.update()
                    .where(self.jobs_t.c.id == job.id)
                    .values(job_state=state, next_run_time=datetime_to_utc_timestamp(job.next_run_time))
                )
                self.ledger.unpark(conn, job.id, job.func_ref)
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
