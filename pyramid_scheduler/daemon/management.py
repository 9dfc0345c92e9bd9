"""Management: cancel, pause, resume, reschedule and run-now requests, and messages.

Between the consumer (:mod:`.consumer`) and the stored jobs. Each request
changes a stored job with APScheduler's own calls, then the job's ledger
record, then emits its event (:mod:`.job_events`); what cannot be done is
logged and reported as JOB_REQUEST_REFUSED, never dropped silently. A
``message`` request is logged and told as a MESSAGE event; two texts are
commands to the daemon: ``restore-parked`` and ``print-jobs``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apscheduler.job import Job
from apscheduler.jobstores.base import JobLookupError

from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon.aps import queue_of
from pyramid_scheduler.daemon.clock import SYSTEM_CLOCK, Clock
from pyramid_scheduler.daemon.job_events import JobEvents, job_info
from pyramid_scheduler.daemon.persist import Persist
from pyramid_scheduler.daemon.scheduling import DueScheduler
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.settings import SchedulerSettings
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.tables import LIVE
from pyramid_scheduler.triggers.build import build_trigger, next_fire_time
from pyramid_scheduler.wire.messages import JobRequest

log = get_logger(__name__)


@dataclass(kw_only=True, eq=False)
class Management:
    """Carries out the requests that change stored jobs, and messages.

    :param restore_parked: schedules the parked jobs that load again (the
        ``restore-parked`` message; :meth:`.Recovery.restore_parked`).
    """

    settings: SchedulerSettings
    scheduler: DueScheduler
    ledger: Ledger
    events: JobEvents
    persist: Persist
    restore_parked: Callable[[], int]
    #: Where "now" is read (a new schedule's first fire time, run now, resume).
    clock: Clock = SYSTEM_CLOCK
    #: Asks the runs of a job going in this daemon to stop
    #: (:meth:`.control.Controls.cancel`); the others read it from the store.
    stop_runs: Callable[[str], None] = lambda job_id: None

    def cancel(self, request: JobRequest) -> str:
        """Remove a job and close its record; a run going is asked to stop
        (:mod:`.control`); CANCELED after it."""
        job_id, queue = request.id, request.queue
        info = None
        try:
            job = self.scheduler.get_job(job_id, jobstore=queue)
            if job is not None:
                info = job_info(job)
            self.scheduler.remove_job(job_id, jobstore=queue)
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
        self.stop_runs(job_id)
        self.events.canceled(job_id, queue, info)
        return "canceled"

    def manage(self, request: JobRequest) -> str:
        """Reschedule, pause, resume or run now a stored job."""
        job_id, queue, op = request.id, request.queue, request.op
        job = self.scheduler.get_job(job_id, jobstore=queue)
        if job is None:
            return self._refuse(request, "no such live job on this queue (finished, canceled, parked or never added)")
        paused = job.next_run_time is None
        info = job_info(job)
        if op == "reschedule":
            assert request.trigger is not None
            trigger = build_trigger(request.trigger, self.settings.timezone, anchor=request.accepted_at())
            first = next_fire_time(trigger, self.clock.now())
            if first is None:
                return self._refuse(request, "the new schedule never fires")
            # APScheduler's reschedule_job, with the first fire time on this clock.
            moved = {} if paused else {"next_run_time": first}
            self.scheduler.modify_job(job_id, jobstore=queue, trigger=trigger, **moved)
            self._write_record(
                f"job {job_id}: recording its new trigger", self.ledger.set_trigger, job_id, queue, request.trigger
            )
            log.info("job %s (queue %s): rescheduled, next run %s", job_id, queue, "none (paused)" if paused else first)
            self.events.emit(
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
            self.scheduler.pause_job(job_id, jobstore=queue)
            self._write_record(
                f"job {job_id}: recording the pause",
                self.ledger.set_status,
                job_id,
                queue,
                "paused",
                ("scheduled", "running", "waiting"),
            )
            log.info("job %s (queue %s): paused", job_id, queue)
            self.events.emit(Event(Event.JOB_PAUSED, job_id=job_id, queue=queue, job=info))
            return "paused"
        if op == "resume":
            if not paused:
                return self._refuse(request, "the job is not paused")
            return self._resume(job, queue, info)
        if paused:
            return self._refuse(request, "the job is paused; resume it first")
        # Due now: APScheduler runs it with the usual run events, then
        # computes its next run from the trigger.
        self.scheduler.modify_job(job_id, jobstore=queue, next_run_time=self.clock.now())
        log.info("job %s (queue %s): run now", job_id, queue)
        return "run-now"

    def _resume(self, job: Job, queue: str, info: dict[str, Any]) -> str:
        first = next_fire_time(job.trigger, self.clock.now())
        if first is None:
            # APScheduler's resume_job would delete it without a word.
            reason = "its schedule ended while it was paused"
            self.scheduler.remove_job(job.id, jobstore=queue)
            self._write_record(
                f"job {job.id}: closing it", self.ledger.set_status, job.id, queue, "missed", ("paused",), reason
            )
            log.warning("job %s (queue %s): resumed, but %s; removed", job.id, queue, reason)
            self.events.job_ended(job.id, queue, info)
            return "resumed-ended"
        self.scheduler.modify_job(
            job.id, jobstore=queue, next_run_time=first
        )  # APScheduler's resume_job, on this clock
        self._write_record(
            f"job {job.id}: recording the resume", self.ledger.set_status, job.id, queue, "scheduled", ("paused",)
        )
        log.info("job %s (queue %s): resumed, next run %s", job.id, queue, first)
        self.events.emit(Event(Event.JOB_RESUMED, job_id=job.id, queue=queue, job=info, next_run_time=first))
        return "resumed"

    def _write_record(self, what: str, func: Callable[..., Any], *args: Any) -> None:
        if not self.settings.memory_store:
            self.persist(what, func, *args)

    def _refuse(self, request: JobRequest, reason: str) -> str:
        log.warning("job %s (queue %s): %s refused: %s", request.id, request.queue, request.op, reason)
        self.events.emit(
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

    def message(self, request: JobRequest) -> str:
        """Log a message request and tell it as MESSAGE; ``restore-parked``
        and ``print-jobs`` are carried out first."""
        text = request.text or ""
        log.info("message on queue %s: %s", request.queue, text)
        if text == "restore-parked":
            self.restore_parked()
        if text == "print-jobs":
            for job in self.scheduler.get_jobs():
                log.info("  job %s (queue %s) %s next run %s", job.id, queue_of(job), job.func_ref, job.next_run_time)
        self.events.emit(Event(Event.MESSAGE, message=text, queue=request.queue))
        return "message"
