"""Intake: an ``add`` request from the consumer becomes a stored job.

Between the consumer (:mod:`.consumer`), which hands over each decoded
request, and scheduling (:mod:`.scheduling`), which runs stored jobs when
they are due. An ``add`` is checked again (:func:`~pyramid_scheduler.wire.messages.admit`), its
trigger built, and the job written to its queue's SQL job store in one
transaction with its ledger row, so a redelivered message is absorbed by job
id, before the message is acked; the jobs of several requests of one batch
share that transaction. A run-now job goes straight to the worker
pool (:mod:`.execution`) when the pool has room, stored with one ``INSERT``
of its ledger row only; several of them among the requests of one batch
share that ``INSERT``. A run-now job sent with ``durable=False`` is stored
not at all: it goes to the fast lane (:mod:`.fastlane`), recorded after its
run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, NamedTuple

import sqlalchemy as sa
from apscheduler.executors.base import MaxInstancesReachedError
from apscheduler.job import Job
from apscheduler.jobstores.base import ConflictingIdError
from apscheduler.schedulers.base import STATE_RUNNING, STATE_STOPPED

from pyramid_scheduler.daemon.aps import build_job, job_defaults, runs_in_pool
from pyramid_scheduler.daemon.catchup import job_options as catch_up_options
from pyramid_scheduler.daemon.clock import SYSTEM_CLOCK, Clock
from pyramid_scheduler.daemon.execution import JobExecutor, run_key
from pyramid_scheduler.daemon.fastlane import Accepted, FastLane
from pyramid_scheduler.daemon.flow import FLOW_KEY, FlowJob, expired_at_door, flow_options, job_class, record_expired
from pyramid_scheduler.daemon.job_events import JobEvents, job_info
from pyramid_scheduler.daemon.limits import LIMITED, LimitSpec
from pyramid_scheduler.daemon.scheduling import DueScheduler, StoreBack
from pyramid_scheduler.exceptions import InvalidJob
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.settings import SchedulerSettings
from pyramid_scheduler.store.jobstores import QueueJobStore
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.membership import Membership
from pyramid_scheduler.store.memory import MemoryQueueStore
from pyramid_scheduler.triggers.build import build_trigger, next_fire_time
from pyramid_scheduler.wire.messages import JobRequest, admit
from pyramid_scheduler.wire.refs import with_request

log = get_logger(__name__)

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


class _Stored(NamedTuple):
    """A checked job for its queue's SQL job store, which several of a batch
    share one transaction into (:meth:`Intake._store_many`)."""

    request: JobRequest
    job: Job
    wire: dict[str, Any]
    #: Stores it alone, through APScheduler's ``add_job``.
    alone: Callable[[], str]


def _kind(planned: _RunNow | _Stored) -> str | None:
    """What the jobs stored together share: run-now jobs' records (None) go
    to the ledger, the others to their queue's job store."""
    return None if isinstance(planned, _RunNow) else planned.request.queue


def _duplicate(request: JobRequest) -> str:
    """A redelivered (or repeated) ``add`` of a stored job: absorbed by its id."""
    log.info("job %s (queue %s): already stored; duplicate message %s absorbed", request.id, request.queue, request.mid)
    return "duplicate"


@dataclass(kw_only=True, eq=False)
class Intake:
    """Stores the jobs of ``add`` requests in the queues' job stores.

    :param stores: each queue's job store, by queue name.
    :param executor: the worker pool run-now jobs are handed to.
    :param heartbeat: this daemon's heartbeat (None: no other daemon shares the queues).
    :param store_back: puts a job that could not be handed to the pool in
        its job store.
    """

    settings: SchedulerSettings
    scheduler: DueScheduler
    stores: Mapping[str, QueueJobStore | MemoryQueueStore]
    ledger: Ledger
    executor: JobExecutor
    heartbeat: Membership | None
    events: JobEvents
    store_back: StoreBack
    #: Where "now" is read (a job's first fire time).
    clock: Clock = SYSTEM_CLOCK
    #: Where ``durable=False`` run-now jobs go (made from the parts above).
    fast: FastLane = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        self.fast = FastLane(
            scheduler=self.scheduler,
            executor=self.executor,
            events=self.events,
            ledger=self.ledger,
            room=settings.max_workers + settings.broker_prefetch,
        )

    def submit_many(self, requests: list[JobRequest], carry_out: Callable[[JobRequest], str]) -> list[str | Exception]:
        """Carry out *requests* in order, each as *carry_out* would one by
        one, storing the jobs that follow each other among them together:
        the run-now jobs that go straight to the pool (one INSERT, one
        commit), the jobs of one queue's SQL job store (one transaction);
        return each one's outcome, or the exception that stopped it:
        :class:`InvalidJob` (dead-letter it), any other error, or a
        :class:`sqlalchemy.exc.SQLAlchemyError` for it and every request
        after it (retry them later)."""
        results: list[Any] = [None] * len(requests)
        group: list[tuple[int, Any]] = []

        def store_group() -> None:
            try:
                if group and isinstance(group[0][1], _RunNow):
                    self._store_now(group, results)
                elif group:
                    self._store_many(group, results)
            except sa.exc.SQLAlchemyError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug: these requests only
                for index, _ in group:
                    results[index] = results[index] or exc
            group.clear()

        try:
            for index, request in enumerate(requests):
                try:
                    planned = self.plan(request) if request.op == "add" else None
                    if isinstance(planned, (_RunNow, _Stored)):
                        if group and _kind(group[0][1]) != _kind(planned):
                            store_group()
                        group.append((index, planned))
                        continue
                    store_group()
                    results[index] = carry_out(request) if planned is None else planned()
                except sa.exc.SQLAlchemyError:
                    raise
                except Exception as exc:  # noqa: BLE001 - InvalidJob, or a bug: this request only
                    results[index] = exc
            store_group()
        except sa.exc.SQLAlchemyError as exc:
            results = [exc if outcome is None else outcome for outcome in results]
        return results

    def add(self, request: JobRequest, recovering: bool = False) -> str:
        """Store the job of an ``add`` request (*recovering*: again, replacing
        what is stored under its id, without a new ledger row or CREATED); a
        ``durable=False`` one goes straight to the worker pool.

        :raises InvalidJob: it cannot be scheduled.
        """
        planned = self.plan(request, recovering)
        if isinstance(planned, _RunNow):
            return self._add_now(planned)
        if isinstance(planned, _Stored):
            results: list[Any] = [None]
            self._store_many([(0, planned)], results)
            return str(results[0])
        outcome = planned()
        return outcome.hand() if isinstance(outcome, Accepted) else outcome

    def hand_made(self, request: JobRequest) -> str:
        """Run (or store due) a run-now job whose record this daemon has just
        stored itself (a step of a chain or group: :mod:`pyramid_scheduler.store.flows`),
        without the ``INSERT`` that would find it stored."""
        planned = self.plan(request)
        if isinstance(planned, _RunNow):
            return self._hand(planned)
        return self.add(request, recovering=True)

    def plan(self, request: JobRequest, recovering: bool = False) -> _RunNow | _Stored | Callable[[], str]:
        """Check an ``add`` request and build its job: a :class:`_RunNow` if
        it goes straight to the worker pool (:meth:`_add_now`), a
        :class:`_Stored` for a new job of a SQL job store (:meth:`_store_many`),
        else a callable that stores it in its queue's job store, or for a
        ``durable=False`` job one that answers
        :class:`~pyramid_scheduler.daemon.fastlane.Accepted` (nothing stored).

        :raises InvalidJob: it cannot be scheduled.
        """
        request, func = admit(request, self.settings)
        assert request.trigger is not None and request.func is not None
        accepted = request.accepted_at()
        trigger = build_trigger(request.trigger, self.settings.timezone, anchor=accepted)
        # The first fire time from now; if the schedule ended while the message
        # waited (the daemon was down), its first fire time after acceptance:
        # a late run, which runs or is recorded missed like any other.
        first = next_fire_time(trigger, self.clock.now()) or next_fire_time(trigger, accepted)
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
        # Jobs with flow limits run in the same pool under their own alias (.limits).
        executor = LIMITED if LimitSpec.of(request.options, request.func) else "default"
        # Built as the job store loads a job: admit() made APScheduler's checks.
        state = {
            "version": 1,
            "id": request.id,
            "func": request.func,
            "trigger": trigger,
            "executor": executor,
            "args": tuple(args),
            "kwargs": kwargs,
            "name": request.options.get("name") or request.func,
            "next_run_time": first,
            **job_defaults(self.scheduler),
            **options,
        }
        flow = flow_options(request.options)
        if flow is not None:
            state[FLOW_KEY] = flow
            if expired_at_door(request, self.clock.now()) and not recovering:
                return partial(self._expired, request, build_job(self.scheduler, request.queue, state, FlowJob), first)
        fast = request.options.get("durable") is False and not recovering and self._fast_open()
        if request.trigger["type"] == "now" and not recovering and (fast or self._direct_open(request.id)):
            if fast:
                return partial(self.fast.accept, request, state, first)
            job = build_job(self.scheduler, request.queue, state, job_class(state, Job))
            return _RunNow(request, job, first, request.to_wire())

        def store() -> str:
            with self.stores[request.queue].adding(None if recovering else request.to_wire(), flow):
                try:
                    self.scheduler.add_job(
                        func,
                        trigger=trigger,
                        args=args,
                        kwargs=kwargs,
                        id=request.id,
                        name=request.options.get("name") or request.func,
                        jobstore=request.queue,
                        replace_existing=recovering,
                        next_run_time=first,
                        executor=executor,
                        **options,
                    )
                except ConflictingIdError:
                    if recovering or not self._stored_not_handed(request):
                        return _duplicate(request)
                    # A step of a flow that its daemon stored and sent here
                    # (a queue it does not run): nothing holds it yet.
                    return self.add(request, recovering=True)
            return "stored"

        # (APScheduler's add_job holds a job in memory until the scheduler starts.)
        if recovering or self.scheduler.state == STATE_STOPPED or self.settings.memory_store:
            return store
        job = build_job(self.scheduler, request.queue, state, job_class(state, Job))
        return _Stored(request, job, request.to_wire(), store)

    def _expired(self, request: JobRequest, job: Job, first: datetime) -> str:
        """The door's check of expiry: a job whose message comes after its
        ``expires`` time is recorded, then ended ``expired``, never run."""
        wire = request.to_wire()
        try:
            self.ledger.add_job(wire)
        except ConflictingIdError:
            return _duplicate(request)
        self.events.created(job, wire)
        now = self.clock.now()
        record_expired(self.executor.runner, job, job_info(job), first, run_key(job.id, first), now)
        return "expired"

    def _direct_open(self, job_id: str) -> bool:
        """True when a run-now job may go straight to the worker pool: the
        SQL job store is on, the scheduler runs, this daemon's heartbeat is fresh
        (else the job waits, fenced, in the job store: see
        :meth:`pyramid_scheduler.store.jobstores.QueueJobStore.get_due_jobs`), no run of a job with this
        id is in the pool, and the pool's backlog is below
        :data:`DIRECT_BACKLOG`."""
        return (
            not self.settings.memory_store
            and self.scheduler.state == STATE_RUNNING
            and (self.heartbeat is None or self.heartbeat.fresh())
            and not runs_in_pool(self.executor, job_id)
            and self.executor.runner.pending < DIRECT_BACKLOG
        )

    def _fast_open(self) -> bool:
        """True when a ``durable=False`` job may skip the job store: the SQL
        job store is on (with the memory store every job is in memory
        anyway), the scheduler runs and this daemon's heartbeat is fresh; else
        it is stored like any other, more durable than it asked."""
        return (
            not self.settings.memory_store
            and self.scheduler.state == STATE_RUNNING
            and (self.heartbeat is None or self.heartbeat.fresh())
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

    def _store_many(self, group: list[tuple[int, _Stored]], results: list[Any]) -> None:
        """Store the jobs of *group* (of one queue) in one transaction
        (:meth:`~pyramid_scheduler.store.jobstores.QueueJobStore.add_jobs`);
        one by one if an id is already known."""
        store = self.stores[group[0][1].request.queue]
        assert isinstance(store, QueueJobStore)
        try:
            due_soon = store.add_jobs([(planned.job, planned.wire) for _, planned in group])
        except sa.exc.IntegrityError:
            for index, planned in group:
                results[index] = planned.alone()
            return
        for index, _ in group:
            results[index] = "stored"
        if due_soon and self.scheduler.state == STATE_RUNNING:
            self.scheduler.notice()

    def _add_now(self, planned: _RunNow) -> str:
        """Store a run-now job's record, then hand its run to the worker pool.

        APScheduler's table is skipped: it would hold the job only until its
        one run is submitted (and delete it then). The record alone is the
        persisted job. A daemon that stops before the run starts leaves a live
        record that APScheduler does not hold: the next one's recovery
        schedules it again (:meth:`pyramid_scheduler.store.ledger.Ledger.orphans`), exactly as for a
        job APScheduler had submitted, with the same run key; a run the heartbeat
        check refuses is stored back in the job store (:meth:`.Runner.run_one`).
        """
        request = planned.request
        try:
            self.ledger.add_job(planned.wire)
        except ConflictingIdError:
            if not self._stored_not_handed(request):
                return _duplicate(request)
            # This very message was stored, but its commit's reply was lost
            # (so it came back): nothing holds the job yet.
            log.info(
                "job %s (queue %s): already stored by message %s; running it", request.id, request.queue, request.mid
            )
        return self._hand(planned)

    def _hand(self, planned: _RunNow) -> str:
        """CREATED for a stored run-now job, then its run to the pool."""
        self.events.created(planned.job, planned.wire)
        try:
            self.executor.submit_job(planned.job, [planned.first])
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
            and not runs_in_pool(self.executor, request.id)
            and self.scheduler.get_job(request.id, jobstore=request.queue) is None
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
