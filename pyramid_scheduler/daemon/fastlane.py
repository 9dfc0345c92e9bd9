"""Fast lane: run-now jobs that skip record-first (``durable=False``).

Between intake (:mod:`.intake`), which checks their ``add`` requests as it
checks every other, and execution (:mod:`.execution`). Such a job is not
stored before its message is acked: intake builds it and answers
:class:`Accepted`; the consumer (:mod:`.consumer`) acks the message, and once
the broker has the ack, hands the job to the worker pool
(:meth:`Accepted.hand`). While the pool has no room (:attr:`FastLane.room`
batches waiting or running) the consumer waits, taking no more messages: the
job is never stored due, which would be record-first again, and the jobs
acked and not yet started are at most a batch (``scheduler.broker.prefetch``)
beyond the pool's room. CREATED is emitted at the hand-over; the run
(:func:`run_unrecorded`, on a worker thread) is recorded after it, the job's
record and the run's in one write through the group commit
(:class:`~pyramid_scheduler.store.records.RunAfter`), before its EXECUTED,
ERROR or MISSED and its REMOVED. At most once: a daemon that dies between the
ack and that write loses the job, without a record (see the fast lane in
docs/guarantees.rst).
"""

from __future__ import annotations

import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from apscheduler.executors.base import MaxInstancesReachedError
from apscheduler.schedulers.base import BaseScheduler

from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon.aps import build_job, queue_of, runs_in_pool
from pyramid_scheduler.daemon.execution import JobExecutor, RecordedAfter, Runner, RunRecord, run_key, run_span
from pyramid_scheduler.daemon.job_events import JobEvents, job_info
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.records import RunAfter
from pyramid_scheduler.wire.messages import JobRequest

log = get_logger(__name__)

#: Message ids of the jobs last accepted, kept to absorb a redelivery to
#: this daemon (an ack lost with the connection) before it runs again.
RECENT = 10_000


class FastJob(RecordedAfter):
    """A run-now job that skipped record-first: its wire request, for its
    record, and when it was handed to the pool (epoch seconds)."""

    __slots__ = ("request", "accepted_at")

    def run_by(self, runner: Runner, run_time: datetime) -> RunRecord:
        return run_unrecorded(runner, self, run_time)


class Accepted(str):
    """Intake's answer for a ``durable=False`` job: nothing is stored. Ack
    its message, then :meth:`hand` the job to the worker pool; or, if the
    ack may not have reached the broker, :meth:`drop` it (not run here, so
    that its message, if it comes back, runs)."""

    hand: Callable[..., str]
    drop: Callable[[], None]
    job_id: str

    def __new__(cls, hand: Callable[..., str], drop: Callable[[], None], job_id: str) -> Accepted:
        accepted = super().__new__(cls, "accepted")
        accepted.hand, accepted.drop, accepted.job_id = hand, drop, job_id
        return accepted


@dataclass(kw_only=True, eq=False)
class FastLane:
    """Builds the jobs of ``durable=False`` requests and hands them to *executor*.

    :param room: batches waiting or running in the pool below which a job
        acked by the consumer is handed over (else the consumer waits).
    """

    scheduler: BaseScheduler
    executor: JobExecutor
    events: JobEvents
    #: Where the records' times are read (the job's acceptance).
    ledger: Ledger
    room: int
    _recent: OrderedDict[str, None] = field(default_factory=OrderedDict, init=False, repr=False)

    def accept(self, request: JobRequest, state: dict[str, Any], first: datetime) -> str:
        """The job of *request*, built from *state* (as the job store would
        load it) to run at *first*, ready to be handed over
        (:class:`Accepted`); ``"duplicate"`` if a run of its id is in the
        pool, or its message was accepted here before."""
        if request.mid in self._recent or runs_in_pool(self.executor, request.id):
            log.info(
                "job %s (queue %s): durable=False job already taken here; duplicate message %s absorbed",
                request.id,
                request.queue,
                request.mid,
            )
            return "duplicate"
        self._recent[request.mid] = None
        if len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        job = build_job(self.scheduler, request.queue, state, FastJob)
        assert isinstance(job, FastJob)
        job.request = request.to_wire()
        return Accepted(partial(self.hand, job, first), partial(self._recent.pop, request.mid, None), request.id)

    def hand(self, job: FastJob, first: datetime, stopping: Callable[[], bool] | None = None) -> str:
        """CREATED for *job*, then its run to the pool. With *stopping*
        (the consumer's), first wait for room in the pool unless it is true
        (stopping: the job is handed over anyway, and the service's stop
        waits for it as for the runs already there)."""
        if stopping is not None:
            runner = self.executor.runner
            while not runner.wait_below(self.room, 1.0) and not stopping():
                pass
        job.accepted_at = self.ledger.now()
        queue = queue_of(job)
        log.info("job %s (queue %s): handed to the workers, not stored (durable=False)", job.id, queue)
        self.events.emit(Event(Event.JOB_CREATED, job_id=job.id, queue=queue, job=job_info(job)))
        try:
            self.executor.submit_job(job, [first])
        except MaxInstancesReachedError:  # a job of this id was handed to the pool meanwhile
            reason = "a run of a job with this id was still going (durable=False: not stored to run later)"
            log.error("job %s (queue %s): not run: %s", job.id, queue, reason)
            info = {"job_id": job.id, "queue": queue, "job": job_info(job), "scheduled_run_time": first}
            self.events.emit_run_events(job.id, [Event(Event.JOB_MISSED, reason=reason, **info)], final=True)
            return "not-run"
        return "handed"


def run_unrecorded(runner: Runner, job: FastJob, run_time: datetime) -> RunRecord:
    """Carry out the run of a ``durable=False`` job on a worker thread, as
    :meth:`.Runner.run_one` carries out a stored job's, then record it and
    emit its events: the job's record and its run's written in one (through
    the group commit, retried while the job store is down), then EXECUTED,
    ERROR or MISSED (past its misfire grace time, not called), and REMOVED."""
    events = runner.events
    queue = queue_of(job)
    key = run_key(job.id, run_time)
    base = {"job_id": job.id, "queue": queue, "job": job_info(job), "run_key": key, "scheduled_run_time": run_time}
    started = runner.ledger.now()
    late = (runner.clock.now() - run_time).total_seconds()
    grace = job.misfire_grace_time
    made: list[Event] = []
    result: Any = None
    error: str | None = None
    outcome = "done"
    events.run_started(job.id)
    try:
        if grace is not None and late > grace:
            outcome, error = "missed", f"{late:.3f}s late, past its misfire grace time of {grace}s"
            log.warning("job %s (queue %s): run %s missed: %s", job.id, queue, key, error)
            made.append(Event(Event.JOB_MISSED, reason=error, **base))
        else:
            log.info("job %s (queue %s): running %s, run %s (durable=False)", job.id, queue, job.func_ref, key)
            began = time.monotonic()
            try:
                with run_span(job, queue, key), runner.context(job) as request:
                    result = runner.call(job, request)
            except BaseException as exc:  # noqa: BLE001 - a job's sys.exit() must not end the daemon
                outcome, error = "failed", "".join(traceback.format_exception(exc))
                log.error("job %s (queue %s): run %s failed\n%s", job.id, queue, key, error)
                base.update(duration=time.monotonic() - began, lateness=late)
                made.append(Event(Event.JOB_ERROR, exception=exc, traceback=error, attempt=1, will_retry=False, **base))
            else:
                log.info("job %s (queue %s): run %s done", job.id, queue, key)
                base.update(duration=time.monotonic() - began, lateness=late)
                made.append(Event(Event.JOB_EXECUTED, retval=result, **base))
        after = RunAfter(
            job.request,
            key,
            run_time.timestamp(),
            job.accepted_at,
            started,
            runner.owner,
            outcome,
            result=result,
            error=error,
        )
        written = runner.persist(f"job {job.id}: recording it after run {key}", runner.runs.record_after, after)
        if not written:
            log.error(
                "job %s (queue %s): run %s %s, but is not recorded: %s",
                job.id,
                queue,
                key,
                outcome,
                "the job store is unavailable and the daemon is stopping"
                if written is None
                else "a live job has this id, or this very message was recorded before (its ack was lost)",
            )
    finally:
        events.emit_run_events(job.id, made, True, finished_run=True)
    return RunRecord(job.id, queue, key, outcome)
