"""Management: what ``registry.scheduler`` asks the daemon to do with a stored job.

Between the job records (:mod:`pyramid_scheduler.web.records`), which say
where a job is and whether it can still be managed, and the publish step of
:class:`~pyramid_scheduler.web.proxy.SchedulerProxy`: each method here
checks its request against the job's record, then publishes one message;
the daemon does the work (:mod:`pyramid_scheduler.daemon.management`, or
intake for :meth:`JobManagement.retry_job`). Nothing here writes the job
store. ``pscheduler CONFIG-URI cancel|pause|resume|run|retry ID``
(:mod:`pyramid_scheduler.commands`) goes through these methods.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pyramid_scheduler.exceptions import InvalidJob, InvalidQueue
from pyramid_scheduler.settings import SchedulerSettings
from pyramid_scheduler.triggers.build import to_zone, trigger_spec
from pyramid_scheduler.triggers.forms import no_other_arguments, schedule_args, schedule_spec
from pyramid_scheduler.wire.messages import JobRequest, check_name, new_id

if TYPE_CHECKING:
    from pyramid_scheduler.store.ledger import Ledger

#: The statuses of the jobs :meth:`JobManagement.retry_job` runs again.
RETRYABLE = ("failed", "interrupted", "parked")


class JobManagement:
    """The managing half of :class:`~pyramid_scheduler.web.proxy.SchedulerProxy`."""

    settings: SchedulerSettings

    if TYPE_CHECKING:

        def now(self) -> datetime: ...
        def _ledger(self) -> Ledger: ...
        def _publish(self, request: JobRequest, immediate: bool = False, manager: Any = None) -> None: ...

    def reschedule_job(
        self, job_id: str, trigger: str | None = None, queue: str | None = None, **trigger_args: Any
    ) -> str:
        """Replace a job's schedule; it keeps its id, function, arguments and
        record. *trigger* is ``"date"``, ``"interval"`` or ``"cron"`` and
        *trigger_args* are the schedule arguments of the matching ``add_*_job``
        (``start_date``, ``end_date``, ``timezone``, ``jitter``, the interval
        or cron fields, ``crontab`` or ``cron``, ``weekdays``/``monthdays``/
        ``time_of_day``, ``date`` or a delay). *trigger* may be left out when
        the arguments say it: ``cron``/``crontab``/cron fields, ``date``/``delay``
        or ``weeks``. A paused job stays paused with its new schedule.

        With no schedule at all, ``reschedule_job(job_id)`` re-arms a date job
        made with a delay (``add_date_job(func, hours=1)``): it is due that
        delay from now again (a watchdog, or a debounce). The delay is the
        one the job's trigger spec keeps (``"delay"``, in seconds) from the
        ``add_date_job`` or ``reschedule_job`` call that gave it.

        The daemon emits ``JOB_RESCHEDULED``, or ``JOB_REQUEST_REFUSED`` when the
        job is gone by then. Without *queue*, the queue in the job's record
        (or, before the daemon stored the job, ``scheduler.default_queue``).

        :returns: the job id.
        :raises InvalidJob: a bad schedule, one that never fires, or a job
            whose record says it has finished; with no schedule, a job not
            made with a delay (or not stored yet).

        .. versionadded:: 1.0
        .. versionchanged:: 1.0 no schedule: the same delay again.
        """
        name = self._job_queue(job_id, queue)
        if trigger is None and not trigger_args:
            spec = self._same_delay(job_id)
        else:
            kind, args = schedule_args(trigger, trigger_args, self.settings.timezone, self.now())
            spec = schedule_spec(kind, trigger_args, args, self.settings.timezone, self.now())
            no_other_arguments(kind, trigger_args)
        self._publish(JobRequest(op="reschedule", id=job_id, queue=name, trigger=spec))
        return job_id

    def pause_job(self, job_id: str, queue: str | None = None) -> str:
        """Stop a job's runs until :meth:`resume_job` (a run in progress
        finishes). Its record's status becomes ``paused``; ``JOB_PAUSED``.

        .. versionadded:: 1.0
        """
        return self._manage("pause", job_id, queue)

    def resume_job(self, job_id: str, queue: str | None = None) -> str:
        """Resume a paused job from its next fire time after now (the runs
        it would have had while paused are not made up); ``JOB_RESUMED``.

        .. versionadded:: 1.0
        """
        return self._manage("resume", job_id, queue)

    def run_job_now(self, job_id: str, queue: str | None = None) -> str:
        """Run a scheduled job now, with the usual run events (``JOB_EXECUTED``
        or ``JOB_ERROR`` with this job id). APScheduler then computes its next
        run from this run: a cron job keeps its times, an interval job counts
        its interval from now, a date job is done. A paused job is refused
        (resume it first).

        .. versionadded:: 1.0
        """
        return self._manage("run_now", job_id, queue)

    def retry_job(self, job_id: str) -> str:
        """Run a ``failed`` or ``interrupted`` job again, or have the daemons
        try again to load a ``parked`` one.

        A failed or interrupted job is added again from the request in its
        record, with the same id, function, arguments and options: a one-off
        job (run-now or date) runs at once, a recurring one resumes its
        schedule. The new job replaces the finished one's record, run history
        included; its retries (the ``retries=`` option) start again from the
        first attempt. A parked job stays parked while its function cannot be
        loaded: this sends ``restore-parked`` to its queue, so its daemon tries
        now rather than at its next housekeeping.

        :returns: the job id.
        :raises InvalidJob: the job store has no record of the job, or its
            status is not one of ``failed``, ``interrupted`` or ``parked``.

        .. versionadded:: 1.0
        """
        check_name(job_id, "job_id")
        row = self._ledger().get_job(job_id)
        if row is None:
            raise InvalidJob(f"job_id: the job store has no record of job {job_id!r}")
        if row["status"] not in RETRYABLE:
            raise InvalidJob(
                f"job_id: job {job_id!r} is {row['status']}; only {', '.join(RETRYABLE)} jobs can be retried"
            )
        queue = str(row["queue"])
        if row["status"] == "parked":
            self._publish(JobRequest(op="message", id=new_id(), queue=queue, text="restore-parked"))
            return job_id
        request = json.loads(row["request"])
        trigger = request["trigger"]
        if trigger.get("type") in ("now", "date"):
            trigger = trigger_spec("now", self.settings.timezone, run_date=self.now())
        self._publish(
            JobRequest(
                op="add",
                id=job_id,
                queue=queue,
                func=request["func"],
                args=request.get("args") or [],
                kwargs=request.get("kwargs") or {},
                trigger=trigger,
                options=request.get("options") or {},
            )
        )
        return job_id

    def replay_dead_letter(self, letter_id: int, force: bool = False) -> str:
        """Publish a dead letter's message again, then forget the dead letter.

        For a message refused for a reason since put right (its function's
        module deployed or allowed, a queue served, a clock mended): it is
        checked here as ``add_*_job`` checks a job (its queue, its function
        imported, the arguments against its signature, its schedule), gets a
        new ``sent_at`` and this process's signature, and the daemons read it
        like any other; it keeps its message id, so a replay of a job that
        was stored after all is absorbed as a duplicate.

        A dead letter keeps a message whole only when it was JSON of at most
        ``scheduler.max_message_size`` bytes that the door let through; others
        cannot be replayed. One that did not carry a valid signature of the
        daemon's ``scheduler.secret`` may not come from your application, and
        is only replayed with *force*.

        :returns: the id of the replayed message's job.
        :raises LookupError: no such dead letter.
        :raises InvalidJob: it cannot be replayed, or still fails a check (the
            message says which).

        .. versionadded:: 1.0
        """
        from dataclasses import replace

        from pyramid_scheduler.exceptions import InvalidMessage
        from pyramid_scheduler.wire.messages import decode

        ledger = self._ledger()
        letter = ledger.get_dead_letter(letter_id)
        if letter is None:
            raise LookupError(f"dead letter {letter_id}: no such dead letter")
        what = f"dead letter {letter_id}"
        text = letter.get("message")
        if text is None:
            if (letter.get("size") or 0) > len(str(letter.get("body") or "").encode("utf-8", "surrogatepass")):
                why = f"only the first bytes of its {letter['size']}-byte body were kept"
            else:
                why = "the daemon refused it before reading it as a message"
            raise InvalidJob(f"{what} cannot be replayed: {why} (refused for: {letter['reason']})")
        if letter.get("signed") is False and not force:
            raise InvalidJob(
                f"{what} did not carry a valid signature of scheduler.secret when it arrived, so it may "
                f"not come from your application (refused for: {letter['reason']}); replay it with "
                "force only if you know where it came from"
            )
        try:
            request = decode(text)
        except InvalidMessage as exc:
            raise InvalidJob(f"{what} is still not a valid message: {exc}") from None
        self._check_replay(request, what)
        self._publish(replace(request, sent_at=self.now().isoformat()), immediate=True)
        ledger.delete_dead_letter(letter_id)
        return request.id

    def _check_replay(self, request: JobRequest, what: str) -> None:
        """Check a replayed *request* as ``add_*_job`` checks a job."""
        from pyramid_scheduler.triggers.build import build_trigger
        from pyramid_scheduler.wire.refs import check_arguments, check_ref

        if request.queue not in self.settings.queues:
            raise InvalidJob(
                f"{what}: its queue {request.queue!r} is not one of scheduler.queues {self.settings.queues}"
            )
        try:
            if request.op == "add":
                check_arguments(
                    check_ref(request.func, self.settings.allowed_modules),
                    request.args,
                    request.kwargs,
                    str(request.func),
                    self.settings,
                )
            if request.trigger is not None:
                build_trigger(request.trigger, self.settings.timezone)
        except (InvalidJob, ValueError, TypeError, LookupError) as exc:
            raise InvalidJob(f"{what}: {exc}") from None

    def _same_delay(self, job_id: str) -> dict[str, Any]:
        """The trigger spec of a date job due its own delay from now."""
        row = None if self.settings.memory_store else self._ledger().get_job(job_id)
        spec = None if row is None else json.loads(row["request"]).get("trigger")
        if not spec or spec.get("type") != "date" or spec.get("delay") is None:
            raise InvalidJob(
                f"job_id: job {job_id!r} is not a stored date job made with a delay; give its new schedule "
                "(reschedule_job(job_id, hours=1))"
            )
        when = self.now() + timedelta(seconds=float(spec["delay"]))
        return {**spec, "run_date": when.astimezone(to_zone(spec.get("timezone") or "UTC")).isoformat()}

    def _job_queue(self, job_id: str, queue: str | None) -> str:
        """The queue of a job to manage: checked against its record when the
        job store has one (a finished job is refused at once)."""
        from pyramid_scheduler.store.tables import LIVE

        check_name(job_id, "job_id")
        if queue is not None and queue not in self.settings.queues:
            raise InvalidQueue(queue, self.settings.queues)
        row = None if self.settings.memory_store else self._ledger().get_job(job_id)
        if row is None:
            # Not stored yet (its add may still be on its way): where add_*_job sent it.
            return queue or self.settings.default_queue
        if queue is not None and row["queue"] != queue:
            raise InvalidJob(f"queue: job {job_id!r} is on queue {row['queue']!r}, not {queue!r}")
        if row["status"] not in LIVE:
            raise InvalidJob(
                f"job_id: job {job_id!r} is {row['status']}; "
                "only scheduled, running, paused or waiting jobs can be managed"
            )
        return str(row["queue"])

    def _manage(self, op: str, job_id: str, queue: str | None) -> str:
        self._publish(JobRequest(op=op, id=job_id, queue=self._job_queue(job_id, queue)))
        return job_id
