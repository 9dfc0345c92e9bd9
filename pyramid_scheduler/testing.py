"""Testing: an in-process scheduler for an application's own tests.

``config.include("pyramid_scheduler.testing")`` (or ``pyramid.includes =
pyramid_scheduler.testing`` in a test INI) puts a :class:`TestingScheduler`
at ``registry.scheduler`` and ``request.scheduler``. It *is* a
:class:`~pyramid_scheduler.web.proxy.SchedulerProxy` with only the publish step
replaced: every ``add_*_job`` and ``cancel_job`` call runs the real checks
and builds the real version 1 message, which is then decoded by the daemon's
own :func:`~pyramid_scheduler.wire.messages.decode` and kept here instead of
going to a broker. Jobs run in the calling thread, on a fake clock
(:class:`FakeClock`), with APScheduler's own triggers deciding every fire
time (so DST gaps and folds behave as in the daemon), and the same events as
in production reach the listeners and ``registry.notify`` subscribers. No
broker, no database, no threads, no sleeping.

Tests that run each request inside a transaction of their own which never
commits (the Pyramid starter's ``testapp`` fixture) see what their
requests scheduled with :meth:`TestingScheduler.held`, run it inside that
transaction with ``run_pending(request=...)``, and start each test afresh
with :meth:`TestingScheduler.reset`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from pyramid.config import PHASE2_CONFIG
from pyramid.threadlocal import manager as threadlocal_manager

from pyramid_scheduler.api import Event, IScheduler
from pyramid_scheduler.daemon.execution import job_context, request_context, run_key
from pyramid_scheduler.daemon.job_events import request_info
from pyramid_scheduler.daemon.retries import retry_delay
from pyramid_scheduler.events import EventDispatcher
from pyramid_scheduler.exceptions import InvalidJob
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.settings import SchedulerSettings
from pyramid_scheduler.store.records import json_or_repr
from pyramid_scheduler.store.tables import LIVE
from pyramid_scheduler.triggers.build import build_trigger, next_fire_time, to_datetime
from pyramid_scheduler.web.proxy import SchedulerProxy
from pyramid_scheduler.web.tx import Pending, current_transaction
from pyramid_scheduler.wire.messages import JobRequest, admit, decode
from pyramid_scheduler.wire.refs import takes_request, with_request

try:
    import transaction
except ImportError:  # pragma: no cover - transaction is optional
    transaction = None

__all__ = ["FakeClock", "TestingJob", "TestingScheduler", "includeme"]

log = get_logger(__name__)

#: What ``get_daemons()`` names as the owner of every queue.
OWNER = "pyramid_scheduler.testing"
#: Most runs one ``run_pending()`` or clock step makes (a runaway guard).
MAX_RUNS = 100_000


def includeme(config: Any) -> None:
    """Include pyramid_scheduler with a :class:`TestingScheduler` in place of
    the broker and the daemon.

    Works before or after ``config.include("pyramid_scheduler")`` (Pyramid
    includes a package once). The ``scheduler.*`` settings are checked as
    usual, when the configuration is committed; ``scheduler.testing.eager =
    true`` runs due jobs as soon as they are added. Listeners added to the
    real scheduler are kept.
    """
    config.include("pyramid_scheduler")
    config.action((IScheduler, "testing"), functools.partial(_swap, config.registry), order=PHASE2_CONFIG)


def _swap(registry: Any) -> None:
    """Put a TestingScheduler in place of the scheduler the include made (at
    ``PHASE2_CONFIG``: after it, before the declared jobs)."""
    real = registry.scheduler
    if isinstance(real, TestingScheduler):
        return
    scheduler = TestingScheduler(real.settings, registry)
    scheduler.listeners = real.listeners
    scheduler.dispatcher.listeners = real.listeners
    real.shutdown(wait=False)
    registry.scheduler = scheduler
    registry.registerUtility(scheduler, IScheduler)


class FakeClock:
    """The time of a :class:`TestingScheduler`; moves only when told to.

    It starts at the real time of the scheduler's creation. Moving it forward
    with :meth:`advance` or :meth:`advance_to` runs every run that falls due
    on the way, in order of fire time, each with the clock set to its fire
    time (so none is late).
    """

    def __init__(self, scheduler: TestingScheduler, start: datetime | None = None) -> None:
        self._scheduler = scheduler
        self._now = (start or datetime.now(timezone.utc)).astimezone(timezone.utc)

    def now(self) -> datetime:
        """The fake current time (aware, UTC)."""
        return self._now

    def set(self, when: Any) -> None:
        """Put the clock at *when* (datetime, ISO string or epoch number;
        naive means ``scheduler.timezone``) without running anything: for
        the start of a test, before any job is added."""
        self._now = self._scheduler._time(when, "when")

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> list[dict[str, Any]]:
        """Move the clock forward by *delta* or by ``timedelta(**kwargs)``
        (``hours=25``, ``minutes=5``, ...), running what falls due.

        :returns: the runs made, oldest first (see :attr:`TestingScheduler.runs`).
        """
        step = delta if delta is not None else timedelta(**kwargs)
        if step < timedelta(0):
            raise ValueError(f"advance: the clock only moves forward, got {step}")
        return self.advance_to(self._now + step)

    def advance_to(self, when: Any) -> list[dict[str, Any]]:
        """Move the clock forward to *when*, running what falls due."""
        target = self._scheduler._time(when, "when")
        if target < self._now:
            raise ValueError(
                f"advance_to: {target.isoformat()} is before the clock's "
                f"{self._now.isoformat()}; the clock only moves forward"
            )
        return self._scheduler._run_until(target)

    def __repr__(self) -> str:
        return f"<FakeClock {self._now.isoformat()}>"


@dataclass
class TestingJob:
    """One job as the testing scheduler holds it."""

    __test__ = False  # not a pytest test class

    request: JobRequest
    func: Any
    trigger: BaseTrigger
    options: dict[str, Any]
    next_run_time: datetime | None
    order: int
    status: str = "scheduled"
    runs: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    last_run_at: float | None = None
    result: str | None = None
    error: str | None = None
    changed: int = 0
    attempt: int = 1
    canceled_while_running: bool = False
    deferred: list[Event] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def queue(self) -> str:
        return self.request.queue

    def row(self) -> dict[str, Any]:
        """The job as a ledger row (what ``get_job`` turns into a record)."""
        request = self.request
        assert request.trigger is not None and request.func is not None
        return {
            "id": request.id,
            "queue": request.queue,
            "func": request.func,
            "kind": request.trigger["type"],
            "status": self.status,
            "mid": request.mid,
            "request": json.dumps(request.to_wire()),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "runs": self.runs,
            "last_run_at": self.last_run_at,
            "result": self.result,
            "error": self.error,
            "options": dict(request.options),
            "next_run_time": None if self.next_run_time is None else self.next_run_time.timestamp(),
            "attempt": self.attempt,
        }


class _Ledger:
    """The part of :class:`~pyramid_scheduler.store.ledger.Ledger` the proxy reads,
    kept in memory, so ``get_job``/``get_jobs``/``get_daemons`` are the
    proxy's own."""

    def __init__(self, scheduler: TestingScheduler) -> None:
        self.scheduler = scheduler

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        job = self.scheduler.jobs.get(job_id)
        return None if job is None else job.row()

    def list_jobs(self, queue: str | None, status: str | None, limit: int) -> list[dict[str, Any]]:
        jobs = sorted(self.scheduler.jobs.values(), key=lambda job: job.changed, reverse=True)
        return [
            job.row()
            for job in jobs
            if (queue is None or job.queue == queue) and (status is None or job.status == status)
        ][:limit]

    def list_runs(self, job_id: str, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        runs = [
            {
                "run_key": run["run_key"],
                "job_id": job_id,
                "status": run["status"],
                "scheduled_at": run["scheduled_run_time"].timestamp(),
                "error": run["error"],
            }
            for run in self.scheduler.runs
            if run["job_id"] == job_id and (status is None or run["status"] == status)
        ]
        return runs[-limit:] if limit else runs

    def list_leases(self) -> list[dict[str, Any]]:
        return [
            {"queue": queue, "owner": OWNER, "epoch": 1, "expires_at": math.inf}
            for queue in self.scheduler.settings.queues
        ]


class _InProcessPublisher:
    """Stands in for :class:`~pyramid_scheduler.brokers.connection.Publisher`: the
    message is decoded at the daemon's door and handed to the scheduler."""

    def __init__(self, scheduler: TestingScheduler) -> None:
        self.scheduler = scheduler

    def publish(self, body: bytes, queue: str, job_id: str) -> None:
        request = decode(body)
        if request.mid in self.scheduler._released:
            # Taken from its transaction by ``run_pending(request=...)`` already.
            return
        self.scheduler.submit(request)

    def close(self) -> None:
        pass


class TestingScheduler(SchedulerProxy):
    """A :class:`~pyramid_scheduler.web.proxy.SchedulerProxy` that keeps and runs
    its jobs in the calling thread.

    :param eager: run due jobs as soon as they are added (default:
        ``scheduler.testing.eager``). Otherwise they run on
        :meth:`run_pending` or as :attr:`clock` advances.
    """

    __test__ = False  # not a pytest test class
    #: Lets pyramid_scheduler skip what needs a daemon (combined mode, event fan-out).
    in_process = True

    def __init__(self, settings: SchedulerSettings, registry: Any = None, eager: bool | None = None) -> None:
        super().__init__(settings, registry)
        self.publisher = _InProcessPublisher(self)  # type: ignore[assignment]
        #: Run due jobs as soon as they are added.
        self.eager = settings.testing_eager if eager is None else eager
        #: The :class:`FakeClock`.
        self.clock = FakeClock(self)
        #: Every job added, by id, in the order added.
        self.jobs: dict[str, TestingJob] = {}
        #: Every event delivered, in order.
        self.events: list[Event] = []
        #: Every run made: ``job_id``, ``run_key``, ``scheduled_run_time``,
        #: ``status`` (``done``, ``failed`` or ``missed``), ``result``, ``error``.
        self.runs: list[dict[str, Any]] = []
        self.dispatcher = EventDispatcher(self.listeners, registry)
        self.runtime = self  # what combined mode checks: nothing else is started
        self._ledger_fake = _Ledger(self)
        self._order = itertools.count()
        self._running: str | None = None
        #: Message ids taken from a transaction by ``run_pending(request=...)``.
        self._released: set[str] = set()
        #: The request ``run_pending(request=...)`` runs jobs with.
        self._request: Any = None

    # -- the fake clock ---------------------------------------------------------------
    def now(self) -> datetime:
        return self.clock.now()

    def _time(self, value: Any, where: str) -> datetime:
        return to_datetime(value, self.settings.timezone, where).astimezone(timezone.utc)

    # -- what the daemon would do -----------------------------------------------------
    def submit(self, request: JobRequest) -> None:
        """Carry out one decoded request, as the daemon's engine would."""
        if request.op == "add":
            self._add_job(request)
        elif request.op == "cancel":
            self._cancel_job(request)
        elif request.op == "message":
            self._deliver(Event(Event.MESSAGE, message=request.text or "", queue=request.queue))
        elif request.op in ("reschedule", "pause", "resume", "run_now"):
            self._manage_job(request)
        else:  # pragma: no cover - decode() refuses unknown ops
            raise InvalidJob(f"pyramid_scheduler.testing cannot carry out op {request.op!r}")

    def _add_job(self, request: JobRequest) -> None:
        request, func = admit(request, self.settings.func_aliases, self.settings.allowed_modules)
        assert request.trigger is not None
        now = self.now()
        trigger = build_trigger(request.trigger, self.settings.timezone, anchor=now)
        # The daemon reads a message a moment after it was sent: a fire time
        # equal to the sending time has already passed by then.
        first = next_fire_time(trigger, now + timedelta(microseconds=1))
        if first is None:
            raise InvalidJob(f"{request.trigger['type']} trigger: never fires after {now.isoformat()}")
        old = self.jobs.get(request.id)
        if old is not None and old.status in LIVE:
            log.info("job %s (queue %s): already stored; duplicate absorbed", request.id, request.queue)
            return
        options = dict(request.options)
        if request.trigger["type"] == "now":
            options.setdefault("misfire_grace_time", None)
        stamp = now.timestamp()
        job = TestingJob(
            request=request,
            func=func,
            trigger=trigger,
            options=options,
            next_run_time=first,
            order=next(self._order),
            created_at=stamp,
            updated_at=stamp,
        )
        self.jobs.pop(request.id, None)
        self.jobs[request.id] = job
        self._touch(job)
        log.info("job %s (queue %s): stored", job.id, job.queue)
        self._deliver(Event(Event.JOB_CREATED, job_id=job.id, queue=job.queue, job=self._info(job)))
        if self.eager:
            if _committed():
                # Published by the after-commit hook of the caller's transaction
                # (transaction-aware enqueue): that transaction is over but still
                # current in this thread, so the job runs, as in the daemon, in a
                # thread of its own, with its own transaction, waited for here.
                _in_own_thread(self.run_pending)
            else:
                self.run_pending()

    def _cancel_job(self, request: JobRequest) -> None:
        job = self.jobs.get(request.id)
        if job is None or job.queue != request.queue or job.status not in LIVE:
            log.info("job %s (queue %s): cancel ignored: no such live job", request.id, request.queue)
            return
        job.status = "canceled"
        job.next_run_time = None
        self._touch(job)
        event = Event(Event.JOB_CANCELED, job_id=job.id, queue=job.queue, job=self._info(job))
        if self._running == job.id:
            # The run in flight ends with CANCELED, not REMOVED.
            job.canceled_while_running = True
            job.deferred.append(event)
        else:
            self._deliver(event)

    def _manage_job(self, request: JobRequest) -> None:
        """``reschedule_job``, ``pause_job``, ``resume_job``, ``run_job_now``:
        as the daemon's engine, with the same events and refusals."""
        job = self.jobs.get(request.id)
        if job is None or job.queue != request.queue or job.status not in LIVE:
            self._refuse(request, "no such live job on this queue (finished, canceled, parked or never added)")
            return
        paused = job.status == "paused"
        now = self.now()
        if request.op == "reschedule":
            assert request.trigger is not None
            trigger = build_trigger(request.trigger, self.settings.timezone, anchor=now)
            first = next_fire_time(trigger, now)
            if first is None:
                self._refuse(request, "the new schedule never fires")
                return
            job.trigger = trigger
            job.request = replace(job.request, trigger=request.trigger)
            job.next_run_time = None if paused else first
            self._touch(job)
            self._deliver(
                Event(
                    Event.JOB_RESCHEDULED,
                    job_id=job.id,
                    queue=job.queue,
                    job=self._info(job),
                    trigger=request.trigger,
                    next_run_time=job.next_run_time,
                )
            )
        elif request.op == "pause":
            if paused:
                self._refuse(request, "the job is already paused")
                return
            job.status, job.next_run_time = "paused", None
            self._touch(job)
            self._deliver(Event(Event.JOB_PAUSED, job_id=job.id, queue=job.queue, job=self._info(job)))
        elif request.op == "resume":
            if not paused:
                self._refuse(request, "the job is not paused")
                return
            first = next_fire_time(job.trigger, now)
            job.status, job.next_run_time = "scheduled", first
            self._touch(job)
            if first is None:
                job.status = "missed"
                job.error = "its schedule ended while it was paused"
                self._deliver(Event(Event.JOB_REMOVED, job_id=job.id, queue=job.queue, job=self._info(job)))
            else:
                self._deliver(
                    Event(Event.JOB_RESUMED, job_id=job.id, queue=job.queue, job=self._info(job), next_run_time=first)
                )
        else:
            if paused:
                self._refuse(request, "the job is paused; resume it first")
                return
            job.next_run_time = now
            self._touch(job)
            if self.eager:
                self.run_pending()

    def _refuse(self, request: JobRequest, reason: str) -> None:
        log.warning("job %s (queue %s): %s refused: %s", request.id, request.queue, request.op, reason)
        self._deliver(
            Event(
                Event.JOB_REQUEST_REFUSED,
                job_id=request.id,
                queue=request.queue,
                job=None,
                op=request.op,
                reason=reason,
            )
        )

    # -- running ----------------------------------------------------------------------
    def run_pending(self, request: Any = None) -> list[dict[str, Any]]:
        """Run every job due at the clock's time (async jobs, past dates, ...),
        in order of fire time, including jobs those runs add.

        :param request: run inside this request's transaction, as a test
            that never commits needs (the Pyramid starter's fixtures): the
            messages held by the transaction of ``request.tm`` (see
            :meth:`held`) are taken from it and stored first, and every job
            runs with *request* as the current request -- a job function
            with a ``request`` parameter gets *request* itself, so its
            ``request.dbsession`` sees the test's uncommitted rows and its
            writes roll back with the test. Jobs those runs add are held by
            the same transaction, and are run too.
        :returns: the runs made, oldest first.

        .. versionchanged:: 1.0 the *request* parameter.
        """
        if request is None:
            return self._run_until(self.now())
        made: list[dict[str, Any]] = []
        self._request = request
        try:
            while True:
                released = self._release(current_transaction(request=request))
                runs = self._run_until(self.now())
                made += runs
                if not released and not runs:
                    return made
                if len(made) >= MAX_RUNS:
                    raise RuntimeError(
                        f"pyramid_scheduler.testing: {MAX_RUNS} runs in one "
                        "run_pending(request=...) and its jobs keep adding more"
                    )
        finally:
            self._request = None

    # -- a transaction that never commits (the Pyramid starter's fixtures) ------------
    def held(self, tm: Any = None, request: Any = None) -> list[JobRequest]:
        """The messages of this scheduler that a transaction holds until it
        commits (``add_*_job``, ``cancel_job``, ``send_message`` ... called
        inside it), in call order, as the daemon would decode them.

        :param tm: the transaction manager (the starter's ``tm`` fixture);
        :param request: or a request: its ``request.tm``'s transaction
            (default: the current request's, else the thread's
            ``transaction.manager``'s).
        :returns: :class:`~pyramid_scheduler.wire.messages.JobRequest` objects
            (``op``, ``id``, ``queue``, ``func``, ``args``, ``kwargs``,
            ``trigger``, ``options``); ``[]`` outside a transaction.

        .. versionadded:: 1.0
        """
        held = self._held_requests(current_transaction(request, tm))
        return [message for message in held if message.mid not in self._released]

    def reset(self) -> None:
        """Forget every job, run and event, and put :attr:`clock` back at the
        real time, as a new scheduler; listeners and ``eager`` are kept. For
        a scheduler that lives as long as its application (a session-scoped
        ``app`` fixture): reset it before each test.

        .. versionadded:: 1.0
        """
        self.jobs.clear()
        self.events.clear()
        self.runs.clear()
        self._released.clear()
        self.clock = FakeClock(self)

    def _held_requests(self, txn: Any) -> list[JobRequest]:
        if txn is None:
            return []
        try:
            pending = txn.data(Pending)
        except KeyError:
            return []
        return [
            decode(body)
            for publish, body, *_ in pending.messages
            if getattr(publish, "__self__", None) is self.publisher
        ]

    def _release(self, txn: Any) -> int:
        """Store the messages *txn* holds for this scheduler, now; how many."""
        released = 0
        eager, self.eager = self.eager, False  # they run in run_pending's loop
        try:
            for message in self._held_requests(txn):
                if message.mid not in self._released:
                    self._released.add(message.mid)
                    self.submit(message)
                    released += 1
        finally:
            self.eager = eager
        return released

    def _run_until(self, target: datetime) -> list[dict[str, Any]]:
        if self._running is not None:  # a job added by a running job: the outer loop runs it
            return []
        made: list[dict[str, Any]] = []
        while True:
            # By timestamp: next run times of one zone compare by wall clock,
            # and the clock stays in UTC, where advance() adds real seconds.
            due = [
                (job.next_run_time.timestamp(), job.order, job)
                for job in self.jobs.values()
                if job.next_run_time is not None and job.next_run_time <= target
            ]
            if not due:
                break
            if len(made) >= MAX_RUNS:
                raise RuntimeError(
                    f"pyramid_scheduler.testing: {MAX_RUNS} runs in one step and more are due "
                    f"before {target.isoformat()}; advance the clock by less (an interval of "
                    "seconds over days makes a run per interval)"
                )
            _, _, job = min(due)  # orders are unique: jobs are never compared
            assert job.next_run_time is not None
            self.clock._now = max(self.clock._now, job.next_run_time.astimezone(timezone.utc))
            made.append(self._run_one(job))
        self.clock._now = max(self.clock._now, target.astimezone(timezone.utc))
        return made

    def _run_one(self, job: TestingJob) -> dict[str, Any]:
        run_time = job.next_run_time
        assert run_time is not None
        now = self.now()
        next_time = job.trigger.get_next_fire_time(run_time, now)
        coalesce = job.options.get("coalesce", self.settings.coalesce)
        while coalesce and next_time is not None and next_time <= now:
            next_time = job.trigger.get_next_fire_time(next_time, now)
        job.next_run_time = next_time
        final = next_time is None
        key = run_key(job.id, run_time)
        info = self._info(job)
        base = {"job_id": job.id, "queue": job.queue, "job": info, "run_key": key, "scheduled_run_time": run_time}
        record: dict[str, Any] = {
            "job_id": job.id,
            "run_key": key,
            "scheduled_run_time": run_time,
            "result": None,
            "error": None,
        }
        grace = job.options.get("misfire_grace_time", self.settings.misfire_grace_time)
        late = (now - run_time).total_seconds()
        if grace is not None and late > grace:
            reason = f"{late:.3f}s late, past its misfire grace time of {grace}s"
            log.warning("job %s (queue %s): run %s missed: %s", job.id, job.queue, key, reason)
            record.update(status="missed", error=reason)
            job.error = reason
            event = Event(Event.JOB_MISSED, reason=reason, **base)
        else:
            job.status = "running"
            self._running = job.id
            try:
                with self._context(job) as request:
                    retval = self._call(job, request)
            except Exception as exc:  # noqa: BLE001 - recorded and reported, as in the daemon
                text = "".join(traceback.format_exception(exc))
                log.error("job %s (queue %s): run %s failed\n%s", job.id, job.queue, key, text)
                record.update(status="failed", error=text)
                job.error = text
                retries = int(job.options.get("retries") or 0)
                will_retry = final and job.attempt <= retries
                event = Event(
                    Event.JOB_ERROR, exception=exc, traceback=text, attempt=job.attempt, will_retry=will_retry, **base
                )
                if will_retry:
                    delay = retry_delay(job.options, job.attempt)
                    job.attempt += 1
                    job.next_run_time = now + timedelta(seconds=delay)
                    final = False
                    job.deferred.insert(
                        0, Event(Event.JOB_RETRY, attempt=job.attempt, retry_at=job.next_run_time, delay=delay, **base)
                    )
            else:
                log.info("job %s (queue %s): run %s done", job.id, job.queue, key)
                record.update(status="done", result=retval)
                job.result, job.error = json_or_repr(retval), None
                event = Event(Event.JOB_EXECUTED, retval=retval, **base)
            finally:
                self._running = None
            job.runs += 1
            job.last_run_at = now.timestamp()
        if job.status in LIVE:
            job.status = record["status"] if final else "scheduled"
        self._touch(job)
        self.runs.append(record)
        self._deliver(event)
        if final and not job.canceled_while_running:
            self._deliver(Event(Event.JOB_REMOVED, job_id=job.id, queue=job.queue, job=info))
        for deferred in job.deferred:
            self._deliver(deferred)
        job.deferred.clear()
        return record

    def _call(self, job: TestingJob, request: Any = None) -> Any:
        args, kwargs = with_request(job.func, list(job.request.args), dict(job.request.kwargs), request)
        if self.settings.delegator is not None:
            return self.settings.delegator(job.func, args, kwargs)
        return job.func(*args, **kwargs)

    @contextlib.contextmanager
    def _context(self, job: TestingJob) -> Iterator[Any]:
        """As the daemon's runner: a request for a function that takes one;
        else the registry, and a transaction of its own unless the job runs
        eagerly from inside one (a view under pyramid_tm), which it joins:
        starting its own would abort the caller's. Under
        ``run_pending(request=...)``: that request, current, in its transaction."""
        if self._request is not None:
            threadlocal_manager.push({"registry": self.registry, "request": self._request})
            try:
                yield self._request if takes_request(job.func) else None
            finally:
                threadlocal_manager.pop()
            return
        if takes_request(job.func):
            with request_context(self.registry) as request:
                yield request
            return
        with job_context(self.registry, own_transaction=not _in_transaction()):
            yield None

    # -- helpers ----------------------------------------------------------------------
    def _deliver(self, event: Event) -> None:
        self.events.append(event)
        self.dispatcher.deliver(event)

    def _touch(self, job: TestingJob) -> None:
        job.updated_at = self.now().timestamp()
        job.changed = next(self._order)

    def _info(self, job: TestingJob) -> dict[str, Any]:
        return request_info(job.request.to_wire())

    def _ledger(self) -> Any:
        return self._ledger_fake

    def __repr__(self) -> str:
        return f"<TestingScheduler jobs={len(self.jobs)} clock={self.clock.now().isoformat()}>"


def _in_transaction() -> bool:
    """True while the thread's ``transaction.manager`` has a transaction begun."""
    if transaction is None:
        return False
    manager = getattr(transaction.manager, "manager", transaction.manager)  # ThreadTransactionManager
    return getattr(manager, "_txn", None) is not None


def _committed() -> bool:
    """True in an after-commit hook: the thread's transaction has committed."""
    if transaction is None:
        return False
    manager = getattr(transaction.manager, "manager", transaction.manager)
    txn = getattr(manager, "_txn", None)
    return txn is not None and getattr(txn, "status", None) == "Committed"


def _in_own_thread(func: Any) -> Any:
    """Call *func* in a new thread and wait for it; its exception is raised here."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = func()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="pyramid_scheduler.testing")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")
