"""Testing: the daemon's engine in the caller's thread, for an application's own tests.

``config.include("pyramid_scheduler.testing")`` (or ``pyramid.includes =
pyramid_scheduler.testing`` in a test INI) puts a :class:`TestingScheduler`
at ``registry.scheduler`` and ``request.scheduler``. It *is* a
:class:`~pyramid_scheduler.web.proxy.SchedulerProxy` with only the publish step
replaced: every ``add_*_job`` and ``cancel_job`` call runs the real checks
and builds the real version 1 message, which is then decoded by the daemon's
own :func:`~pyramid_scheduler.wire.messages.decode` and handed to the
engine ``pscheduler`` runs (:class:`~pyramid_scheduler.daemon.stepped.SteppedEngine`),
with its job store in memory, jobs run in the calling thread and the fake
clock (:class:`FakeClock`) as its time: intake, management, scheduling with
catch-up, runs, retries, declared jobs and records are the daemon's code,
and the same events reach the listeners and ``registry.notify``
subscribers. No broker, no database file, no sleeping.

Tests that run each request inside a transaction of their own which never
commits (the Pyramid starter's ``testapp`` fixture) see what their
requests scheduled with :meth:`TestingScheduler.held`, run it inside that
transaction with ``run_pending(request=...)``, and start each test afresh
with :meth:`TestingScheduler.reset`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from pyramid.config import PHASE2_CONFIG

from pyramid_scheduler.api import Event, IScheduler
from pyramid_scheduler.daemon.stepped import RUN_STATUS, SteppedEngine
from pyramid_scheduler.settings import SchedulerSettings
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.triggers.build import build_trigger, to_datetime
from pyramid_scheduler.web.proxy import SchedulerProxy
from pyramid_scheduler.web.tx import Pending, current_transaction, transaction_ending
from pyramid_scheduler.wire.messages import JobRequest, decode
from pyramid_scheduler.wire.refs import resolve_ref

__all__ = ["FakeClock", "TestingJob", "TestingScheduler", "includeme"]

#: What ``get_daemons()`` names as the owner of every queue.
OWNER = "pyramid_scheduler.testing"
#: Most runs one ``run_pending()`` or clock step makes (a runaway guard).
MAX_RUNS = 100_000
#: How long after it was sent the engine reads an add.
MOMENT = timedelta(microseconds=1)


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
    scheduler.declared = real.declared
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

    @contextlib.contextmanager
    def _later(self) -> Iterator[None]:
        """The clock a :data:`MOMENT` on, for the block."""
        self._now += MOMENT
        try:
            yield
        finally:
            self._now -= MOMENT

    def _reach(self, when: datetime) -> None:
        self._now = max(self._now, when.astimezone(timezone.utc))

    def __repr__(self) -> str:
        return f"<FakeClock {self._now.isoformat()}>"


@dataclass(frozen=True)
class TestingJob:
    """One job as the job store holds it (a snapshot; see :meth:`TestingScheduler.get_job`)."""

    __test__ = False  # not a pytest test class

    request: JobRequest
    func: Callable[..., Any]
    trigger: BaseTrigger
    options: dict[str, Any]
    next_run_time: datetime | None
    status: str
    runs: int
    created_at: float
    updated_at: float
    last_run_at: float | None
    result: str | None
    error: str | None
    attempt: int
    _row: dict[str, Any]

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def queue(self) -> str:
        return self.request.queue

    def row(self) -> dict[str, Any]:
        """The job's row in the ledger."""
        return dict(self._row)


class _InProcessPublisher:
    """Stands in for :class:`~pyramid_scheduler.brokers.connection.Publisher`: the
    message is decoded at the daemon's door and handed to the engine."""

    def __init__(self, scheduler: TestingScheduler) -> None:
        self.scheduler = scheduler

    def publish(self, body: bytes, queue: str, job_id: str, headers: dict[str, str] | None = None) -> None:
        request = decode(body)
        if request.mid in self.scheduler._released:
            # Taken from its transaction by ``run_pending(request=...)`` already.
            return
        self.scheduler.submit(request)
        if self.scheduler.eager and request.op in ("add", "run_now"):
            if self.scheduler.stepping_here():
                return  # added by a job this thread runs: the running loop runs it
            if transaction_ending():
                # Published by the after-commit hook of the caller's transaction
                # (transaction-aware enqueue): that transaction is over but still
                # the thread's, so the job runs, as in the daemon, in a thread of
                # its own, with its own transaction, waited for here.
                _in_own_thread(self.scheduler.run_pending)
            else:
                self.scheduler.run_pending()

    def close(self) -> None:
        pass


class TestingScheduler(SchedulerProxy):
    """A :class:`~pyramid_scheduler.web.proxy.SchedulerProxy` whose jobs the
    daemon's engine keeps and runs in the calling thread, on :attr:`clock`.

    :param eager: run due jobs as soon as they are added (default:
        ``scheduler.testing.eager``). Otherwise they run on
        :meth:`run_pending` or as :attr:`clock` advances.
    """

    __test__ = False  # not a pytest test class
    #: Lets pyramid_scheduler skip what needs a daemon (combined mode, event fan-out).
    in_process = True

    def __init__(self, settings: SchedulerSettings, registry: Any = None, eager: bool | None = None) -> None:
        # The job store is in memory, and no broker is reached.
        settings = replace(settings, jobstore_url="sqlite://", insecure=True)
        super().__init__(settings, registry)
        self.publisher = _InProcessPublisher(self)  # type: ignore[assignment]
        #: Run due jobs as soon as they are added.
        self.eager = settings.testing_eager if eager is None else eager
        #: The :class:`FakeClock`.
        self.clock = FakeClock(self)
        #: Every event delivered, in order.
        self.events: list[Event] = []
        #: Every run told by an event (and every run missed): ``job_id``, ``run_key``,
        #: ``scheduled_run_time``, ``status`` (``done``, ``failed`` -- a timed-out
        #: run too --, ``missed``, ``expired`` or ``interrupted``; a stopped run has
        #: no event: ``get_runs`` has it), ``result``, ``error``.
        self.runs: list[dict[str, Any]] = []
        self.runtime = self  # what combined mode checks: nothing else is started
        self._engine: SteppedEngine | None = None
        #: Held while a thread makes, steps or changes the engine: tests may
        #: add jobs from several threads (a threaded test server).
        self._lock = threading.RLock()
        #: The thread stepping the engine (running due jobs), if one is.
        self._stepping: int | None = None
        #: Message ids taken from a transaction by ``run_pending(request=...)``.
        self._released: set[str] = set()

    # -- the engine and the fake clock ------------------------------------------------
    @property
    def engine(self) -> SteppedEngine:
        """The daemon's engine this scheduler runs, started at first use
        (storing the declared jobs, as the daemon does at its start)."""
        with self._lock:
            if self._engine is None:
                engine = SteppedEngine(self, self.clock, OWNER)
                engine.inline_dispatcher.record = self._record
                self._engine = engine
                with self.clock._later():  # the daemon starts a moment after the application was configured
                    engine.start()
            return self._engine

    def now(self) -> datetime:
        return self.clock.now()

    def _time(self, value: Any, where: str) -> datetime:
        return to_datetime(value, self.settings.timezone, where).astimezone(timezone.utc)

    def _ledger(self) -> Ledger:
        return self.engine.ledger

    def _records(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The production records, with each job's ``options`` as well."""
        records = super()._records(rows)
        for row, record in zip(rows, records, strict=True):
            record["options"] = json.loads(row["request"]).get("options") or {}
        return records

    @property
    def jobs(self) -> dict[str, TestingJob]:
        """Every job stored, by id, in the order stored."""
        rows = sorted(self._ledger().list_jobs(None, None, MAX_RUNS), key=lambda row: row["created_at"])
        times = self._ledger().next_run_times(rows)
        return {row["id"]: self._job(row, times.get(row["id"])) for row in rows}

    def _job(self, row: dict[str, Any], next_run: float | None) -> TestingJob:
        request = decode(json.loads(row["request"]))
        assert request.trigger is not None and request.func is not None
        return TestingJob(
            request=request,
            func=resolve_ref(request.func),
            trigger=build_trigger(request.trigger, self.settings.timezone, anchor=request.accepted_at()),
            options=dict(request.options),
            next_run_time=None if next_run is None else datetime.fromtimestamp(next_run, timezone.utc),
            status=row["status"],
            runs=row["runs"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            last_run_at=row["last_run_at"],
            result=row["result"],
            error=row["error"],
            attempt=row["attempt"],
            _row=row,
        )

    # -- what the broker would carry to the daemon ------------------------------------
    def submit(self, request: JobRequest) -> None:
        """Carry out one decoded request with the daemon's engine, sent now
        by the fake clock."""
        with self._lock:
            engine, request = self.engine, replace(request, sent_at=self.now().isoformat())
            if request.op != "add":
                engine.submit(request)
                return
            # The daemon reads an add a moment after it was sent: a fire time at
            # the sending time (an interval's start) has passed by then.
            with self.clock._later():
                engine.submit(request)

    def _record(self, event: Event) -> None:
        self.events.append(event)
        status = RUN_STATUS.get(event.type)
        if status is not None:
            self.runs.append(
                {
                    "job_id": event.job_id,
                    "run_key": event.get("run_key"),
                    "scheduled_run_time": event.get("scheduled_run_time"),
                    "status": status,
                    "result": event.get("retval"),
                    "error": event.get("traceback") if status == "failed" else event.get("reason"),
                }
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
        runner = self.engine.inline_runner
        runner.request = request
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
            runner.request = None

    def _run_until(self, target: datetime) -> list[dict[str, Any]]:
        """Step the clock to each due time up to *target*, and have the engine
        run what is due there; the runs made."""
        if self.stepping_here():  # a job added by a running job: the outer loop runs it
            return []
        with self._lock:
            return self._step_until(target)

    def stepping_here(self) -> bool:
        """Is this thread running due jobs (so a job it adds runs in that loop)?"""
        return self._stepping == threading.get_ident()

    def _step_until(self, target: datetime) -> list[dict[str, Any]]:
        engine, start = self.engine, len(self.runs)
        self._stepping = threading.get_ident()
        try:
            while True:
                when = engine.next_due()
                if when is None or when > target:
                    break
                if len(self.runs) - start >= MAX_RUNS:
                    raise RuntimeError(
                        f"pyramid_scheduler.testing: {MAX_RUNS} runs in one step and more are due "
                        f"before {target.isoformat()}; advance the clock by less (an interval of "
                        "seconds over days makes a run per interval)"
                    )
                self.clock._reach(when)
                if not engine.process_due() and engine.next_due() == when:  # pragma: no cover - a bug
                    raise RuntimeError(f"pyramid_scheduler.testing: a job due at {when.isoformat()} is not handed over")
            self.clock._reach(target)
        finally:
            self._stepping = None
        return self.runs[start:]

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
        real time, as a new scheduler (whose declared jobs are stored again);
        listeners and ``eager`` are kept. For a scheduler that lives as long
        as its application (a session-scoped ``app`` fixture): reset it
        before each test.

        .. versionadded:: 1.0
        """
        with self._lock:
            if self._engine is not None:
                self._engine.stop()
                self._engine = None
        self.events.clear()
        self.runs.clear()
        self._released.clear()
        self.clock = FakeClock(self)

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.stop()
                self._engine = None
        super().shutdown(wait)

    close = shutdown

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
        for message in self._held_requests(txn):
            if message.mid not in self._released:
                self._released.add(message.mid)
                self.submit(message)
                released += 1
        return released

    def __repr__(self) -> str:
        return f"<TestingScheduler clock={self.clock.now().isoformat()}>"


def _in_own_thread(func: Callable[[], Any]) -> Any:
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
