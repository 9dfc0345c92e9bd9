"""Execution: how the due runs of a job are carried out, one by one.

Scheduling (:mod:`.scheduling`) decides *when*; execution carries out *what
is due*. The interface between them is small, and typed:

* **in**: a due job and its run times -- ``executor.submit_job(job,
  run_times)`` on :class:`JobExecutor` (APScheduler's executor interface:
  :exc:`~apscheduler.executors.base.MaxInstancesReachedError` if a batch of
  the job is still in the pool), which calls :meth:`Runner.run` on a worker
  thread. *job* is the job as the job store loaded it (id, function,
  arguments, trigger, options, queue); each run time is a
  :class:`~.catchup.ScheduledRun` carrying the runs its catch-up plan
  skipped.
* **out**: one :class:`RunRecord` per run time (and per skipped run), each
  also written to the run ledger (``runs`` table) and told as events; a
  failed run with retries left carries its :class:`~.retries.RetryPlan`.
* **back**: a run that is not carried out here (this daemon's heartbeat lapsed)
  and each retry go back to scheduling through one callable,
  :class:`~.retries.StoreBack` (the daemon's is
  :class:`.scheduling.StoreBack`), which stores the job due again.

Nothing else passes between them: the runner reads no scheduler state, and
the scheduler no run state; both write to the ledger, and both hand their
events to :mod:`.job_events`, which keeps each job's events in order within
the process. Several processes executing one queue would put a transport
behind ``submit_job`` and ``StoreBack`` (a job pickles, as the job store
keeps it) and carry the job events across too; neither side's code changes.

A job that skipped record-first (``durable=False``) is a
:class:`RecordedAfter`: it goes through the same pool and runner, but its
run is carried out by :mod:`.fastlane`, which records it after the run.

Per run, :meth:`Runner.run_one`:

1. refuses to run if this daemon's heartbeat may have lapsed (fencing);
2. records it ``expired`` if the job's ``expires`` time has passed
   (:mod:`.flow`), else reports it missed if it is later than the job's
   misfire grace;
3. records it ``started`` in the run ledger -- if the run key is already
   there, a previous daemon ran it, and it is not run again;
4. calls the function with the application's registry pushed as current,
   inside ``transaction.manager`` when the ``transaction`` package is
   installed, through ``scheduler.delegator`` if one is set; a function with
   a ``request`` parameter gets a request built for the application
   (:func:`pyramid.scripting.prepare`) and runs inside ``request.tm``;
5. records the outcome and emits EXECUTED or ERROR (then REMOVED after the
   last run), in that order.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.triggers.date import DateTrigger
from pyramid.registry import Registry

from pyramid_scheduler import tracing
from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon.aps import pool_of, queue_of, run_ended
from pyramid_scheduler.daemon.catchup import Missed, plain
from pyramid_scheduler.daemon.clock import SYSTEM_CLOCK, Clock
from pyramid_scheduler.daemon.context import job_context, request_context
from pyramid_scheduler.daemon.control import Controls
from pyramid_scheduler.daemon.flow import expired, record_expired
from pyramid_scheduler.daemon.job_events import JobEvents, job_info
from pyramid_scheduler.daemon.limits import Limits
from pyramid_scheduler.daemon.persist import Persist
from pyramid_scheduler.daemon.retries import RetryPlan, StoreBack, plan_retry, schedule_retry
from pyramid_scheduler.exceptions import JobStopped
from pyramid_scheduler.faults import crash_point
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.progress import running
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.records import RunEnd, RunStart
from pyramid_scheduler.store.runs import RunWriter
from pyramid_scheduler.triggers.delay import FixedDelayTrigger
from pyramid_scheduler.wire.refs import takes_request, with_request

log = get_logger(__name__)


def run_key(job_id: str, run_time: datetime) -> str:
    """The stable key of one scheduled run: ``job_id@ISO-8601 UTC time``."""
    return f"{job_id}@{run_time.astimezone(timezone.utc).isoformat()}"


@dataclass(frozen=True)
class RunRecord:
    """What became of one due run: the run record out of execution."""

    job_id: str
    queue: str
    run_key: str
    #: ``done``, ``failed``, ``stopped``, ``timed-out``, ``missed``, ``expired``,
    #: ``held`` (a flow limit: see *later*), or ``not-run``: not carried out here
    #: (the heartbeat lapsed, the run was already recorded, the daemon is stopping).
    outcome: str
    #: The retry of a failed run, stored once the batch has left the pool.
    retry: RetryPlan | None = None
    #: A run held back by a flow limit (``held``, :mod:`.limits`): stored back due then.
    later: datetime | None = None


class JobExecutor(ThreadPoolExecutor):  # type: ignore[misc]
    """APScheduler's thread pool, running each batch of due runs through :class:`Runner`."""

    def __init__(self, runner: Runner, max_workers: int) -> None:
        super().__init__(max_workers)
        self.runner = runner

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        self.runner.submitted()
        pool_of(self).submit(self.runner.run, job, run_times).add_done_callback(partial(self.batch_done, job))

    def batch_done(self, job: Job, future: Future[list[RunRecord]]) -> None:
        """A batch of *job* has left the pool: a fixed-delay job is moved to
        its next run, APScheduler's count of its runs goes down, then its
        retries are stored."""
        if isinstance(job.trigger, FixedDelayTrigger):  # moved on while still counted as running
            self.runner.store_back.delay_next(job, self.runner.clock.now())
        exc = future.exception()
        if exc is not None:
            run_ended(self, job.id, exc)
        else:
            run_ended(self, job.id)
            for record in future.result() or ():
                if record.retry is not None:
                    schedule_retry(self.runner.store_back, job, record.retry)
                elif record.later is not None:
                    self.runner.store_back(job, record.later, DateTrigger(record.later, timezone=timezone.utc))


class RecordedAfter(Job):  # type: ignore[misc]
    """A job recorded after its run, not before (the fast lane's,
    :mod:`.fastlane`): :meth:`Runner.run` hands its run to :meth:`run_by`."""

    __slots__ = ()

    def run_by(self, runner: Runner, run_time: datetime) -> RunRecord:
        raise NotImplementedError


#: Recorded run outcomes that can also be a job's final status.
RUN_OUTCOMES = ("done", "failed", "missed", "interrupted")


@dataclass(kw_only=True, eq=False)
class Runner:
    """Carries out due runs, records them and tells their events.

    Its collaborators, each typed: the *ledger* and the run writer *runs*
    (group commit) where runs are recorded, *events* (each job's events in
    order), *persist* (writes retried while the job store is down), the
    application's *registry*, this daemon's *owner* name, the
    ``scheduler.delegator``, *lease_valid* (may this daemon start runs
    now?) and *store_back* (a job given back to scheduling).
    """

    ledger: Ledger
    runs: RunWriter
    events: JobEvents
    persist: Persist
    registry: Registry | None
    owner: str
    delegator: Callable[..., Any] | None
    lease_valid: Callable[[], bool]
    store_back: StoreBack
    #: Where "now" is read (a run's lateness, a retry's due time).
    clock: Clock = SYSTEM_CLOCK
    #: The flow limits (concurrency slots, rates) of jobs that have them.
    limits: Limits | None = None
    #: Batches handed to the pool and not finished (started or not yet).
    pending: int = field(default=0, init=False)
    #: The runs going, their progress and stop requests (:mod:`.control`).
    controls: Controls = field(init=False, repr=False)
    _lock: threading.Condition = field(default_factory=threading.Condition, init=False, repr=False)

    def __post_init__(self) -> None:
        self.controls = Controls(self.ledger, self.events.emit, self.clock)

    def submitted(self) -> None:
        """A batch of runs was handed to the thread pool (see :attr:`pending`)."""
        with self._lock:
            self.pending += 1

    def run(self, job: Job, run_times: list[datetime]) -> list[RunRecord]:
        """Carry out a batch of due runs of *job*; return a record of each
        (and of each run skipped before them)."""
        records: list[RunRecord] = []
        try:
            for index, run_time in enumerate(run_times):
                try:
                    if isinstance(job, RecordedAfter):
                        records.append(job.run_by(self, plain(run_time)))
                        continue
                    records.extend(self.record_skipped(job, run_time))
                    records.append(self.run_one(job, plain(run_time), last_of_batch=index == len(run_times) - 1))
                except Exception:
                    log.exception("job %s: the runner failed around the run at %s", job.id, run_time)
        finally:
            with self._lock:
                self.pending -= 1
                self._lock.notify_all()
        return records

    def wait_below(self, limit: int, timeout: float) -> bool:
        """Wait up to *timeout* seconds for fewer than *limit* batches to be
        pending; True if they are."""
        with self._lock:
            return self._lock.wait_for(lambda: self.pending < limit, timeout)

    def run_one(self, job: Job, run_time: datetime, last_of_batch: bool = True) -> RunRecord:
        """Carry out the run of *job* due at *run_time* (see the module), within its flow limits (.limits)."""
        limits = self.limits
        if limits is None or not limits.applies(job):
            return self._run_one(job, run_time, last_of_batch)
        key = run_key(job.id, run_time)
        verdict = limits.admit(job, key, self.persist)
        if verdict is None:  # no limits after all
            return self._run_one(job, run_time, last_of_batch)
        if verdict.later is not None or verdict.not_run:
            return RunRecord(job.id, queue_of(job), key, "held" if verdict.later else "not-run", later=verdict.later)
        try:
            return self._run_one(job, run_time, last_of_batch)
        finally:
            self.persist(f"job {job.id}: giving back the slot of run {key}", limits.leave, verdict, key)

    def _run_one(self, job: Job, run_time: datetime, last_of_batch: bool) -> RunRecord:
        events = self.events
        queue = queue_of(job)
        key = run_key(job.id, run_time)
        now = self.clock.now()
        final = last_of_batch and job.trigger.get_next_fire_time(run_time, now) is None
        info = job_info(job)
        base = {"job_id": job.id, "queue": queue, "job": info, "run_key": key, "scheduled_run_time": run_time}
        not_run = RunRecord(job.id, queue, key, "not-run")

        if not self.lease_valid():
            log.error(
                "job %s: run %s not started: this daemon's heartbeat on queue %s has "
                "lapsed; another daemon will run it",
                job.id,
                key,
                queue,
            )
            if final:  # nothing holds a one-off job now: put it back where that daemon looks
                self.store_back(job, run_time)
            return not_run

        if expired(job, now):
            record_expired(self, job, info, run_time, key, now)
            return RunRecord(job.id, queue, key, "expired")
        grace = job.misfire_grace_time
        late = (now - run_time).total_seconds()
        if grace is not None and late > grace:
            reason = f"{late:.3f}s late, past its misfire grace time of {grace}s"
            return self.record_missed(job.id, queue, info, Missed(run_time, reason), final)

        crash_point("submitted")
        # Counted as running before its start is recorded: a cancel arriving
        # meanwhile then waits for this run's own event.
        events.run_started(job.id)
        try:
            state = self.persist(
                f"job {job.id}: recording the start of run {key}",
                self.runs.start_run,
                RunStart(job.id, queue, key, run_time.timestamp(), self.owner),
            )
        except BaseException:
            events.emit_run_events(job.id, [], False, finished_run=True)
            raise
        if state != "start":
            events.emit_run_events(job.id, [], False, finished_run=True)  # not run after all
            if state is None:
                log.error(
                    "job %s: run %s not started: the daemon is stopping and the job store is "
                    "unavailable; the next daemon will run it",
                    job.id,
                    key,
                )
                return not_run
            if state == "fenced":
                log.error(
                    "job %s: run %s not started: the other daemons found this one dead (its heartbeat "
                    "lapsed) and take its work over",
                    job.id,
                    key,
                )
                return not_run
            log.info("job %s: run %s is already %s; not running it again", job.id, key, state)
            # A crash after the last run was recorded and before the job was
            # closed: close it now, with that run's outcome.
            if (
                final
                and state in RUN_OUTCOMES
                and self.persist(
                    f"job {job.id}: closing it after run {key}", self.ledger.set_status, job.id, queue, state
                )
            ):
                events.job_ended(job.id, queue, info)
            return not_run

        made: list[Event] = []
        plan = None
        outcome = "done"
        control = self.controls.start(job.id, queue, key, info)
        try:
            log.info("job %s (queue %s): running %s, run %s", job.id, queue, job.func_ref, key)
            began = time.monotonic()
            try:
                crash_point("started")
                with run_span(job, queue, key), self.context(job) as request, running(control):
                    retval = self.call(job, request)
                crash_point("finished")
                stop = control.end()
            except BaseException as exc:  # noqa: BLE001 - a job's sys.exit() must not end the daemon
                stop = control.end()
                outcome = stop or "failed"
                text = control.explain("".join(traceback.format_exception(exc)))
                (log.warning if stop else log.error)(
                    "job %s (queue %s): run %s %s\n%s", job.id, queue, key, outcome, text
                )
                timed = {**base, "duration": time.monotonic() - began, "lateness": late}
                plan = self.failed(job, key, final, text, exc, timed, made, stop)
            else:
                if stop:  # asked to stop, and it returned: recorded as stopped all the same
                    outcome, asked = stop, JobStopped(job.id, control.stop_reason or "")
                    log.warning("job %s (queue %s): run %s %s", job.id, queue, key, stop)
                    timed = {**base, "duration": time.monotonic() - began, "lateness": late}
                    plan = self.failed(job, key, final, str(asked), asked, timed, made, stop)
                    return RunRecord(job.id, queue, key, outcome, plan)
                log.info("job %s (queue %s): run %s done", job.id, queue, key)
                made.append(
                    Event(Event.JOB_EXECUTED, retval=retval, duration=time.monotonic() - began, lateness=late, **base)
                )
                self.persist(
                    f"job {job.id}: recording run {key}",
                    self.runs.finish_run,
                    RunEnd(job.id, key, "done", final, result=retval),
                )
        finally:
            events.emit_run_events(job.id, made, final and plan is None, finished_run=True)
        return RunRecord(job.id, queue, key, outcome, plan)

    def failed(
        self,
        job: Job,
        key: str,
        final: bool,
        text: str,
        exc: BaseException,
        base: dict[str, Any],
        events: list[Event],
        stop: str | None = None,
    ) -> RetryPlan | None:
        """Record a failed run, and its retry if the job has one left (the
        retry is stored by the executor once the run has left the pool).
        A run asked to stop (*stop*: ``stopped``, ``timed-out``) is recorded
        so; a stopped one (its job canceled) tells no event of its own: the
        job's CANCELED follows it."""
        record = self.persist(f"job {job.id}: reading its record", self.ledger.get_job, job.id)
        attempt = int(record.get("attempt") or 1) if record else 1
        plan = plan_retry(record, self.clock.now()) if final and stop != "stopped" else None
        live = self.persist(
            f"job {job.id}: recording failed run {key}",
            self.runs.finish_run,
            RunEnd(job.id, key, stop or "failed", final, error=text, retry_at=plan.at.timestamp() if plan else None),
        )
        if plan is not None and not live:
            plan = None  # canceled while it ran: no retry
        if stop == "stopped":
            return None
        events.append(
            Event(Event.JOB_ERROR, exception=exc, traceback=text, attempt=attempt, will_retry=plan is not None, **base)
        )
        if plan is not None:
            log.warning(
                "job %s (queue %s): attempt %d of %d failed; retrying in %gs",
                job.id,
                queue_of(job),
                attempt,
                plan.retries + 1,
                plan.delay,
            )
            events.append(Event(Event.JOB_RETRY, attempt=attempt + 1, retry_at=plan.at, delay=plan.delay, **base))
        return plan

    def record_skipped(self, job: Job, run_time: datetime) -> list[RunRecord]:
        """Record the runs the catch-up plan skipped before *run_time* (see
        :mod:`pyramid_scheduler.daemon.catchup`) as missed, each with its event."""
        skipped = getattr(run_time, "skipped", ())
        if skipped and not self.lease_valid():
            log.error(
                "job %s: %d skipped run(s) before %s not recorded: this daemon's heartbeat on queue %s has lapsed",
                job.id,
                len(skipped),
                run_time,
                queue_of(job),
            )
            return []
        return [self.record_missed(job.id, queue_of(job), job_info(job), missed, final=False) for missed in skipped]

    def max_instances_reached(self, job_id: str, queue: str, job: Job | None, run_times: list[datetime]) -> None:
        """Record as missed the runs of a job not submitted because a batch of
        it was still in the pool (APScheduler's MAX_INSTANCES event); *job*
        is the job as stored after them, None if these were its last runs."""
        info = job_info(job) if job else None
        for index, run_time in enumerate(run_times):
            final = job is None and index == len(run_times) - 1
            for missed in getattr(run_time, "skipped", ()):
                self.record_missed(job_id, queue, info, missed, final=False)
            reason = "the previous run was still running (max_instances reached)"
            self.record_missed(job_id, queue, info, Missed(run_time, reason), final, removed=False)
            if final:
                self.events.job_ended(job_id, queue, info)

    def record_missed(
        self, job_id: str, queue: str, info: dict[str, Any] | None, missed: Missed, final: bool, removed: bool = True
    ) -> RunRecord:
        """A JOB_MISSED event, a log line and a ``missed`` runs row (keyed by
        the first fire time it stands for) for fire times that were not run.

        *final*: the job has no run after these (its status becomes
        ``missed``); then REMOVED follows unless *removed* is false (the
        caller emits it after a run still going)."""
        key = run_key(job_id, missed.first)
        extra: dict[str, Any] = {}
        if missed.count != 1:
            extra = {"missed_count": missed.count, "missed_until": missed.last}
        log.warning("job %s (queue %s): run %s missed: %s", job_id, queue, key, missed.reason)
        self.persist(
            f"job {job_id}: recording missed run {key}",
            self.ledger.finish_run,
            RunEnd(
                job_id,
                key,
                "missed",
                final,
                error=missed.reason,
                scheduled_at=missed.first.timestamp(),
                queue=queue,
                owner=self.owner,
            ),
        )
        self.events.emit_run_events(
            job_id,
            [
                Event(
                    Event.JOB_MISSED,
                    job_id=job_id,
                    queue=queue,
                    job=info,
                    run_key=key,
                    scheduled_run_time=plain(missed.first),
                    reason=missed.reason,
                    **extra,
                )
            ],
            final and removed,
        )
        return RunRecord(job_id, queue, key, "missed")

    def call(self, job: Job, request: Any = None) -> Any:
        args, kwargs = list(job.args), dict(job.kwargs)
        if request is not None:
            args, kwargs = with_request(job.func, args, kwargs, request, stored=True)
        if self.delegator is not None:
            return self.delegator(job.func, args, kwargs)
        return job.func(*args, **kwargs)

    @contextlib.contextmanager
    def context(self, job: Job | None = None) -> Iterator[Any]:
        """The application's registry as current, and a transaction if
        available; yields the request built for a function that takes one
        (else ``None``)."""
        if job is not None and takes_request(job.func):
            with request_context(self.registry) as request:
                yield request
            return
        with job_context(self.registry):
            yield None


def run_span(job: Job, queue: str, key: str) -> contextlib.AbstractContextManager[Any]:
    """The run's span (:mod:`pyramid_scheduler.tracing`); nothing without OpenTelemetry."""
    if tracing.ENABLED and tracing.configured():
        return tracing.run_span(job.id, queue, key, job.func_ref)
    return contextlib.nullcontext()
