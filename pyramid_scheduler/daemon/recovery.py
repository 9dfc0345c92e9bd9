"""Recovery: what a dead daemon left unfinished, settled.

The daemon holding the queues' lease (:meth:`.Engine.start`, then at each
heartbeat) calls :meth:`Recovery.recover` when it takes the lease (for every
daemon not alive) and whenever it finds another daemon dead (for that one):

1. settles the rows the dead daemon's scheduler thread had not written
   yet (:mod:`.scheduling`): a job stored due at a run the ledger already
   has is moved past it, or removed if that was its last;
2. reports the runs it left ``started`` as interrupted (JOB_INTERRUPTED),
   running a one-off job once more (``scheduler.interrupted = rerun``) or
   spending one of its retries (:mod:`.retries`);
3. gives back the concurrency slots the dead daemons held
   (:meth:`pyramid_scheduler.store.slots.Slots.free_dead`), so that runs
   waiting for them (:mod:`.limits`) start;
4. schedules again the jobs that were due and submitted but never started,
   and the retries whose due time is only in the ledger
   (:meth:`pyramid_scheduler.store.ledger.Ledger.orphans`); one that cannot be is parked.

:meth:`Recovery.restore_parked` (at start, at housekeeping and on the
``restore-parked`` message) schedules again the parked jobs that load now.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon.aps import move_job
from pyramid_scheduler.daemon.clock import SYSTEM_CLOCK, Clock
from pyramid_scheduler.daemon.execution import run_key
from pyramid_scheduler.daemon.intake import Intake
from pyramid_scheduler.daemon.job_events import JobEvents, job_info, request_info
from pyramid_scheduler.daemon.retries import plan_retry
from pyramid_scheduler.daemon.scheduling import DueScheduler
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.settings import SchedulerSettings
from pyramid_scheduler.store.jobstores import QueueJobStore
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.memory import MemoryQueueStore
from pyramid_scheduler.store.records import RunEnd
from pyramid_scheduler.store.slots import Slots
from pyramid_scheduler.wire.messages import decode

log = get_logger(__name__)

#: Rounds of :meth:`Recovery.settle`: each moves every job stored due at a
#: recorded run one run on.
SETTLE_ROUNDS = 100


@dataclass(kw_only=True, eq=False)
class Recovery:
    """Settles what the previous daemon of these queues left (see the module)."""

    settings: SchedulerSettings
    scheduler: DueScheduler
    stores: Mapping[str, QueueJobStore | MemoryQueueStore]
    ledger: Ledger
    owner: str
    queues: tuple[str, ...]
    intake: Intake
    events: JobEvents
    #: Where "now" is read (a retry's due time, the due jobs to settle).
    clock: Clock = SYSTEM_CLOCK

    def recover(self, live: set[str] | None = None) -> None:
        """Settle, report interrupted runs, schedule orphans (see the module):
        of the daemons not in *live* (default: every other one)."""
        live = {self.owner} if live is None else live | {self.owner}
        for queue, store in self.stores.items():
            if isinstance(store, QueueJobStore):
                self.settle(queue, store)
        freed = Slots(self.ledger).free_dead(live)
        if freed:
            log.warning("%d concurrency slot(s) held by dead daemons given back", freed)
        for run in self.ledger.recover(self.queues, live):
            self._interrupted(run)
        for queue, store in self.stores.items():
            if isinstance(store, QueueJobStore):
                self._orphans(queue, store, live)

    def _interrupted(self, run: dict[str, Any]) -> None:
        job_id, queue, key = run["job_id"], run["queue"], run["run_key"]
        request = json.loads(run["request"])
        scheduled = datetime.fromtimestamp(run["scheduled_at"], timezone.utc)
        job = self.scheduler.get_job(job_id, jobstore=queue)
        # The crash may have come before APScheduler moved the job past
        # this run: then the job is still stored with the run due again.
        final = job is None or job.trigger.get_next_fire_time(scheduled, scheduled) is None
        if job is not None and final:
            self.scheduler.remove_job(job_id, jobstore=queue)
        reason = f"the daemon running it ({run['owner']}) stopped before the run finished"
        log.warning("job %s (queue %s): run %s interrupted: %s", job_id, queue, key, reason)
        rerun = final and self.settings.interrupted == "rerun" and not self.ledger.was_interrupted(job_id)
        if rerun:
            reason += "; running it once more (scheduler.interrupted = rerun)"
        # A job with retries left spends one on a run a crash cut.
        plan = plan_retry(self.ledger.get_job(job_id), self.clock.now()) if final and not rerun else None
        if plan is not None:
            reason += f"; retrying it in {plan.delay:g}s (attempt {plan.attempt + 1} of {plan.retries + 1})"
        self.ledger.finish_run(
            RunEnd(
                job_id,
                key,
                "interrupted",
                final and not rerun,
                error=reason,
                retry_at=plan.at.timestamp() if plan else None,
            )
        )
        info = request_info(request)
        base = {"job_id": job_id, "queue": queue, "job": info, "run_key": key, "scheduled_run_time": scheduled}
        events = [Event(Event.JOB_INTERRUPTED, reason=reason, will_retry=rerun or plan is not None, **base)]
        if plan is not None:
            events.append(Event(Event.JOB_RETRY, attempt=plan.attempt + 1, retry_at=plan.at, delay=plan.delay, **base))
        self.events.emit_run_events(job_id, events, final and not rerun and plan is None)
        if rerun or plan is not None:
            # A one-off job again: a new run time gives the re-run its own run_key.
            when = plan.at if plan is not None else self.clock.now()
            kind = request["trigger"]["type"] if plan is not None else "now"
            again = dict(request, trigger={"type": kind, "timezone": "UTC", "run_date": when.isoformat()})
            self.intake.add(decode(again), recovering=True)

    def _orphans(self, queue: str, store: QueueJobStore, live: set[str]) -> None:
        for orphan in self.ledger.orphans(queue, store.jobs_t, live):
            request = json.loads(orphan["request"])
            log.warning("job %s (queue %s): was due but never started; scheduling it again", orphan["id"], queue)
            try:
                self.intake.add(decode(request), recovering=True)
            except Exception as exc:  # noqa: BLE001 - park it, go on with the others
                reason = f"cannot be scheduled again: {exc}"
                if self.ledger.set_status(orphan["id"], queue, "parked", error=reason):
                    log.error("job %s (queue %s) parked: %s", orphan["id"], queue, reason)
                    self.events.parked(orphan["id"], queue, reason, request)

    def settle(self, queue: str, store: QueueJobStore) -> None:
        """Write what a previous daemon left of the scheduler thread's deferred
        rows (:mod:`pyramid_scheduler.daemon.scheduling`): a job stored due at a run the
        ledger already has is moved past it, or removed if that was its last,
        so the run is neither run nor recorded missed again."""
        for _ in range(SETTLE_ROUNDS):
            due = store.due_unheld(self.clock.now())
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
                    move_job(job, following)
                    store.update_job(job)

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
                self.events.emit(
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
                    self.intake.add(decode(request), recovering=True)
                except Exception as exc:  # noqa: BLE001 - still cannot be scheduled: stays parked
                    log.warning("job %s (queue %s) still parked: %s", row["id"], queue, exc)
                    continue
                self.ledger.set_status(row["id"], queue, "scheduled", only_from=("parked",))
                restored = self.scheduler.get_job(row["id"], jobstore=queue)
                self.events.emit(
                    Event(
                        Event.JOB_RESTORED,
                        job_id=row["id"],
                        queue=queue,
                        job=job_info(restored) if restored else request_info(request),
                        next_run_time=restored.next_run_time if restored else None,
                    )
                )
                count += 1
            count += len(jobs)
        if count:
            self.scheduler.wakeup()
        return count
