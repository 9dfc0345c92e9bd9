"""Engine: the daemon's parts put together, started and stopped.

The service (:mod:`.service`) builds one engine for the queues its process
runs, once it holds their lease, and its consumer (:mod:`.consumer`) hands
each decoded request to :meth:`Engine.submit` or :meth:`Engine.submit_many`.
The engine only wires the parts and routes the requests to them:

* :mod:`.intake` stores the jobs of ``add`` requests;
* :mod:`.management` cancels, pauses, resumes, reschedules and runs now;
* :mod:`.scheduling` (APScheduler 3's scheduler thread) hands each job to
  :mod:`.execution` when it is due, through a narrow interface;
* :mod:`.job_events` keeps each job's events in order;
* :mod:`.recovery` settles what a dead daemon left;
* :mod:`.reconcile` applies the jobs declared in the application's code;
* :mod:`.housekeeping` does the periodic chores.

Every daemon of a queue executes. Its heartbeat
(:class:`~pyramid_scheduler.store.membership.Membership`) is renewed on a
thread of its own here; if it lapsed (this daemon was found dead by the
others), :attr:`Engine.lease_lost` is set and the service stops. The same
thread takes and renews the queues' lease
(:class:`~pyramid_scheduler.store.lease.Lease`): its holder does the work
that needs one owner -- recovering what a dead daemon left, applying the
declared jobs, housekeeping -- and another daemon takes it over once it
expires.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from datetime import timezone
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from pyramid.exceptions import ConfigurationError
from sqlalchemy.engine import make_url

from pyramid_scheduler.brokers.connection import release_dead_claims
from pyramid_scheduler.daemon.clock import SYSTEM_CLOCK, Clock
from pyramid_scheduler.daemon.execution import JobExecutor, Runner
from pyramid_scheduler.daemon.flow import order_pool
from pyramid_scheduler.daemon.housekeeping import Housekeeping
from pyramid_scheduler.daemon.intake import Intake
from pyramid_scheduler.daemon.job_events import JobEvents
from pyramid_scheduler.daemon.limits import LIMITED, Limits
from pyramid_scheduler.daemon.management import Management
from pyramid_scheduler.daemon.persist import Persist
from pyramid_scheduler.daemon.reconcile import Reconcile
from pyramid_scheduler.daemon.recovery import Recovery
from pyramid_scheduler.daemon.scheduling import DueScheduler, StoreBack
from pyramid_scheduler.events import EventDispatcher
from pyramid_scheduler.faults import crash_point
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.settings import SchedulerSettings, mask_url, posture_problem
from pyramid_scheduler.store.db import create_db_engine
from pyramid_scheduler.store.jobstores import QueueJobStore
from pyramid_scheduler.store.lease import Lease
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.membership import Membership
from pyramid_scheduler.store.memory import MemoryQueueStore
from pyramid_scheduler.store.runs import RunWriter
from pyramid_scheduler.store.tables import aps_tablename
from pyramid_scheduler.web.proxy import SchedulerProxy
from pyramid_scheduler.wire.messages import MANAGEMENT_OPS, JobRequest, decode

log = get_logger(__name__)

#: The job store and executor of the daemon's own jobs (housekeeping).
INTERNAL = "pyramid_scheduler.internal"
#: Seconds between two looks at the runs still going while stopping.
STOP_POLL = 0.05


def unshared_store(settings: SchedulerSettings, process: str) -> str | None:
    """Why the processes of ``pscheduler --processes N`` (*process*: this
    one's ``"2/4"``) cannot share *settings*' job store, or None: a store in
    memory is each process's own, so each would keep and run its own jobs
    beside the others'."""
    if not process or process.endswith("/1"):
        return None
    url = settings.jobstore_url
    if url is None:
        kept = "scheduler.jobstore.url = memory"
    elif url.startswith("sqlite") and make_url(url).database in (None, "", ":memory:"):
        kept = f"scheduler.jobstore.url = {url} (an in-memory SQLite database)"
    else:
        return None
    count = process.partition("/")[2]
    return (
        f"{kept} keeps the jobs in each process's memory, so the {count} processes of "
        "pscheduler --processes would not share them; use a SQLite file or PostgreSQL, or one process"
    )


class Engine:
    """APScheduler, the ledger and the events for the queues this process runs.

    :param proxy: the application's :class:`~pyramid_scheduler.web.proxy.SchedulerProxy`.
    :param queues: the queues to run (default: all of ``scheduler.queues``).
    :param clock: where the parts read "now" (:mod:`pyramid_scheduler.testing`
        passes its fake clock).
    """

    #: The parts :mod:`pyramid_scheduler.daemon.stepped` swaps to run the
    #: engine step by step in the caller's thread: the event dispatcher, the
    #: scheduler, its worker pool and the runner; and whether the queues are
    #: shared with other daemons (a heartbeat, claims, the lease).
    dispatcher_class: type[EventDispatcher] = EventDispatcher
    scheduler_class: type[DueScheduler] = DueScheduler
    executor_class: type[JobExecutor] = JobExecutor
    runner_class: type[Runner] = Runner
    leased = True

    def __init__(
        self, proxy: SchedulerProxy, queues: tuple[str, ...] | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.proxy = proxy
        self.clock = clock
        self.settings = settings = proxy.settings
        problem = posture_problem(settings)
        if problem:  # before anything connects or runs
            raise ConfigurationError(f"refusing to run jobs: {problem}")
        self.registry = proxy.registry
        self.queues = tuple(queues or settings.queues)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.dispatcher = self.dispatcher_class(proxy.listeners, proxy.registry)

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
        self.membership: Membership | None = None
        if self.leased and not settings.memory_store:
            self.lease = Lease(self.ledger, self.queues, self.owner, settings.lease_ttl)
            process = os.environ.get("PSCHEDULER_PROCESS", "")
            self.membership = Membership(self.ledger, self.queues, self.owner, settings.lease_ttl, process)
        #: Set once this daemon's heartbeat lapsed (the others took its work
        #: over): the service stops then.
        self.lease_lost = threading.Event()
        #: True while this daemon holds the lease: it does the single-owner work.
        self.coordinating = False
        self._heartbeat: threading.Thread | None = None

        #: Ledger writes retried while the job store is down, until the engine stops.
        self.persist = Persist()
        #: Writes the run starts and ends of the worker threads (group commit).
        self.runs = RunWriter(self.ledger)
        self.events = JobEvents(self.dispatcher, None if settings.memory_store else self.ledger)
        self.stores: dict[str, QueueJobStore | MemoryQueueStore] = {}
        for queue in self.queues:
            if settings.memory_store:
                self.stores[queue] = MemoryQueueStore(
                    self.events.created, settings.priorities.get(queue, 0), settings.priority_aging
                )
            else:
                self.stores[queue] = QueueJobStore(
                    self.ledger,
                    queue,
                    aps_tablename(settings.jobstore_tablename_prefix, queue),
                    on_added=self.events.created,
                    fence=self.membership.fresh if self.membership else None,
                    aliases=settings.func_aliases,
                    on_parked=self.events.parked,
                    allowed=settings.allowed_modules,
                    owner=self.owner if self.membership else None,
                )

        # Scheduling and execution, and the one way back from the second to the first.
        self.aps = self.scheduler_class(clock=clock)
        self.aps.catch_up_limit = settings.catch_up_limit
        self.aps.priorities, self.aps.priority_aging = dict(settings.priorities), settings.priority_aging
        self.store_back = StoreBack(self.aps, self.persist)
        self.runner = self.runner_class(
            ledger=self.ledger,
            runs=self.runs,
            events=self.events,
            persist=self.persist,
            registry=self.registry,
            owner=self.owner,
            delegator=settings.delegator,
            lease_valid=self.lease_valid,
            store_back=self.store_back,
            clock=clock,
            limits=None if settings.memory_store else self._limits(clock),
        )
        executor = self.executor_class(self.runner, settings.max_workers)
        self.aps.configure(
            gconfig=dict(settings.apscheduler),
            prefix="apscheduler.",
            jobstores={**self.stores, INTERNAL: MemoryJobStore()},
            executors={
                "default": executor,
                LIMITED: executor,  # the same pool: jobs with flow limits (.limits)
                INTERNAL: ThreadPoolExecutor(1),
            },
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
        self.executor = executor
        order_pool(executor, settings.priorities, settings.priority_aging)  # higher priority first

        self.intake = Intake(
            settings=settings,
            scheduler=self.aps,
            stores=self.stores,
            ledger=self.ledger,
            executor=self.executor,
            heartbeat=self.membership,
            events=self.events,
            store_back=self.store_back,
            clock=clock,
        )
        self.recovery = Recovery(
            settings=settings,
            scheduler=self.aps,
            stores=self.stores,
            ledger=self.ledger,
            owner=self.owner,
            queues=self.queues,
            intake=self.intake,
            events=self.events,
            clock=clock,
        )
        self.management = Management(
            settings=settings,
            scheduler=self.aps,
            ledger=self.ledger,
            events=self.events,
            persist=self.persist,
            restore_parked=self.recovery.restore_parked,
            clock=clock,
            stop_runs=self.runner.controls.cancel,
        )
        self.reconcile = Reconcile(
            settings=settings,
            queues=self.queues,
            scheduler=self.aps,
            ledger=self.ledger,
            intake=self.intake,
            events=self.events,
        )
        self.housekeeping = Housekeeping(
            settings=settings, ledger=self.ledger, registry=self.registry, restore_parked=self.recovery.restore_parked
        )
        self.ledger.flow_steps.handed = self._hand_over
        self.ledger.flow_steps.max_size = settings.max_message_size
        self.ledger.flow_steps.due = lambda: clock.now().timestamp()

    def _hand_over(self, requests: list[dict[str, Any]]) -> None:
        """Schedule the steps of chains and groups that a run's end made
        (:mod:`pyramid_scheduler.store.flows`): in their queue's job store, or
        through the broker for a queue this daemon does not run. One not
        handed over stays stored, this daemon's: recovery schedules it."""
        crash_point("step-made")
        for wire in requests:
            try:
                request = decode(wire)
                if request.queue in self.stores:
                    self.intake.hand_made(request)
                else:
                    self.proxy.publisher.publish(request.encode(), request.queue, request.id)
            except Exception:  # noqa: BLE001 - stored: a daemon's recovery schedules it
                log.exception("job %s: a step made by a flow, stored but not scheduled", wire.get("id"))

    # -- life cycle -------------------------------------------------------------------
    def join(self) -> None:
        """Add this daemon to those that run its queues (before :meth:`start`).

        :raises sqlalchemy.exc.SQLAlchemyError: the job store is unavailable.
        """
        if self.membership is not None and not self.membership.joined:
            self.membership.join()

    def lease_valid(self) -> bool:
        """True while this process may start runs (its heartbeat is alive)."""
        return self.membership is None or self.membership.valid()

    def _limits(self, clock: Clock) -> Limits:
        """The flow limits of this daemon's runs (:mod:`.limits`)."""
        return Limits(ledger=self.ledger, owner=self.owner, poll=self.settings.limits_poll, clock=clock)

    def start(self) -> None:
        """Join the daemons, do the single-owner work if no one does, then start scheduling."""
        self.dispatcher.start()
        self.runs.start()
        self.aps.start(paused=True)
        if self.membership is not None:
            self.join()
            self.ledger.serve_as(self.owner)
            self._coordinate()
        elif not self.settings.memory_store:
            self.recovery.recover()
            self.recovery.restore_parked()
        if self.membership is None:
            self.reconcile(self.proxy.declared)  # config-time schedules
        self.aps.add_job(
            self._housekeeping,
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
        if self.membership is not None:
            self._heartbeat = threading.Thread(target=self._renew_loop, name="pscheduler-heartbeat", daemon=True)
            self._heartbeat.start()
        settings = self.settings
        process = self.membership.process if self.membership else ""
        log.info(
            "scheduler %s running queues %s as %s (owner %s%s); broker %s; job store %s",
            settings.id,
            ", ".join(self.queues),
            "the web process in combined mode" if settings.combined else "a daemon",
            self.owner,
            f", process {process.replace('/', ' of ')}" if process else "",
            settings.broker.masked(),
            mask_url(settings.jobstore_url) if settings.jobstore_url else "memory",
        )

    def _coordinate(self) -> None:
        """Take or renew the lease; its holder recovers what dead daemons left
        (all of it, and the parked jobs, when it takes the lease) and applies
        the declared jobs when it takes it."""
        assert self.lease is not None and self.membership is not None
        queues = ", ".join(self.queues)
        if self.coordinating and not self.lease.renew():
            log.warning("lease on queues %s lost: another daemon does the single-owner work now", queues)
            self.coordinating = False
        taking = not self.coordinating
        if taking:
            if not self.lease.try_acquire():
                return
            self.coordinating = True
            log.info("lease on queues %s taken: this daemon recovers, reconciles and keeps house", queues)
        dead = self.membership.dead()
        if dead and not taking:
            log.warning("daemon(s) %s found dead: taking over their work", ", ".join(dead))
        if dead or taking:
            self.recovery.recover(self.membership.live())
            self._release_broker_claims(dead)
            self.membership.forget(dead)
        if taking:
            self.recovery.restore_parked()
            self.reconcile(self.proxy.declared)

    def _release_broker_claims(self, dead: list[str]) -> None:
        """Give back to the broker the messages the *dead* daemons took from
        these queues and had not finished (Redis, SQL), while the others
        consume, on a thread of its own: the heartbeat's must not wait for
        the broker. If it fails, the daemons' next start or reconnect to the
        broker gives them back (they release every dead consumer's claims)."""
        if not dead:
            return

        def release() -> None:
            try:
                released = release_dead_claims(self.settings, self.queues, dead)
            except Exception as exc:  # noqa: BLE001 - logged; a reconnect releases them too
                log.warning(
                    "could not give back the broker messages of dead daemon(s) %s (%s); a daemon's "
                    "next start or reconnect to the broker does",
                    ", ".join(dead),
                    exc,
                )
                return
            if released:
                log.warning(
                    "%d message(s) taken by dead daemon(s) %s and not finished are back in queues %s",
                    released,
                    ", ".join(dead),
                    ", ".join(self.queues),
                )

        threading.Thread(target=release, name="pscheduler-release-claims", daemon=True).start()

    def _housekeeping(self) -> None:
        if self.membership is None or self.coordinating:
            self.housekeeping.run()

    def stop(self, timeout: float | None = None) -> None:
        """Stop scheduling, let running jobs finish (up to *timeout*), release."""
        stopping = self.persist.stopping
        if stopping.is_set():
            return
        stopping.set()
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        if self.aps.running:
            self.aps.pause()
            deadline = time.monotonic() + timeout
            # Runs handed to the pool before the pause start after it: wait for those too.
            while (self.running_count() or self.runner.pending) and time.monotonic() < deadline:
                time.sleep(STOP_POLL)  # (stopping is set: its wait would not wait)
            if self.running_count():
                log.warning(
                    "%d job run(s) still running after scheduler.shutdown_timeout (%gs)", self.running_count(), timeout
                )
            self.aps.shutdown(wait=False)
        self.runs.stop()
        if self.membership is not None and not self.lease_lost.is_set():
            try:
                self.membership.leave()
                if self.coordinating:
                    self.lease.release()  # type: ignore[union-attr]
            except Exception:
                log.exception("could not leave the daemons; the others take over once this one's heartbeat expires")
        self.dispatcher.stop(timeout=5)
        self.db.dispose()
        log.info("scheduler %s stopped", self.settings.id)

    def running_count(self) -> int:
        """How many runs are going."""
        return self.events.running_count()

    def _renew_loop(self) -> None:
        assert self.membership is not None
        interval = self.settings.lease_ttl / 3
        while not self.persist.stopping.wait(interval):
            try:
                if not self.membership.renew():
                    log.critical(
                        "this daemon's heartbeat lapsed: the other daemons took its work over; stopping (queues %s)",
                        ", ".join(self.queues),
                    )
                    self.lease_lost.set()
                    return
            except Exception as exc:  # noqa: BLE001 - keep renewing whatever went wrong
                log.warning("could not renew this daemon's heartbeat (%s); runs pause once it lapses", exc)
                continue
            try:
                self._coordinate()
            except Exception:  # noqa: BLE001 - the next beat tries again
                log.exception("the single-owner work failed; trying again at the next heartbeat")

    def _on_max_instances(self, event: JobSubmissionEvent) -> None:
        # Dispatched after APScheduler updated the job: gone means these were its last runs.
        job = self.aps.get_job(event.job_id)
        self.runner.max_instances_reached(event.job_id, event.jobstore, job, event.scheduled_run_times)

    # -- requests from the consumer ---------------------------------------------------
    def submit(self, request: JobRequest) -> str:
        """Carry out one decoded request; return what happened (for logs).

        :raises InvalidJob: the request cannot be carried out (dead-letter it).
        :raises sqlalchemy.exc.SQLAlchemyError: the job store failed (retry later).
        """
        if request.op == "add":
            return self.intake.add(request)
        if request.op == "cancel":
            return self.management.cancel(request)
        if request.op in MANAGEMENT_OPS:
            return self.management.manage(request)
        return self.management.message(request)

    def submit_many(self, requests: list[JobRequest]) -> list[str | Exception]:
        """Carry out *requests* in order, as :meth:`submit` would one by one
        (see :meth:`.Intake.submit_many`: the run-now jobs among them stored
        together)."""
        return self.intake.submit_many(requests, self.submit)

    def restore_parked(self) -> int:
        """See :meth:`.Recovery.restore_parked`."""
        return self.recovery.restore_parked()
