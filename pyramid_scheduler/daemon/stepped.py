"""Stepped: the daemon's engine, run step by step in the caller's thread.

What :mod:`pyramid_scheduler.testing` runs jobs with: the very
:class:`~pyramid_scheduler.daemon.engine.Engine` of ``pscheduler`` -- its
intake and management of requests, the scheduling of due jobs
(:class:`~pyramid_scheduler.daemon.scheduling.DueScheduler` and the catch-up
plan), the :class:`~pyramid_scheduler.daemon.execution.Runner`, the retries,
the declared jobs' reconciliation and the ledger -- with four of its parts
swapped so that nothing runs on a thread of its own:

* :class:`SteppedScheduler`: the scheduler without its thread; the due jobs
  are handed over when :meth:`SteppedEngine.process_due` says so, at the
  time of the engine's clock;
* :class:`InlineExecutor`: the worker pool without its threads; a batch
  handed over runs in the caller's thread, after the scheduler's round, and
  ends through the pool's own done-callback;
* :class:`InlineRunner`: the runner, which in a test may run a job inside
  the caller's transaction or request (see :meth:`InlineRunner.context`);
* :class:`InlineDispatcher`: events delivered as they are emitted.

The job store is the SQL one on an in-memory SQLite database (``sqlite://``,
one connection), so the records (``get_job``, ``get_runs``) are the ledger's
own; the queues are not leased (one process, nothing to fence).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import datetime, timezone
from typing import Any

from apscheduler.job import Job
from apscheduler.schedulers.base import BaseScheduler
from pyramid.threadlocal import manager as threadlocal_manager

from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon.clock import Clock
from pyramid_scheduler.daemon.context import job_context, request_context
from pyramid_scheduler.daemon.engine import Engine
from pyramid_scheduler.daemon.execution import JobExecutor, Runner, RunRecord
from pyramid_scheduler.daemon.flow import PriorityWork, work_rank
from pyramid_scheduler.daemon.scheduling import DueScheduler
from pyramid_scheduler.events import EventDispatcher
from pyramid_scheduler.store.jobstores import QueueJobStore
from pyramid_scheduler.store.lease import Lease
from pyramid_scheduler.store.membership import Membership
from pyramid_scheduler.web.proxy import SchedulerProxy
from pyramid_scheduler.web.tx import transaction_open
from pyramid_scheduler.wire.refs import takes_request

#: What becomes of a run, by the event that ends it (the testing kit's ``runs``).
RUN_STATUS = {
    Event.JOB_EXECUTED: "done",
    Event.JOB_ERROR: "failed",
    Event.JOB_MISSED: "missed",
    Event.JOB_EXPIRED: "expired",
    Event.JOB_INTERRUPTED: "interrupted",
}


class InlineDispatcher(EventDispatcher):
    """Delivers each event in the thread that emits it, at once; *record*,
    if set, sees it first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.record: Callable[[Event], None] | None = None

    def start(self) -> None:
        pass

    def emit(self, event: Event) -> None:
        if self.record is not None:
            self.record(event)
        self.deliver(event)

    def stop(self, timeout: float | None = None) -> None:
        pass


class SteppedScheduler(DueScheduler):
    """The :class:`DueScheduler` without its thread: :meth:`process_due`
    makes its round once, at its clock's time."""

    def start(self, paused: bool = False) -> None:
        BaseScheduler.start(self, paused)  # not BackgroundScheduler's: no thread

    def shutdown(self, wait: bool = True) -> None:
        BaseScheduler.shutdown(self, wait)

    def wakeup(self) -> None:
        self._reload = True  # DueScheduler's: the stores changed, load them again at the next round

    def notice(self) -> None:
        pass  # process_due loads every window again

    def process_due(self) -> None:
        """Hand every job due at the clock's time to the executor."""
        self._reload = True
        self._process_jobs()


class InlineRunner(Runner):
    """The :class:`Runner`, which runs a job inside the caller's transaction
    when there is one, or with the request of ``run_pending(request=...)``."""

    #: The request to run every job with (``run_pending(request=...)``).
    request: Any = None

    @contextlib.contextmanager
    def context(self, job: Job | None = None) -> Iterator[Any]:
        """As the daemon's, except: under ``run_pending(request=...)``, that
        request is current (and given to a function that takes one), in its
        transaction; a job without a ``request`` parameter run from inside
        an open transaction (an eager job added with ``immediate=True`` in a
        view under pyramid_tm) joins it: starting its own would abort the
        caller's."""
        request = self.request
        if request is not None:
            threadlocal_manager.push({"registry": self.registry, "request": request})
            try:
                yield request if job is not None and takes_request(job.func) else None
            finally:
                threadlocal_manager.pop()
            return
        if job is not None and takes_request(job.func):
            with request_context(self.registry) as made:
                yield made
            return
        with job_context(self.registry, own_transaction=not transaction_open()):
            yield None


class InlineExecutor(JobExecutor):
    """The worker pool without threads: a batch handed over waits until
    :meth:`run_queued`, which runs it in the caller's thread."""

    def __init__(self, runner: Runner, max_workers: int) -> None:
        super().__init__(runner, max_workers)
        #: The batches handed over, taken by priority (the engine's, with
        #: the aging on its clock: see :mod:`pyramid_scheduler.daemon.flow`).
        self.queued = PriorityWork(work_rank({}), 60.0)

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        self.runner.submitted()
        self.queued.put((job, run_times))

    def run_queued(self) -> int:
        """Run the batches handed over, in order, each ended as the pool ends
        it (:meth:`JobExecutor.batch_done`); how many ran."""
        count = 0
        while self.queued:
            job, run_times = self.queued.get_nowait()
            future: Future[list[RunRecord]] = Future()
            try:
                future.set_result(self.runner.run(job, run_times))
            except Exception as exc:  # noqa: BLE001 - as in the pool: ended with the error
                future.set_exception(exc)
            self.batch_done(job, future)
            count += 1
        return count


class RecordClock:
    """The records' times on the fake clock: each stamp the clock's time, at
    least a microsecond after the one before, so records changed while the
    clock stands still keep the order they were changed in."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._last = float("-inf")
        self._lock = threading.Lock()

    def stamp(self) -> float:
        with self._lock:
            self._last = max(self.clock.now().timestamp(), self._last + 1e-6)
            return self._last


class SteppedEngine(Engine):
    """The daemon's :class:`Engine` with the parts above, on *clock*, for the
    queues of *proxy* (whose ``scheduler.jobstore.url`` must be ``sqlite://``).

    :param owner: the name the queues' lease rows give (``get_daemons()``).
    """

    dispatcher_class = InlineDispatcher
    scheduler_class = SteppedScheduler
    executor_class = InlineExecutor
    runner_class = InlineRunner
    leased = False

    def __init__(self, proxy: SchedulerProxy, clock: Clock, owner: str) -> None:
        super().__init__(proxy, clock=clock)
        self.owner = owner
        assert isinstance(self.dispatcher, InlineDispatcher)
        assert isinstance(self.aps, SteppedScheduler)
        assert isinstance(self.executor, InlineExecutor)
        assert isinstance(self.runner, InlineRunner)
        self.inline_dispatcher = self.dispatcher
        self.stepped = self.aps
        self.inline_executor = self.executor
        self.inline_runner = self.runner
        self.ledger.now = RecordClock(clock).stamp
        settings = proxy.settings
        self.executor.queued = PriorityWork(
            work_rank(settings.priorities), settings.priority_aging, lambda: clock.now().timestamp()
        )

    def start(self) -> None:
        """Store the declared jobs, as the daemon does when it starts, and let
        the scheduler take due jobs (nothing runs until :meth:`process_due`)."""
        self.stepped.start(paused=True)
        # Lease and daemon rows, for get_daemons(): this process runs every queue, for ever.
        Lease(self.ledger, self.queues, self.owner, math.inf).try_acquire()
        Membership(self.ledger, self.queues, self.owner, math.inf).join()
        self.reconcile(self.proxy.declared)
        self.stepped.resume()

    def stop(self, timeout: float | None = None) -> None:
        if self.stepped.running:
            self.stepped.shutdown(wait=False)
        self.db.dispose()

    def next_due(self) -> datetime | None:
        """The earliest next run time of the jobs stored (UTC), or None; now
        if runs were handed to the worker pool already (a run-now job goes
        straight there) and wait for :meth:`process_due`."""
        if self.inline_executor.queued:
            return self.clock.now()
        times = [store.get_next_run_time() for store in self.stores.values() if isinstance(store, QueueJobStore)]
        return min((when.astimezone(timezone.utc) for when in times if when is not None), default=None)

    def process_due(self) -> int:
        """Hand over every job due at the clock's time and run its batches in
        this thread, as the daemon's scheduler thread and worker pool would;
        how many batches ran."""
        self.stepped.process_due()
        return self.inline_executor.run_queued()
