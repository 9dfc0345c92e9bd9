"""Job events: what the daemon's job events carry, and their order per job.

Between the parts of the daemon that change jobs (:mod:`.intake`,
:mod:`.management`, :mod:`.recovery`, :mod:`.reconcile`) or run them
(:mod:`.execution`) and the dispatcher thread of
:mod:`pyramid_scheduler.events`, which delivers every event in the order it
is handed over. :class:`JobEvents` keeps each job's events in the order its
life went, whatever thread made them: CREATED when stored (the job store calls
:meth:`JobEvents.created` after its commit and before the scheduler can run
the job), each run's EXECUTED, ERROR, MISSED or INTERRUPTED (and RETRY), then
REMOVED after its last run or CANCELED. A CANCELED or REMOVED that comes while
a run of the job is going waits for that run's own events, and a run canceled
meanwhile ends with CANCELED, not REMOVED.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from typing import Any

from apscheduler.job import Job

from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon.aps import queue_of
from pyramid_scheduler.events import EventDispatcher
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.wire.refs import without_request

log = get_logger(__name__)


def job_info(job: Job) -> dict[str, Any]:
    """The ``job`` dict events carry, from a loaded job."""
    args, kwargs = without_request(job.func, list(job.args), dict(job.kwargs))
    return {
        "id": job.id,
        "func": job.func_ref,
        "args": args,
        "kwargs": kwargs,
        "queue": queue_of(job),
        "name": job.name,
    }


def request_info(request: dict[str, Any]) -> dict[str, Any]:
    """The ``job`` dict events carry, from a job's wire request (for a job
    that cannot be loaded)."""
    return {
        "id": request["id"],
        "func": request["func"],
        "args": request["args"],
        "kwargs": request["kwargs"],
        "queue": request["queue"],
        "name": (request.get("options") or {}).get("name") or request["func"],
    }


class JobEvents:
    """Hands job events to *dispatcher*, each job's in the order of its life.

    :param ledger: where the request of a parked job is read when the job
        store reporting it has none (None: the memory store, which parks none).
    """

    def __init__(self, dispatcher: EventDispatcher, ledger: Ledger | None = None) -> None:
        self.dispatcher = dispatcher
        self.ledger = ledger
        self._lock = threading.RLock()
        self._running: dict[str, int] = defaultdict(int)
        self._deferred: dict[str, list[Event]] = defaultdict(list)
        self._canceled: set[str] = set()

    def emit(self, event: Event) -> None:
        """Hand *event* over now (an event no run of its job can be ahead of)."""
        self.dispatcher.emit(event)

    def running_count(self) -> int:
        """How many runs are going (started and their events not emitted)."""
        with self._lock:
            return sum(self._running.values())

    def created(self, job: Job, request: dict[str, Any]) -> None:
        """CREATED for *job*, just stored from the wire *request* (the job
        stores' ``on_added``)."""
        log.info("job %s (queue %s): stored", job.id, request["queue"])
        self.emit(Event(Event.JOB_CREATED, job_id=job.id, queue=request["queue"], job=job_info(job)))

    def parked(self, job_id: str, queue: str, reason: str, request: dict[str, Any] | None = None) -> None:
        """PARKED for a job that cannot be loaded (the job stores' ``on_parked``)."""
        if request is None and self.ledger is not None:
            row = self.ledger.get_job(job_id)
            request = json.loads(row["request"]) if row else None
        self.emit(
            Event(
                Event.JOB_PARKED,
                job_id=job_id,
                queue=queue,
                reason=reason,
                job=request_info(request) if request else None,
            )
        )

    def run_started(self, job_id: str) -> None:
        """A run of *job_id* is going: its job's REMOVED and CANCELED wait for it."""
        with self._lock:
            self._running[job_id] += 1

    def emit_run_events(self, job_id: str, events: list[Event], final: bool, finished_run: bool = False) -> None:
        """Emit a run's events, then REMOVED after the last run, then any
        CANCELED that waited for the run."""
        with self._lock:
            for event in events:
                self.emit(event)
            if finished_run:
                self._running[job_id] -= 1
                if self._running[job_id] <= 0:
                    del self._running[job_id]
            canceled = job_id in self._canceled
            if final and not canceled and events:
                base = events[-1]
                self.emit(Event(Event.JOB_REMOVED, job_id=job_id, queue=base.get("queue"), job=base.get("job")))
            if job_id not in self._running:
                for event in self._deferred.pop(job_id, []):
                    self.emit(event)
                self._canceled.discard(job_id)

    def job_ended(self, job_id: str, queue: str, info: dict[str, Any] | None) -> None:
        """Emit REMOVED for a job whose last run ended without a run event of
        its own to carry it; after any run of the job still going."""
        with self._lock:
            event = Event(Event.JOB_REMOVED, job_id=job_id, queue=queue, job=info)
            if self._running.get(job_id):
                self._deferred[job_id].append(event)
            else:
                self.emit(event)

    def canceled(self, job_id: str, queue: str, info: dict[str, Any] | None) -> None:
        """Emit CANCELED for a job just canceled; if a run of it is going,
        after that run's events, which then end without REMOVED."""
        with self._lock:
            event = Event(Event.JOB_CANCELED, job_id=job_id, queue=queue, job=info)
            if self._running.get(job_id):
                self._canceled.add(job_id)
                self._deferred[job_id].append(event)
            else:
                self.emit(event)
