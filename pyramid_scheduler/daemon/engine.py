"""Engine: APScheduler 3 with the persistent job store, in a consuming process.

The consumer (:mod:`pyramid_scheduler.daemon.service`) hands each decoded request to
:meth:`Engine.submit`. An ``add`` becomes an APScheduler job in its queue's
SQL job store, written in one transaction with its ledger row (so a
redelivered message is absorbed by job id) before the message is acked; a
``cancel`` removes it. The engine owns the event order per job: CREATED when
stored, each run's EXECUTED/ERROR/MISSED/INTERRUPTED, then REMOVED or
CANCELED -- a CANCELED that arrives during a run waits for the run's own
event.

On :meth:`start` it reports runs that a previous daemon left ``started``
(interrupted), re-adds jobs that were due and submitted but never started, and
only then lets APScheduler run.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, NamedTuple

import sqlalchemy as sa
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.executors.base import MaxInstancesReachedError
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.base import STATE_RUNNING, STATE_STOPPED
from pyramid.exceptions import ConfigurationError
from pyramid.threadlocal import manager as threadlocal_manager

from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon.catchup import Missed
from pyramid_scheduler.daemon.catchup import job_options as catch_up_options
from pyramid_scheduler.daemon.execution import JobExecutor, Runner, job_info, request_info, run_key
from pyramid_scheduler.daemon.retries import plan_retry
from pyramid_scheduler.daemon.scheduling import DueScheduler
from pyramid_scheduler.events import EventDispatcher
from pyramid_scheduler.exceptions import InvalidJob
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.settings import mask_url, posture_problem
from pyramid_scheduler.store.db import create_db_engine
from pyramid_scheduler.store.jobstores import MemoryQueueStore, QueueJobStore
from pyramid_scheduler.store.lease import Lease
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.records import RunEnd
from pyramid_scheduler.store.runs import RunWriter
from pyramid_scheduler.store.tables import LIVE, aps_tablename, now
from pyramid_scheduler.triggers.build import build_trigger, next_fire_time
from pyramid_scheduler.web.declare import reconcile
from pyramid_scheduler.wire.messages import MANAGEMENT_OPS, JobRequest, admit, decode
from pyramid_scheduler.wire.refs import with_request

log = get_logger(__name__)

INTERNAL = "pyramid_scheduler.internal"


#: Run-now jobs go straight to the worker pool while fewer than this many
#: batches wait in it or run; past it they are stored in APScheduler's table
#: like the other jobs (which APScheduler hands to the pool once due).
DIRECT_BACKLOG = 1000


class _RunNow(NamedTuple):
    """A checked run-now job that goes straight to the worker pool."""

    request: JobRequest
    job: Job
    first: datetime
    wire: dict[str, Any]


class Engine:
    """APScheduler, the ledger and the events for the queues this process runs.

    :param proxy: the application's :class:`~.proxy.SchedulerProxy`.
    :param queues: the queues to run (default: all of ``scheduler.queues``).
    """

    def __init__(self, proxy: Any, queues: tuple[str, ...] | None = None) -> None:
        self.proxy = proxy
        self.settings = settings = proxy.settings
        problem = posture_problem(settings)
        if problem:  # before anything connects or runs
            raise ConfigurationError(f"refusing to run jobs: {problem}")
        self.registry = proxy.registry
        self.queues = tuple(queues or settings.queues)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.dispatcher = EventDispatcher(proxy.listeners, proxy.registry)

        url = settings.jobstore_url or "sqlite://"
        # No ping before each use of a pooled connection (a round trip per
        # transaction): every daemon write retries (persist, requeue), and the
        # first failure after the database restarted invalidates the pool.
        # Pool sized for every thread that writes at once (job threads, the
        # consumer, the scheduler, the lease, the events): beyond SQLAlchemy's
        # default of 5, connections were opened and closed all the time.
        pool = {} if url.startswith("sqlite") else {"pool_size": settings.max_workers + 5}
        self.db = create_db_engine(url, wal=settings.sqlite_wal, pool_pre_ping=False, **pool)
        self.ledger = Ledger(self.db, settings.jobstore_tablename_prefix)
        self.lease: Lease | None = None
        if not settings.memory_store:
            self.lease = Lease(self.ledger, self.queues, self.owner, settings.lease_ttl)

        #: Writes the run starts and ends of the worker threads (group commit).
        self.runs = RunWriter(self.ledger)
        self.runner = Runner(self)
        self.stores: dict[str, Any] = {}
        for queue in self.queues:
            if settings.memory_store:
                self.stores[queue] = MemoryQueueStore(on_added=self._on_added)
            else:
                self.stores[queue] = QueueJobStore(
                    self.ledger,
                    queue,
                    aps_tablename(settings.jobstore_tablename_prefix, queue),
                    on_added=self._on_added,
                    fence=self.lease.fresh if self.lease else None,
                    aliases=settings.func_aliases,
                    on_parked=self._on_parked,
                    allowed=settings.allowed_modules,
                )
        self.aps = DueScheduler()
        self.aps.catch_up_limit = settings.catch_up_limit
        self.aps.configure(
            gconfig=dict(settings.apscheduler),
            prefix="apscheduler.",
            jobstores={**self.stores, INTERNAL: MemoryJobStore()},
            executors={"default": JobExecutor(self.runner, settings.max_workers), INTERNAL: ThreadPoolExecutor(1)},
            job_defaults={
                "misfire_grace_time": settings.misfire_grace_time,
                "coalesce": settings.coalesce,
                "max_instances": 1,
            },
            # APScheduler's "now" (add_job, reschedule_job, resume_job) in UTC:
            # each trigger has its zone (scheduler.timezone or the job's), and
            # a "now" in that zone compares with its times by wall clock,
            # which repeats in the autumn change.
            timezone=timezone.utc,
        )
        self.aps.add_listener(self._on_max_instances, EVENT_JOB_MAX_INSTANCES)
        self._executor: JobExecutor = self.aps._lookup_executor("default")
        self._lock = threading.RLock()
        self._running: dict[str, int] = defaultdict(int)
        self._deferred: dict[str, list[Event]] = defaultdict(list)
        self._canceled: set[str] = set()
        self._heartbeat: threading.Thread | None = None
        self._stopped = threading.Event()
        self.lease_lost = threading.Event()

    # -- life cycle -------------------------------------------------------------------
    def try_acquire(self) -> bool:
        """Take the queues' lease; True when this process may run them."""
        return self.lease is None or self.lease.try_acquire()

    def lease_valid(self) -> bool:
        return self.lease is None or self.lease.valid()

    def start(self) -> None:
        """Recover from the previous daemon, then start scheduling (lease held)."""
        self.dispatcher.start()
        self.runs.start()
        self.aps.start(paused=True)
        if not self.settings.memory_store:
            self._recover()
            self.restore_parked()
        reconcile(self)  # config-time schedules
        self.aps.add_job(
            self.housekeeping,
            "interval",
            seconds=self.settings.housekeeping,
            id="housekeeping",
            jobstore=INTERNAL,
            executor=INTERNAL,
            misfire_grace_time=None,
            coalesce=True,
        )
        self.aps.resume()
        if self.settings.secret is None:
            log.warning(
                "SECURITY: scheduler.secret is not set, so messages are not signed: anyone who "
                "can write to the broker can make this daemon call any importable function%s. "
                "Set scheduler.secret (and scheduler.allowed_modules) in production.",
                "" if not self.settings.allowed_modules else " under scheduler.allowed_modules",
            )
        if self.lease is not None:
            self._heartbeat = threading.Thread(target=self._renew_loop, name="pscheduler-lease", daemon=True)
            self._heartbeat.start()
        settings = self.settings
        log.info(
            "scheduler %s running queues %s as the %s (owner %s); broker %s; job store %s",
            settings.id,
            ", ".join(self.queues),
            "web process in combined mode" if settings.combined else "active daemon",
            self.owner,
            settings.broker.masked(),
            mask_url(settings.jobstore_url) if settings.jobstore_url else "memory",
        )

    def stop(self, timeout: float | None = None) -> None:
        """Stop scheduling, let running jobs finish (up to *timeout*), release."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        if self.aps.running:
            self.aps.pause()
            deadline = time.monotonic() + timeout
            # Runs handed to the pool before the pause start after it: wait for those too.
            while (self.running_count() or self.runner.pending) and time.monotonic() < deadline:
                self._stopped.wait(0.05)
            if self.running_count():
                log.warning(
                    "%d job run(s) still running after scheduler.shutdown_timeout (%gs)", self.running_count(), timeout
                )
            self.aps.shutdown(wait=False)
        self.runs.stop()
        if self.lease is not None and not self.lease_lost.is_set():
            try:
                self.lease.release()
            except Exception:
                log.exception("could not release the lease; the next daemon waits for it to expire")
        self.dispatcher.stop(timeout=5)
        self.db.dispose()
        log.info("scheduler %s stopped", self.settings.id)

    def persist(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Call a ledger write, retrying while the job store is unavailable.

        Gives up (returning ``None``) only once the engine is stopping; what
        was not written is then found by the next daemon's recovery.
        """
        delay = 0.25
        while True:
            try:
                return func(*args, **kwargs)
            except sa.exc.SQLAlchemyError as exc:
                if self._stopped.is_set():
                    log.error("%s failed and the daemon is stopping: %s", what, exc)
                    return None
                log.warning("%s failed (%s); retrying in %.2fs", what, exc, delay)
                self._stopped.wait(delay)
                delay = min(delay * 2, 10.0)

    def running_count(self) -> int:
        with self._lock:
            return sum(self._running.values())

    def _renew_loop(self) -> None:
        assert self.lease is not None
        interval = self.settings.lease_ttl / 3
        while not self._stopped.wait(interval):
            try:
                if not self.lease.renew():
                    log.critical("lost the lease on queues %s to another daemon; stopping", ", ".join(self.queues))
                    self.lease_lost.set()
                    return
            except Exception as exc:  # noqa: BLE001 - keep renewing whatever went wrong
                log.warning("could not renew the lease (%s); runs pause once it lapses", exc)

    # -- requests from the consumer ---------------------------------------------------
    def submit(self, request: JobRequest) -> str:
        """Carry out one decoded request; return what happened (for logs).

        :raises InvalidJob: the request cannot be carried out (dead-letter it).
        :raises sqlalchemy.exc.SQLAlchemyError: the job store failed (retry later).
        """
        if request.op == "add":
            return self._add(request)
        if request.op == "cancel":
            return self._cancel(request)
        if request.op in MANAGEMENT_OPS:
            return self._manage(request)
        self._message(request)
        return "message"

    def submit_many(self, requests: list[JobRequest]) -> list[str | Exception]:
        """Carry out *requests* in order, as :meth:`submit` would one by one,
        storing the run-now jobs that go straight to the pool among them
        together (one INSERT, one commit); return each one's outcome, or the
        exception that stopped it: :class:`InvalidJob` (dead-letter it), any
        other error, or a :class:`sqlalchemy.exc.SQLAlchemyError` for it and
        every request after it (retry them later)."""
        results: list[Any] = [None] * len(requests)
        group: list[tuple[int, _RunNow]] = []

        def store_group() -> None:
            try:
                self._store_now(group, results)
            except sa.exc.SQLAlchemyError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug: these requests only
                for index, _ in group:
                    results[index] = results[index] or exc
            group.clear()

        try:
            for index, request in enumerate(requests):
                try:
                    planned = self._plan(request) if request.op == "add" else None
                    if isinstance(planned, _RunNow):
                        group.append((index, planned))
                        continue
                    store_group()
                    results[index] = self.submit(request) if planned is None else planned()
                except sa.exc.SQLAlchemyError:
                    raise
                except Exception as exc:  # noqa: BLE001 - InvalidJob, or a bug: this request only
                    results[index] = exc
            store_group()
        except sa.exc.SQLAlchemyError as exc:
            results = [exc if outcome is None else outcome for outcome in results]
        return results

    def _add(self, request: JobRequest, recovering: bool = False) -> str:
        planned = self._plan(request, recovering)
        if isinstance(planned, _RunNow):
            return self._add_now(planned)
        return planned()

    def _plan(self, request: JobRequest, recovering: bool = False) -> _RunNow | Callable[[], str]:
        """Check an ``add`` request and build its job: a :class:`_RunNow` if
        it goes straight to the worker pool (:meth:`_add_now`), else a
        callable that stores it in its queue's job store.

        :raises InvalidJob: it cannot be scheduled.
        """
        request, func = admit(request, self.settings.func_aliases, self.settings.allowed_modules)
        assert request.trigger is not None and request.func is not None
        accepted = request.accepted_at()
        trigger = build_trigger(request.trigger, self.settings.timezone, anchor=accepted)
        # The first fire time from now; if the schedule ended while the message
        # waited (the daemon was down), its first fire time after acceptance:
        # a late run, which runs or is recorded missed like any other.
        first = next_fire_time(trigger, datetime.now(timezone.utc)) or next_fire_time(trigger, accepted)
        if first is None:
            raise InvalidJob(
                f"{request.trigger['type']} trigger: never fires after the job was accepted at {accepted.isoformat()}"
            )
        # A job that takes a request is stored with a placeholder the runner fills.
        args, kwargs = with_request(func, request.args, request.kwargs, None)
        options = {k: v for k, v in request.options.items() if k in ("misfire_grace_time", "coalesce", "max_instances")}
        if request.trigger["type"] == "now":
            # "As soon as possible" has no deadline: after an outage it still runs.
            options.setdefault("misfire_grace_time", None)
        elif request.trigger["type"] != "date":
            options = catch_up_options(self._catch_up(request.options), options)
        if request.trigger["type"] == "now" and not recovering and self._direct_open(request.id):
            # Built as the job store loads a job: admit() made APScheduler's checks.
            job = Job.__new__(Job)
            job.__setstate__(
                {
                    "version": 1,
                    "id": request.id,
                    "func": request.func,
                    "trigger": trigger,
                    "executor": "default",
                    "args": tuple(args),
                    "kwargs": kwargs,
                    "name": request.options.get("name") or request.func,
                    "next_run_time": first,
                    **self.aps._job_defaults,
                    **options,
                }
            )
            job._scheduler = self.aps
            job._jobstore_alias = request.queue
            return _RunNow(request, job, first, request.to_wire())

        def store() -> str:
            with self.stores[request.queue].adding(None if recovering else request.to_wire()):
                try:
                    self.aps.add_job(
                        func,
                        trigger=trigger,
                        args=args,
                        kwargs=kwargs,
                        id=request.id,
                        name=request.options.get("name") or request.func,
                        jobstore=request.queue,
                        replace_existing=recovering,
                        next_run_time=first,
                        **options,
                    )
                except ConflictingIdError:
                    log.info(
                        "job %s (queue %s): already stored; duplicate message %s absorbed",
                        request.id,
                        request.queue,
                        request.mid,
                    )
                    return "duplicate"
            return "stored"

        return store

    def _direct_open(self, job_id: str) -> bool:
        """True when a run-now job may go straight to the worker pool: the
        SQL job store is on, the scheduler runs, this daemon's lease is fresh
        (else the job waits, fenced, in the job store: see
        :meth:`.store.QueueJobStore.get_due_jobs`), no run of a job with this
        id is in the pool, and the pool's backlog is below
        :data:`DIRECT_BACKLOG`."""
        return (
            not self.settings.memory_store
            and self.aps.state == STATE_RUNNING
            and (self.lease is None or self.lease.fresh())
            and not self._executor._instances.get(job_id)  # APScheduler's count of runs in the pool
            and self.runner.pending < DIRECT_BACKLOG
        )

    def _store_now(self, group: list[tuple[int, _RunNow]], results: list[Any]) -> None:
        """Store the run-now jobs of *group* with one INSERT, then hand each
        to the pool; one by one (:meth:`_add_now`) if an id is already known."""
        if not group:
            return
        try:
            self.ledger.add_jobs([planned.wire for _, planned in group])
        except sa.exc.IntegrityError:
            for index, planned in group:
                results[index] = self._add_now(planned)
        else:
            for index, planned in group:
                try:
                    results[index] = self._hand(planned)
                except Exception:  # noqa: BLE001 - a bug: its record is stored, the next start runs it
                    log.exception(
                        "job %s (queue %s): stored, but not handed to the worker pool; the next daemon start runs it",
                        planned.request.id,
                        planned.request.queue,
                    )
                    results[index] = "stored"

    def _add_now(self, planned: _RunNow) -> str:
        """Store a run-now job's record, then hand its run to the worker pool.

        APScheduler's table is skipped: it would hold the job only until its
        one run is submitted (and delete it then). The record alone is the
        persisted job. A daemon that stops before the run starts leaves a live
        record that APScheduler does not hold: the next one's recovery
        schedules it again (:meth:`.store.Ledger.orphans`), exactly as for a
        job APScheduler had submitted, with the same run key; a run the lease
        check refuses is stored back in the job store (:meth:`Runner.run_one`).
        """
        request = planned.request
        try:
            self.ledger.add_job(planned.wire)
        except ConflictingIdError:
            if not self._stored_not_handed(request):
                log.info(
                    "job %s (queue %s): already stored; duplicate message %s absorbed",
                    request.id,
                    request.queue,
                    request.mid,
                )
                return "duplicate"
            # This very message was stored, but its commit's reply was lost
            # (so it came back): nothing holds the job yet.
            log.info(
                "job %s (queue %s): already stored by message %s; running it", request.id, request.queue, request.mid
            )
        return self._hand(planned)

    def _hand(self, planned: _RunNow) -> str:
        """CREATED for a stored run-now job, then its run to the pool."""
        self._on_added(planned.job, planned.wire)
        try:
            self._executor.submit_job(planned.job, [planned.first])
        except MaxInstancesReachedError:  # a run of an earlier job with this id is still in the pool
            self.store_back(planned.job, planned.first)
        return "stored"

    def _stored_not_handed(self, request: JobRequest) -> bool:
        """True if *request*'s own record is stored and still ``scheduled``,
        yet neither the worker pool nor APScheduler's table holds its job."""
        row = self.ledger.get_job(request.id)
        return (
            row is not None
            and row["mid"] == request.mid
            and row["status"] == "scheduled"
            and not self._executor._instances.get(request.id)
            and self.aps.get_job(request.id, jobstore=request.queue) is None
        )

    def store_back(self, job: Job, run_time: datetime, trigger: Any = None) -> bool:
        """Keep a one-off job whose run was not started (refused by the lease
        check, not handed to the pool, or a retry: then with its own
        *trigger*) in its queue's job store, due at *run_time*: the daemon
        holding the lease runs it. Its record is already stored. False if the
        daemon stopped first (the next one runs it from its record)."""
        if self.aps.state == STATE_STOPPED:
            log.info("job %s: the daemon has stopped; the next one runs it from its record", job.id)
            return False
        return (
            self.persist(
                f"job {job.id}: storing it in the job store, due at {run_time.isoformat()}",
                self.aps.add_job,
                job.func,
                trigger=trigger or job.trigger,
                args=job.args,
                kwargs=job.kwargs,
                id=job.id,
                name=job.name,
                jobstore=job._jobstore_alias,
                executor=job.executor,
                misfire_grace_time=job.misfire_grace_time,
                coalesce=job.coalesce,
                max_instances=job.max_instances,
                replace_existing=True,
                next_run_time=run_time,
            )
            is not None
        )

    def _catch_up(self, options: dict[str, Any]) -> str:
        """A recurring job's catch-up policy: its own, else ``skip`` if it set
        its misfire grace time or coalescing (which only ``skip`` uses), else
        ``scheduler.catch_up``."""
        if options.get("catch_up"):
            return str(options["catch_up"])
        if "misfire_grace_time" in options or "coalesce" in options:
            return "skip"
        return str(self.settings.catch_up)

    def _on_added(self, job: Job, request: dict[str, Any]) -> None:
        # Called by the job store after its transaction commits and before
        # APScheduler can run the job, so CREATED always comes first.
        self._emit_created(job.id, request["queue"], job_info(job))

    def _emit_created(self, job_id: str, queue: str, info: dict[str, Any]) -> None:
        log.info("job %s (queue %s): stored", job_id, queue)
        self._emit(Event(Event.JOB_CREATED, job_id=job_id, queue=queue, job=info))

    def _cancel(self, request: JobRequest) -> str:
        job_id, queue = request.id, request.queue
        info = None
        try:
            job = self.aps.get_job(job_id, jobstore=queue)
            if job is not None:
                info = job_info(job)
            self.aps.remove_job(job_id, jobstore=queue)
        except JobLookupError:
            pass
        if self.settings.memory_store:
            moved = info is not None
        else:
            moved = self.ledger.set_status(job_id, queue, "canceled", only_from=(*LIVE, "parked"))
        if not moved:
            log.info("job %s (queue %s): cancel ignored: no such live job", job_id, queue)
            return "cancel-ignored"
        log.info("job %s (queue %s): canceled", job_id, queue)
        with self._lock:
            event = Event(Event.JOB_CANCELED, job_id=job_id, queue=queue, job=info)
            if self._running.get(job_id):
                # The run in flight ends with CANCELED, not REMOVED.
                self._canceled.add(job_id)
                self._deferred[job_id].append(event)
            else:
                self._emit(event)
        return "canceled"

    # -- reschedule, pause, resume, run now ------------------------------------------
    def _manage(self, request: JobRequest) -> str:
        """Change a stored job with APScheduler's own calls, then its record,
        then emit its event; what cannot be done is logged and reported as
        JOB_REQUEST_REFUSED, never dropped silently."""
        job_id, queue, op = request.id, request.queue, request.op
        job = self.aps.get_job(job_id, jobstore=queue)
        if job is None:
            return self._refuse(request, "no such live job on this queue (finished, canceled, parked or never added)")
        paused = job.next_run_time is None
        info = job_info(job)
        if op == "reschedule":
            assert request.trigger is not None
            trigger = build_trigger(request.trigger, self.settings.timezone, anchor=request.accepted_at())
            first = next_fire_time(trigger, datetime.now(timezone.utc))
            if first is None:
                return self._refuse(request, "the new schedule never fires")
            if paused:
                self.aps.modify_job(job_id, jobstore=queue, trigger=trigger)
            else:
                self.aps.reschedule_job(job_id, jobstore=queue, trigger=trigger)
            self._write_record(
                f"job {job_id}: recording its new trigger", self.ledger.set_trigger, job_id, queue, request.trigger
            )
            log.info("job %s (queue %s): rescheduled, next run %s", job_id, queue, "none (paused)" if paused else first)
            self._emit(
                Event(
                    Event.JOB_RESCHEDULED,
                    job_id=job_id,
                    queue=queue,
                    job=info,
                    trigger=request.trigger,
                    next_run_time=None if paused else first,
                )
            )
            return "rescheduled"
        if op == "pause":
            if paused:
                return self._refuse(request, "the job is already paused")
            self.aps.pause_job(job_id, jobstore=queue)
            self._write_record(
                f"job {job_id}: recording the pause",
                self.ledger.set_status,
                job_id,
                queue,
                "paused",
                ("scheduled", "running"),
            )
            log.info("job %s (queue %s): paused", job_id, queue)
            self._emit(Event(Event.JOB_PAUSED, job_id=job_id, queue=queue, job=info))
            return "paused"
        if op == "resume":
            if not paused:
                return self._refuse(request, "the job is not paused")
            return self._resume(job, queue, info)
        if paused:
            return self._refuse(request, "the job is paused; resume it first")
        # Due now: APScheduler runs it with the usual run events, then
        # computes its next run from the trigger.
        self.aps.modify_job(job_id, jobstore=queue, next_run_time=datetime.now(timezone.utc))
        log.info("job %s (queue %s): run now", job_id, queue)
        return "run-now"

    def _resume(self, job: Job, queue: str, info: dict[str, Any]) -> str:
        first = next_fire_time(job.trigger, datetime.now(timezone.utc))
        if first is None:
            # APScheduler's resume_job would delete it without a word.
            reason = "its schedule ended while it was paused"
            self.aps.remove_job(job.id, jobstore=queue)
            self._write_record(
                f"job {job.id}: closing it", self.ledger.set_status, job.id, queue, "missed", ("paused",), reason
            )
            log.warning("job %s (queue %s): resumed, but %s; removed", job.id, queue, reason)
            self.job_ended(job.id, queue, info)
            return "resumed-ended"
        self.aps.resume_job(job.id, jobstore=queue)
        self._write_record(
            f"job {job.id}: recording the resume", self.ledger.set_status, job.id, queue, "scheduled", ("paused",)
        )
        log.info("job %s (queue %s): resumed, next run %s", job.id, queue, first)
        self._emit(Event(Event.JOB_RESUMED, job_id=job.id, queue=queue, job=info, next_run_time=first))
        return "resumed"

    def _write_record(self, what: str, func: Any, *args: Any) -> None:
        if not self.settings.memory_store:
            self.persist(what, func, *args)

    def _refuse(self, request: JobRequest, reason: str) -> str:
        log.warning("job %s (queue %s): %s refused: %s", request.id, request.queue, request.op, reason)
        self._emit(
            Event(
                Event.JOB_REQUEST_REFUSED,
                job_id=request.id,
                queue=request.queue,
                job=None,
                op=request.op,
                reason=reason,
            )
        )
        return f"{request.op}-refused"

    def _message(self, request: JobRequest) -> None:
        text = request.text or ""
        log.info("message on queue %s: %s", request.queue, text)
        if text == "restore-parked":
            self.restore_parked()
        if text == "print-jobs":
            for job in self.aps.get_jobs():
                log.info(
                    "  job %s (queue %s) %s next run %s", job.id, job._jobstore_alias, job.func_ref, job.next_run_time
                )
        self._emit(Event(Event.MESSAGE, message=text, queue=request.queue))

    # -- events -----------------------------------------------------------------------
    def _emit(self, event: Event) -> None:
        self.dispatcher.emit(event)

    def run_started(self, job_id: str) -> None:
        with self._lock:
            self._running[job_id] += 1

    def emit_run_events(self, job_id: str, events: list[Event], final: bool, finished_run: bool = False) -> None:
        """Emit a run's events, then REMOVED after the last run, then any
        CANCELED that waited for the run."""
        with self._lock:
            for event in events:
                self._emit(event)
            if finished_run:
                self._running[job_id] -= 1
                if self._running[job_id] <= 0:
                    del self._running[job_id]
            canceled = job_id in self._canceled
            if final and not canceled and events:
                base = events[-1]
                self._emit(Event(Event.JOB_REMOVED, job_id=job_id, queue=base.get("queue"), job=base.get("job")))
            if job_id not in self._running:
                for event in self._deferred.pop(job_id, []):
                    self._emit(event)
                self._canceled.discard(job_id)

    def job_ended(self, job_id: str, queue: str, info: dict[str, Any] | None) -> None:
        """Emit REMOVED for a job whose last run ended without a run event of
        its own to carry it; after any run of the job still going."""
        with self._lock:
            event = Event(Event.JOB_REMOVED, job_id=job_id, queue=queue, job=info)
            if self._running.get(job_id):
                self._deferred[job_id].append(event)
            else:
                self._emit(event)

    def _on_max_instances(self, event: JobSubmissionEvent) -> None:
        # Dispatched after APScheduler updated the job: gone means these were its last runs.
        job = self.aps.get_job(event.job_id)
        info = job_info(job) if job else None
        times = event.scheduled_run_times
        for index, run_time in enumerate(times):
            final = job is None and index == len(times) - 1
            for missed in getattr(run_time, "skipped", ()):
                self.runner.record_missed(event.job_id, event.jobstore, info, missed, final=False)
            reason = "the previous run was still running (max_instances reached)"
            self.runner.record_missed(
                event.job_id, event.jobstore, info, Missed(run_time, reason), final, removed=False
            )
            if final:
                self.job_ended(event.job_id, event.jobstore, info)

    # -- recovery and housekeeping ----------------------------------------------------
    def _recover(self) -> None:
        for queue, store in self.stores.items():
            self._settle(queue, store)
        for run in self.ledger.recover(self.queues, self.owner):
            job_id, queue = run["job_id"], run["queue"]
            request = json.loads(run["request"])
            scheduled = datetime.fromtimestamp(run["scheduled_at"], timezone.utc)
            job = self.aps.get_job(job_id, jobstore=queue)
            # The crash may have come before APScheduler moved the job past
            # this run: then the job is still stored with the run due again.
            final = job is None or job.trigger.get_next_fire_time(scheduled, scheduled) is None
            if job is not None and final:
                self.aps.remove_job(job_id, jobstore=queue)
            reason = f"the daemon running it ({run['owner']}) stopped before the run finished"
            log.warning("job %s (queue %s): run %s interrupted: %s", job_id, queue, run["run_key"], reason)
            rerun = final and self.settings.interrupted == "rerun" and not self.ledger.was_interrupted(job_id)
            if rerun:
                reason += "; running it once more (scheduler.interrupted = rerun)"
            # A job with retries left spends one on a run a crash cut.
            plan = plan_retry(self.ledger.get_job(job_id), datetime.now(timezone.utc)) if final and not rerun else None
            if plan is not None:
                reason += f"; retrying it in {plan.delay:g}s (attempt {plan.attempt + 1} of {plan.retries + 1})"
            self.ledger.finish_run(
                RunEnd(
                    job_id,
                    run["run_key"],
                    "interrupted",
                    final and not rerun,
                    error=reason,
                    retry_at=plan.at.timestamp() if plan else None,
                )
            )
            info = request_info(request)
            base = {
                "job_id": job_id,
                "queue": queue,
                "job": info,
                "run_key": run["run_key"],
                "scheduled_run_time": scheduled,
            }
            events = [Event(Event.JOB_INTERRUPTED, reason=reason, will_retry=rerun or plan is not None, **base)]
            if plan is not None:
                events.append(
                    Event(Event.JOB_RETRY, attempt=plan.attempt + 1, retry_at=plan.at, delay=plan.delay, **base)
                )
            self.emit_run_events(job_id, events, final and not rerun and plan is None)
            if rerun or plan is not None:
                # A one-off job again: a new run time gives the re-run its own run_key.
                when = plan.at if plan is not None else datetime.now(timezone.utc)
                kind = request["trigger"]["type"] if plan is not None else "now"
                again = dict(request, trigger={"type": kind, "timezone": "UTC", "run_date": when.isoformat()})
                self._add(decode(again), recovering=True)
        for queue, store in self.stores.items():
            for orphan in self.ledger.orphans(queue, store.jobs_t):
                request = json.loads(orphan["request"])
                log.warning("job %s (queue %s): was due but never started; scheduling it again", orphan["id"], queue)
                try:
                    self._add(decode(request), recovering=True)
                except Exception as exc:  # noqa: BLE001 - park it, go on with the others
                    reason = f"cannot be scheduled again: {exc}"
                    if self.ledger.set_status(orphan["id"], queue, "parked", error=reason):
                        log.error("job %s (queue %s) parked: %s", orphan["id"], queue, reason)
                        self._on_parked(orphan["id"], queue, reason, request)

    def _settle(self, queue: str, store: QueueJobStore) -> None:
        """Write what a previous daemon left of the scheduler thread's deferred
        rows (:mod:`pyramid_scheduler.daemon.scheduling`): a job stored due at a run the
        ledger already has is moved past it, or removed if that was its last,
        so the run is neither run nor recorded missed again."""
        for _ in range(100):  # each round moves every such job one run on
            due = store.get_due_jobs(datetime.now(timezone.utc))
            keys = {run_key(job.id, job.next_run_time): job for job in due}
            recorded = self.ledger.recorded_runs(list(keys))
            if not recorded:
                return
            for key in recorded:
                job = keys[key]
                following = job.trigger.get_next_fire_time(job.next_run_time, job.next_run_time)
                log.info(
                    "job %s (queue %s): run %s was handed over by the previous daemon; %s",
                    job.id,
                    queue,
                    key,
                    f"next run {following}" if following else "removing its row",
                )
                if following is None:
                    store.remove_job(job.id)
                else:
                    job._modify(next_run_time=following)
                    store.update_job(job)

    def _on_parked(self, job_id: str, queue: str, reason: str, request: dict[str, Any] | None = None) -> None:
        if request is None:
            row = self.ledger.get_job(job_id)
            request = json.loads(row["request"]) if row else None
        self._emit(
            Event(
                Event.JOB_PARKED,
                job_id=job_id,
                queue=queue,
                reason=reason,
                job=request_info(request) if request else None,
            )
        )

    def restore_parked(self) -> int:
        """Schedule again every parked job that loads now (its code is back, or
        ``scheduler.func_aliases`` renames its function); JOB_RESTORED for each.
        Runs at start, at housekeeping and on the ``restore-parked`` message."""
        count = 0
        for queue, store in self.stores.items():
            if not isinstance(store, QueueJobStore):
                continue
            jobs, missing = store.restore_parked()
            for job in jobs:
                self._emit(
                    Event(
                        Event.JOB_RESTORED,
                        job_id=job.id,
                        queue=queue,
                        job=job_info(job),
                        next_run_time=job.next_run_time,
                    )
                )
            for row in missing:
                request = json.loads(row["request"])
                try:
                    self._add(decode(request), recovering=True)
                except Exception as exc:  # noqa: BLE001 - still cannot be scheduled: stays parked
                    log.warning("job %s (queue %s) still parked: %s", row["id"], queue, exc)
                    continue
                self.ledger.set_status(row["id"], queue, "scheduled", only_from=("parked",))
                job = self.aps.get_job(row["id"], jobstore=queue)
                self._emit(
                    Event(
                        Event.JOB_RESTORED,
                        job_id=row["id"],
                        queue=queue,
                        job=job_info(job) if job else request_info(request),
                        next_run_time=job.next_run_time if job else None,
                    )
                )
                count += 1
            count += len(jobs)
        if count:
            self.aps.wakeup()
        return count

    def housekeeping(self) -> None:
        """Forget finished jobs older than ``scheduler.result_ttl``, then call
        the ``scheduler.housekeeping.append`` callables."""
        purged = self.ledger.purge(now() - self.settings.result_ttl)
        log.info("housekeeping: %d finished job record(s) purged", purged)
        self.restore_parked()
        threadlocal_manager.push({"registry": self.registry, "request": None})
        try:
            for func in self.settings.housekeeping_append:
                try:
                    func()
                except Exception:
                    log.exception("housekeeping callable %r failed", func)
        finally:
            threadlocal_manager.pop()
