"""Scheduling: the scheduler thread, which hands each stored job to execution when it is due.

Between the job stores (:mod:`pyramid_scheduler.store.jobstores`) and execution
(:mod:`pyramid_scheduler.daemon.execution`). What passes between scheduling
and execution is small and typed (documented in :mod:`.execution`): a due job
and its run times go in through the executor's ``submit_job``; what execution
cannot run here comes back through :class:`StoreBack`, which stores the job
due again. Besides the ledger, the only other thing they share is the order
of each job's events (:mod:`.job_events`).

APScheduler 3's scheduler thread, when it
wakes for a due job, makes three round trips to the SQL job store under its
job-store lock before the next one: the due-jobs query, then (after handing
the job to the pool) the ``DELETE`` of a date job's row or the ``UPDATE`` of a
recurring job's next run time, each a commit, then the next-run-time query.
The first is on the path from the due time to the job's start; the commit of
the second runs as the worker commits the run's start, and the two wait for
each other's flush of PostgreSQL's log.

:class:`DueScheduler` does the same work in another order:

* it wakes :data:`LEAD` seconds before the first job it does not hold yet is
  due, and loads every job due within :data:`LOOKAHEAD` seconds, with the next
  run time after them, in one query (:meth:`pyramid_scheduler.store.jobstores.QueueJobStore.load_window`);
* at each job's due time it hands the job to the pool from memory, with no
  round trip before (the jobs due together higher priority first:
  :func:`.flow.due_order`);
* the stores' rows of the jobs it handed over are deleted or moved to their
  next run time later, several in one transaction
  (:meth:`pyramid_scheduler.store.jobstores.QueueJobStore.flush`): before it loads again, or once no
  job is due in the next :data:`FLUSH_GAP` seconds and the workers have had
  :data:`FLUSH_DELAY` to commit the starts of the runs just handed over (at
  the latest after :data:`FLUSH_MAX_AGE`).

What it holds is what the store holds: every change of a store by another
thread (an add, cancel, pause, reschedule) first writes those pending rows
and makes the scheduler thread load its window again (so does every
``wakeup()``), unless the jobs added are due at or after the window's bound
(the first next run time after it, where the window is loaded again
anyway); and nothing is loaded or handed over while this daemon's
heartbeat may have lapsed. Where several daemons share the queue, the window
holds only the jobs this daemon claimed (:mod:`pyramid_scheduler.store.claims`),
and is loaded again at least every :data:`POLL` seconds to see the others'
changes and take over the jobs of one found dead. A row written late is never run twice: the run ledger records each
run key once, and a daemon that died before writing them settles them at
its next start (``Recovery.settle``, :mod:`.recovery`) before it runs anything.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_SUBMITTED, JobSubmissionEvent
from apscheduler.executors.base import MaxInstancesReachedError
from apscheduler.job import Job
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING, STATE_STOPPED, TIMEOUT_MAX
from apscheduler.triggers.base import BaseTrigger

from pyramid_scheduler.daemon.aps import dispatch, executor_of, job_stores, move_job, queue_of, run_times, runs_in_pool
from pyramid_scheduler.daemon.clock import SYSTEM_CLOCK, Clock
from pyramid_scheduler.daemon.flow import DEFAULT_PRIORITY, due_order
from pyramid_scheduler.daemon.persist import Persist
from pyramid_scheduler.faults import crash_point
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.store.jobstores import QueueJobStore
from pyramid_scheduler.triggers.delay import FixedDelayTrigger

log = get_logger(__name__)

#: Seconds before the first job it does not hold is due that the scheduler
#: thread wakes to load the jobs due soon (longer than the query takes).
LEAD = 0.005
#: Seconds of due jobs loaded at once, from the time of loading.
LOOKAHEAD = 0.1
#: The scheduler thread writes the rows of the jobs it handed over when no job
#: is due in the next this many seconds ...
FLUSH_GAP = 0.004
#: ... and not before this many seconds after the last hand-over, so that the
#: workers commit the starts of the runs just handed over first.
FLUSH_DELAY = 0.002
#: ... or once the oldest has waited this long, or this many wait.
FLUSH_MAX_AGE = 0.5
FLUSH_MAX = 500

#: Seconds before the scheduler thread tries the due jobs again after an error.
RETRY_PROCESSING = 1.0
#: Where several daemons share a queue's table, each loads its window again
#: at least this often: to claim the due jobs of a daemon found dead, and to
#: see what another daemon changed (see :mod:`pyramid_scheduler.store.claims`).
POLL = 1.0


def _key(job: Job) -> float:
    return float(job.next_run_time.timestamp())


def _utc(when: datetime) -> datetime:
    # Every due time is compared and moved in UTC: a job's next run time is in
    # its trigger's zone, where a timedelta moves the wall clock (dropping the
    # fold of a repeated hour) and times of one zone compare by wall time.
    return when.astimezone(timezone.utc)


@dataclass
class _Window:
    """The jobs of one store due soon, as loaded, minus those handed over."""

    #: Jobs not handed over yet, by next run time; every job of the store due
    #: by :attr:`until` (UTC) is here or was handed over.
    jobs: list[Job]
    until: datetime
    #: The earliest next run time after :attr:`until` (None: none), in UTC.
    following: datetime | None
    #: The store's :attr:`~pyramid_scheduler.store.jobstores.QueueJobStore.changes` when loaded.
    changes: int
    keys: list[float] = field(default_factory=list)
    #: When it was loaded (monotonic seconds).
    loaded: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.keys = [_key(job) for job in self.jobs]
        self.until = _utc(self.until)
        self.following = None if self.following is None else _utc(self.following)

    def add(self, job: Job) -> None:
        """Hold a recurring job again at its next run time if that is within
        the window, else make that time a bound of it."""
        when = _utc(job.next_run_time)
        if when <= self.until:
            key = _key(job)
            index = bisect.bisect_right(self.keys, key)  # after the jobs due at the same time
            self.keys.insert(index, key)
            self.jobs.insert(index, job)
        elif self.following is None or when < self.following:
            self.following = when

    def pop_due(self, now: datetime) -> list[Job]:
        count = bisect.bisect_right(self.keys, now.timestamp())
        due, self.jobs, self.keys = self.jobs[:count], self.jobs[count:], self.keys[count:]
        return due


class DueScheduler(BackgroundScheduler):  # type: ignore[misc]
    """APScheduler's background scheduler, with the due jobs of the SQL job
    stores loaded ahead and their rows written in batches (see the module).

    ``_process_jobs`` is replaced, not wrapped: APScheduler's makes its round
    trips per due job in a fixed order, under the job-store lock, and none of
    them can be moved from outside. Each due job still goes through
    APScheduler's own steps, in its order: the executor lookup, the run times
    (:class:`~.catchup.CatchUpJob`'s catch-up plan), coalescing, the
    submission (``max_instances``), the SUBMITTED or MAX_INSTANCES event, then
    the job's next run time or its removal. Other job stores (the memory ones)
    are processed as APScheduler does.

    Two of APScheduler's races are closed too: ``shutdown()`` wakes the main
    loop, which would process the due jobs once more after the executors are
    shut down (each submission then fails and APScheduler removes the date job
    anyway): here nothing is processed unless the scheduler is running. And an
    error while processing the due jobs never ends the scheduler thread
    (APScheduler's would die with it).
    """

    def __init__(self, *args: Any, clock: Clock = SYSTEM_CLOCK, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Where "now" is read for what is due.
        self.clock = clock
        self._processing = threading.local()
        self._windows: dict[str, _Window] = {}
        #: When the first row now waiting to be written was handed over.
        self._pending_since: float | None = None
        #: When the scheduler thread last handed a job over.
        self._handed_at = 0.0
        #: Load every window again (set by :meth:`wakeup`).
        self._reload = False
        #: Rounds of due processing finished (what waits for the scheduler
        #: thread to have looked again, such as a test of what does not run, reads).
        self.rounds = 0
        #: ``scheduler.priority.<queue>`` and ``scheduler.priority_aging``:
        #: the jobs due together are handed over by priority (:mod:`.flow`).
        self.priorities: dict[str, int] = {}
        self.priority_aging = 60.0

    def _process_jobs(self) -> float | None:
        if self.state != STATE_RUNNING:
            return None
        self._processing.active = True
        try:
            return self._process()
        except Exception:  # noqa: BLE001 - the scheduler thread must not die: log, try again
            self._windows.clear()
            log.exception("processing the due jobs failed; trying again in %gs", RETRY_PROCESSING)
            return RETRY_PROCESSING
        finally:
            self._processing.active = False
            self.rounds += 1

    def wakeup(self) -> None:
        """APScheduler's: process the jobs now; here also load them again
        (the table may have changed behind the job store's back)."""
        self._reload = True
        super().wakeup()

    def notice(self) -> None:
        """Process the jobs now, loading again only the windows of the stores
        that changed: after jobs were added due before a window's bound
        (:meth:`pyramid_scheduler.store.jobstores.QueueJobStore.add_jobs`)."""
        super().wakeup()

    def remove_job(self, job_id: str, jobstore: str | None = None) -> None:
        """APScheduler's, except that a job already gone when the scheduler
        thread removes it (another thread removed it meanwhile) is logged
        instead of ending that thread."""
        try:
            super().remove_job(job_id, jobstore)
        except JobLookupError:
            if not getattr(self._processing, "active", False):
                raise
            log.warning("job %s (queue %s): already removed when its last run was submitted", job_id, jobstore)

    # -- one round ----------------------------------------------------------------------
    def _process(self) -> float | None:
        # In UTC, not self.timezone: now + LOOKAHEAD in a zone's wall clock
        # would land an hour early in the repeated hour of autumn.
        now = self.clock.now()
        wakeups: list[datetime] = []
        events: list[JobSubmissionEvent] = []
        with job_stores(self) as stores:
            if self._reload:
                self._reload = False
                self._windows.clear()
            for alias, store in stores.items():
                if isinstance(store, QueueJobStore):
                    wakeup = self._process_window(alias, store, now, events)
                else:
                    wakeup = self._process_store(alias, store, now, events)
                if wakeup is not None:
                    wakeups.append(_utc(wakeup))
        for event in events:
            dispatch(self, event)
        if self.state != STATE_RUNNING or not wakeups:
            return None
        wait = min(wakeups).timestamp() - time.time()
        return min(max(wait, 0.0), TIMEOUT_MAX)

    def _process_store(
        self, alias: str, store: Any, now: datetime, events: list[JobSubmissionEvent]
    ) -> datetime | None:
        """APScheduler's own round for a store (the memory ones)."""
        try:
            due = store.get_due_jobs(now)
        except Exception as exc:  # noqa: BLE001 - as APScheduler: try this store again later
            log.warning("error getting due jobs from job store %r: %s", alias, exc)
            return _utc(now) + timedelta(seconds=self.jobstore_retry_interval)
        for job in due:
            self._hand_over(alias, job, now, events, store.update_job)
        return store.get_next_run_time()  # type: ignore[no-any-return]

    def _process_window(
        self, alias: str, store: QueueJobStore, now: datetime, events: list[JobSubmissionEvent]
    ) -> datetime | None:
        if store.fenced():
            # Its lease may have lapsed: take nothing (see QueueJobStore.get_due_jobs).
            self._windows.pop(alias, None)
            return store.get_next_run_time()
        window = self._windows.get(alias)
        if (
            window is None
            or window.changes != store.changes
            or (window.following is not None and window.following - timedelta(seconds=LEAD) <= _utc(now))
            or (store.claims is not None and time.monotonic() - window.loaded >= POLL)
        ):
            # The rows of the jobs handed over first, so that none is loaded again.
            self._flush(store)
            changes = store.changes
            until = _utc(now) + timedelta(seconds=LOOKAHEAD)
            jobs, following = store.load_window(until)
            window = self._windows[alias] = _Window(jobs, until, following, changes)
        due = window.pop_due(now)
        if len(due) > 1:
            due = due_order(due, now, self.priorities.get(alias, DEFAULT_PRIORITY), self.priority_aging)
        for job in due:
            self._hand_over(alias, job, now, events, None, store, window)
            self._handed_at = time.monotonic()
        return self._next_wakeup(store, window, now)

    def _next_wakeup(self, store: QueueJobStore, window: _Window, now: datetime) -> datetime | None:
        """When to wake next: the first job held is due, the window needs
        loading again, or the rows handed over are to be written."""
        times = [_utc(window.jobs[0].next_run_time)] if window.jobs else []
        if window.following is not None:
            times.append(window.following - timedelta(seconds=LEAD))
        if store.claims is not None:
            times.append(_utc(now) + timedelta(seconds=max(0.0, window.loaded + POLL - time.monotonic())))
        if store.pending():
            moment = time.monotonic()
            if self._pending_since is None:
                self._pending_since = moment
            soonest = min(times) if times else None
            quiet = soonest is None or soonest.timestamp() - time.time() >= FLUSH_GAP
            # Not before the runs just handed over have had time to commit their start.
            ready = moment >= self._handed_at + FLUSH_DELAY
            if (quiet and ready) or store.pending() >= FLUSH_MAX or moment - self._pending_since >= FLUSH_MAX_AGE:
                self._flush(store)
            else:  # try again after the delay, when the burst has passed, or at the latest FLUSH_MAX_AGE on
                wait = FLUSH_MAX_AGE - (moment - self._pending_since)
                if quiet:
                    wait = min(wait, self._handed_at + FLUSH_DELAY - moment)
                times.append(_utc(now) + timedelta(seconds=wait))
        return min(times) if times else None

    def _flush(self, store: QueueJobStore) -> None:
        if store.pending():
            crash_point("handed")
            store.flush()
        self._pending_since = None

    def _hand_over(
        self,
        alias: str,
        job: Job,
        now: datetime,
        events: list[JobSubmissionEvent],
        update: Any,
        store: QueueJobStore | None = None,
        window: _Window | None = None,
    ) -> None:
        """APScheduler's steps for one due job; with *store*, its row is
        written later (and a recurring job held again in *window*)."""
        try:
            executor = executor_of(self, job.executor)
        except BaseException:  # noqa: BLE001 - as APScheduler
            log.error('executor lookup ("%s") failed for job "%s": removing it from the job store', job.executor, job)
            self.remove_job(job.id, alias)
            return
        due = run_times(job, now)
        due = due[-1:] if due and job.coalesce else due
        if not due:
            return
        # A fixed-delay job whose previous run has not ended is due an
        # interval after that end (StoreBack.delay_next): held, not missed.
        held = isinstance(job.trigger, FixedDelayTrigger) and runs_in_pool(executor, job.id) > 0
        # The job moves on before it is submitted (APScheduler: after). A run
        # that ends at once calls back on this thread (a future done before its
        # callback is added runs it here) and may store a retry under the same
        # id, which must come after the job's row is deleted or moved on.
        following = job.trigger.get_next_fire_time(now if held else due[-1], now)
        if following:
            move_job(job, following)
            if store is None:
                update(job)
            else:
                store.defer_update(job)
                assert window is not None
                window.add(job)
        elif store is None:
            self.remove_job(job.id, alias)
        else:
            store.defer_remove(job.id)
        if held:
            return
        try:
            executor.submit_job(job, due)
        except MaxInstancesReachedError:
            log.warning(
                'execution of job "%s" skipped: maximum number of running instances reached (%d)',
                job,
                job.max_instances,
            )
            events.append(JobSubmissionEvent(EVENT_JOB_MAX_INSTANCES, job.id, alias, due))
        except BaseException:  # noqa: BLE001 - as APScheduler: log, and move the job on
            log.exception('error submitting job "%s" to executor "%s"', job, job.executor)
        else:
            events.append(JobSubmissionEvent(EVENT_JOB_SUBMITTED, job.id, alias, due))


class StoreBack:
    """Puts a one-off job whose run was not started back in its queue's job
    store: execution's way back to scheduling (:mod:`.execution`).

    A run refused by the lease check, a run-now job not handed to the pool, or
    a retry (then with its own trigger): the job is stored due at the run
    time, and the daemon holding the lease runs it. Its record is already
    stored.
    """

    def __init__(self, scheduler: DueScheduler, persist: Persist) -> None:
        self.scheduler = scheduler
        self.persist = persist

    def __call__(self, job: Job, run_time: datetime, trigger: BaseTrigger | None = None) -> bool:
        """Store *job* due at *run_time*; False if the daemon stopped first
        (the next one runs it from its record)."""
        if self.scheduler.state == STATE_STOPPED:
            log.info("job %s: the daemon has stopped; the next one runs it from its record", job.id)
            return False
        return (
            self.persist(
                f"job {job.id}: storing it in the job store, due at {run_time.isoformat()}",
                self.scheduler.add_job,
                job.func,
                trigger=trigger or job.trigger,
                args=job.args,
                kwargs=job.kwargs,
                id=job.id,
                name=job.name,
                jobstore=queue_of(job),
                executor=job.executor,
                misfire_grace_time=job.misfire_grace_time,
                coalesce=job.coalesce,
                max_instances=job.max_instances,
                replace_existing=True,
                next_run_time=run_time,
            )
            is not None
        )

    def delay_next(self, job: Job, ended: datetime) -> None:
        """A fixed-delay job (:mod:`pyramid_scheduler.triggers.delay`) whose
        run ended at *ended*: move it to one interval later, if it is still
        stored and not paused (a cancel or pause meanwhile wins)."""
        assert isinstance(job.trigger, FixedDelayTrigger)
        following = job.trigger.after(ended)
        queue = queue_of(job)
        stored = self.persist(f"job {job.id}: reading it", self.scheduler.get_job, job.id, queue)
        if stored is None or stored.next_run_time is None or following is None:
            return
        try:
            self.persist(
                f"job {job.id}: moving it to {following.isoformat()}",
                self.scheduler.modify_job,
                job.id,
                queue,
                next_run_time=following,
            )
        except JobLookupError:
            return  # canceled meanwhile
        log.info("job %s (queue %s): next run %s, an interval after its run ended", job.id, queue, following)
