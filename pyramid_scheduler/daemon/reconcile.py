"""Reconcile: the jobs declared in the application's code, applied at the daemon's start.

Web processes only record declarations (:mod:`pyramid_scheduler.web.declare`:
``config.add_scheduled_job`` and ``@scheduled_job``). The process that runs
the jobs loads the same application, so it has the same declarations, and
:class:`Reconcile` applies them when its engine starts, before anything runs:
a new declaration is stored (JOB_CREATED), an unchanged one is left alone, a
changed one replaces the stored job in place, and a stored declared job whose
declaration is gone is removed (JOB_REMOVED). A declaration is recognised by
the message id of its stored request,
:data:`~pyramid_scheduler.web.declare.DECLARED` plus a digest of the
declaration.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from apscheduler.jobstores.base import JobLookupError

from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon.intake import Intake
from pyramid_scheduler.daemon.job_events import JobEvents, request_info
from pyramid_scheduler.daemon.scheduling import DueScheduler
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.settings import SchedulerSettings
from pyramid_scheduler.store.ledger import JobRow, Ledger
from pyramid_scheduler.store.tables import LIVE
from pyramid_scheduler.web.declare import DECLARED, DECLARED_NOW
from pyramid_scheduler.wire.messages import JobRequest

log = get_logger(__name__)


@dataclass(kw_only=True, eq=False)
class Reconcile:
    """Applies declarations to the stored jobs of *queues*."""

    settings: SchedulerSettings
    queues: tuple[str, ...]
    scheduler: DueScheduler
    ledger: Ledger
    intake: Intake
    events: JobEvents

    def __call__(self, declarations: Mapping[str, JobRequest]) -> None:
        """Apply *declarations* (by job id) to the queues this daemon runs."""
        declared = {job_id: request for job_id, request in declarations.items() if request.queue in self.queues}
        if self.settings.memory_store:
            for request in declared.values():
                self.intake.add(request)
                self._start_now(request)
            return
        rows = {row.id: row for row in self.ledger.declared(list(declared), DECLARED, self.queues)}
        for job_id, request in declared.items():
            try:
                self._apply(request, rows.get(job_id))
            except Exception:  # noqa: BLE001 - one bad declaration must not stop the daemon
                log.exception("job %s (queue %s): declared, but could not be stored", job_id, request.queue)
        for job_id, row in rows.items():
            if job_id in declared or not row.mid.startswith(DECLARED):
                continue
            if row.status in LIVE or row.status == "parked":
                self._remove(row, "its declaration is gone from the application's code")

    def _apply(self, request: JobRequest, row: JobRow | None) -> None:
        if row is not None and row.mid == request.mid:
            return  # the same declaration: leave the job (and its schedule) alone
        if self._store(request, row):
            self._start_now(request)

    def _start_now(self, request: JobRequest) -> None:
        """``start_now=True``: the just stored job's first run is due now (a
        millisecond back, so that it is due at the time the daemon started
        by), then its schedule goes on from there."""
        if request.mid.startswith(DECLARED_NOW):
            first = self.intake.clock.now() - timedelta(milliseconds=1)
            self.scheduler.modify_job(request.id, jobstore=request.queue, next_run_time=first)

    def _store(self, request: JobRequest, row: JobRow | None) -> bool:
        """Store a new or changed declaration; False if it cannot be yet."""
        job_id = request.id
        if row is not None and (row.status in LIVE or row.status == "parked"):
            if row.queue == request.queue:
                self.intake.add(request, recovering=True)
                self.ledger.redeclare(request.to_wire())
                log.info("job %s (queue %s): declaration changed; stored job updated", job_id, request.queue)
                return True
            if row.queue not in self.queues:
                log.warning(
                    "job %s: declared on queue %s but still stored on queue %s, which this daemon "
                    "does not run; it moves once queue %s's daemon has started (and removed it) "
                    "and this one starts again",
                    job_id,
                    request.queue,
                    row.queue,
                    row.queue,
                )
                return False
            self._remove(row, f"it is now declared on queue {request.queue}")
        log.info("job %s (queue %s): declared; storing it", job_id, request.queue)
        self.intake.add(request)
        return True

    def _remove(self, row: JobRow, reason: str) -> None:
        try:
            self.scheduler.remove_job(row.id, jobstore=row.queue)
        except JobLookupError:
            pass
        if self.ledger.set_status(row.id, row.queue, "canceled", only_from=(*LIVE, "parked"), error=reason):
            log.info("job %s (queue %s): removed: %s", row.id, row.queue, reason)
            self.events.emit(
                Event(
                    Event.JOB_REMOVED,
                    job_id=row.id,
                    queue=row.queue,
                    reason=reason,
                    job=request_info(json.loads(row.request)),
                )
            )
