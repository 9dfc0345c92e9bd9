"""Task decorators: ``@task`` with a result handle, ``@periodic`` and ``@cron``.

``@task(queue=..., retries=..., retry_delay=..., ttl=..., delay=...)`` (or a
bare ``@task``) turns a module-level function into a :class:`Task`: calling
it runs the function as it is, ``f.delay(*args, **kwargs)`` and
``f.apply_at(when, *args, **kwargs)`` send it to the daemon through
``add_async_job`` or ``add_date_job`` of the current registry's scheduler
(``pyramid.threadlocal.get_current_registry()``, a view's or a job's), or of
the one given with ``scheduler=`` or ``f.using(scheduler)``, and return a
:class:`JobHandle` that reads the job's record (``status``, ``ready``,
``result``, ``error``), waits for it (``wait``) or cancels it. Inside a
transaction the message waits for the commit as every ``add_*_job``
message does; the handle's id is known at once.

``@periodic(seconds=...)`` and ``@cron(crontab=... | fields)`` are
:class:`~pyramid_scheduler.web.declare.scheduled_job` under the names of
Django-Autotask's ``@periodic_task`` and ``@cron_task``: declarations
found by ``config.scan()``.

With ``scheduler.enabled = false`` nothing is published (see
:func:`run_disabled`): ``f.delay()`` checks the call as usual, then runs the
function at once in the caller and returns a finished handle.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
import traceback
from datetime import datetime, timedelta, timezone
from typing import Any

from pyramid.threadlocal import get_current_registry, get_current_request

from pyramid_scheduler.exceptions import InvalidJob, JobTimeout, SchedulerError
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.web.declare import scheduled_job
from pyramid_scheduler.wire.messages import JobRequest, check_name
from pyramid_scheduler.wire.options import option_problem
from pyramid_scheduler.wire.refs import importable_name, resolve_ref, with_request

__all__ = ["JobHandle", "Task", "cron", "periodic", "run_disabled", "task"]

log = get_logger(__name__)

#: A handle's status while the job has no record yet: its message is held by
#: the caller's transaction or on its way to the daemon.
PENDING = "pending"


class Task:
    """What :func:`task` gives a function: its options and the methods that
    send it to the daemon. The decorated name is a plain function (so the
    daemon and APScheduler import and call it as any job function) that
    carries this object's :meth:`delay`, :meth:`apply_at`, :meth:`using`
    and :meth:`scheduler`, and the object itself as ``f.task``.

    :ivar func: the function.
    :ivar queue: the queue of its jobs (``None``: the first of ``scheduler.queues``).
    :ivar options: the job options each job gets (``retries``,
        ``retry_delay``, ``ttl``, as far as given).
    :ivar countdown: the ``delay=`` of :func:`task`, in seconds (0: run at once).
    """

    def __init__(
        self,
        func: Any,
        queue: str | None = None,
        retries: int | None = None,
        retry_delay: float | None = None,
        ttl: float | None = None,
        delay: float | timedelta = 0,
        scheduler: Any = None,
    ) -> None:
        module, qualname = importable_name(func)
        name = f"{module}:{qualname}"
        if "." in qualname:
            raise InvalidJob(f"@task {name}: decorate a module-level function, not a method")
        if queue is not None:
            check_name(queue, f"@task {name}: queue")
        self.countdown = _seconds(delay, f"@task {name}: delay")
        options = {"retries": retries, "retry_delay": retry_delay, "ttl": ttl}
        self.options = {key: value for key, value in options.items() if value is not None}
        problem = option_problem(self.options, "date" if self.countdown else "now")
        if problem:
            raise InvalidJob(f"@task {name}: {problem}")
        self.func = func
        self.queue = queue
        self.name = name
        self._scheduler = scheduler

        @functools.wraps(func)
        def decorated(*args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs)

        for method in ("delay", "apply_at", "using", "scheduler"):
            setattr(decorated, method, getattr(self, method))
        decorated.task = self  # type: ignore[attr-defined]
        # What APScheduler and the producer check arguments against (they do
        # not follow __wrapped__).
        decorated.__signature__ = inspect.signature(func)  # type: ignore[attr-defined]
        #: The decorated function: what the job's message names.
        self.decorated = decorated

    def using(self, scheduler: Any) -> Task:
        """This task, sending its jobs through *scheduler* (such as
        ``request.scheduler`` or ``env["registry"].scheduler`` in a script):
        ``f.using(scheduler).delay(...)``."""
        bound = object.__new__(Task)
        bound.__dict__.update(self.__dict__)
        bound._scheduler = scheduler
        return bound

    def delay(self, /, *args: Any, **kwargs: Any) -> JobHandle:
        """Run ``f(*args, **kwargs)`` in the daemon: at once, or ``delay=``
        seconds from now if the decorator says so (``add_async_job`` or
        ``add_date_job``, with the task's queue and options).

        :raises InvalidJob: the arguments are refused (not JSON, not the
            function's signature) or too large.
        :raises InvalidQueue: the task's queue is not in ``scheduler.queues``.
        :raises EnqueueError: the broker did not take the job in time.
        :raises SchedulerError: there is no scheduler to send it through.
        """
        if self.countdown:
            return self._send("date", args, kwargs, delay=self.countdown)
        return self._send("async", args, kwargs)

    def apply_at(self, when: Any, /, *args: Any, **kwargs: Any) -> JobHandle:
        """Run ``f(*args, **kwargs)`` in the daemon at *when* (what
        ``add_date_job`` takes: a datetime, an ISO string or an epoch number);
        the decorator's ``delay=`` does not apply. Raises as :meth:`delay`."""
        return self._send("date", args, kwargs, date=when)

    def scheduler(self) -> Any:
        """The scheduler :meth:`delay` uses: the one given, else the current
        registry's.

        :raises SchedulerError: the current registry has no scheduler.
        """
        if self._scheduler is not None:
            return self._scheduler
        scheduler = getattr(get_current_registry(), "scheduler", None)
        if scheduler is None or not hasattr(scheduler, "settings"):
            raise SchedulerError(
                f"{self.name}.delay(): the current registry has no scheduler; call it while a request "
                "or job of an application that includes pyramid_scheduler runs (or inside "
                "pyramid.paster's bootstrap/prepare), or name one: "
                f"{self.func.__name__}.using(request.scheduler).delay(...)"
            )
        return scheduler

    def _send(self, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any], **when: Any) -> JobHandle:
        scheduler = self.scheduler()
        add = getattr(scheduler, f"add_{kind}_job")
        call = dict(args=list(args), kwargs=kwargs, queue=self.queue, **self.options, **when)
        if scheduler.settings.enabled:
            job_id = add(self.decorated, **call)
            return JobHandle(job_id, scheduler, self.queue or scheduler.settings.default_queue)
        with scheduler.capturing() as captured:
            add(self.decorated, **call)
        (request,) = captured
        return JobHandle(request.id, scheduler, request.queue, run_inline(scheduler, request))

    def __repr__(self) -> str:
        return f"<pyramid_scheduler.tasks.Task {self.name}>"


def task(func: Any = None, /, **options: Any) -> Any:
    """Make a module-level function a task, bare (``@task``) or with options
    (``@task(queue="mail", retries=3)``): it still runs as a plain function
    when called, and gains ``f.delay(*args, **kwargs)``, ``f.apply_at(when,
    *args, **kwargs)`` and ``f.using(scheduler)`` (see :class:`Task`).

    :param queue: the queue of its jobs (checked against ``scheduler.queues``
        when a job is sent).
    :param retries: how many times a failed run is run again.
    :param retry_delay: seconds before a retry.
    :param ttl: seconds the job's record (its status, result and error) is
        kept once it has finished, instead of ``scheduler.result_ttl``: the
        job option ``ttl`` (Django-Autotask's ``ttl``).
    :param delay: seconds (or a :class:`~datetime.timedelta`) from
        :meth:`Task.delay` to the run; 0 runs it at once.
    :param scheduler: send the jobs through this scheduler rather than the
        current registry's.
    :raises InvalidJob: at decoration, for a lambda, a nested function, a
        method or a function in ``__main__`` (the daemon must import it by
        ``module:qualname``), or an option refused, naming it.

    .. versionadded:: 1.0
    """
    if func is None:
        return lambda wrapped: Task(wrapped, **options).decorated
    return Task(func, **options).decorated


class JobHandle:
    """What :meth:`Task.delay` returns: one job, read back from its record.

    Also made from any job id: ``JobHandle(scheduler.add_async_job(...),
    scheduler)``. Its properties read the job store (``get_job``) each time
    until the job has finished, then keep the final record.

    :param job_id: the job's id.
    :param scheduler: the scheduler that reads its record.
    :param queue: its queue (for :meth:`cancel`; ``None``: every queue).
    :param outcome: the finished record of a job run in the caller
        (``scheduler.enabled = false``).
    """

    def __init__(
        self, job_id: str, scheduler: Any, queue: str | None = None, outcome: dict[str, Any] | None = None
    ) -> None:
        self.id = job_id
        self.scheduler = scheduler
        self.queue = queue
        self._final = outcome

    @property
    def record(self) -> dict[str, Any] | None:
        """The job's record (see ``get_job``), or ``None`` before the daemon
        has stored it (or after its ``ttl``)."""
        if self._final is not None:
            return self._final
        record = self.scheduler.get_job(self.id)
        if record is not None and record["status"] in _final_statuses():
            self._final = record
        return record

    @property
    def status(self) -> str:
        """``pending`` (not stored yet: held until the transaction commits,
        or on its way), then the record's: ``scheduled`` (waiting), ``running``,
        ``done``, ``failed``, ``canceled``, ``missed``, ``interrupted``, ..."""
        record = self.record
        return PENDING if record is None else str(record["status"])

    @property
    def ready(self) -> bool:
        """True once the job has finished (whatever the outcome)."""
        return self.status in _final_statuses()

    @property
    def result(self) -> Any:
        """What the function returned (as JSON brought it back), once
        ``done``; else ``None``."""
        record = self.record
        return record["result"] if record is not None and record["status"] == "done" else None

    @property
    def error(self) -> str | None:
        """Why the job did not succeed: for a failed run, the exception's
        last line (``"ValueError: no such user"``); for a missed,
        interrupted or parked job, the reason. ``None`` otherwise. The whole
        traceback is :attr:`traceback`."""
        record = self.record
        if record is None or record["status"] == "done" or not record.get("error"):
            return None
        return error_message(str(record["error"]))

    @property
    def traceback(self) -> str | None:
        """The failed run's whole traceback, as recorded (or ``None``)."""
        record = self.record
        return None if record is None or record["status"] == "done" else record.get("error")

    def wait(self, timeout: float | None = 30.0, interval: float = 1.0) -> JobHandle:
        """Wait until the job has finished; return this handle.

        The job store is polled, first every 50 ms, then less often, up to
        every *interval* seconds (``scheduler.wait``). Under
        :mod:`pyramid_scheduler.testing` nothing sleeps: the due jobs are
        run, and the fake clock moves on to the job's run time if that is
        within *timeout*.

        :param timeout: seconds; ``None``: no limit.
        :raises JobTimeout: (a :class:`TimeoutError`) the job did not finish
            in time; it is not canceled.
        """
        if self._final is not None:
            return self
        if getattr(self.scheduler, "in_process", False):
            self._final = self._wait_on_fake_clock(timeout)
        else:
            self._final = self.scheduler.wait(self.id, timeout, interval)
        return self

    def _wait_on_fake_clock(self, timeout: float | None) -> dict[str, Any]:
        scheduler = self.scheduler
        limit = None if timeout is None else scheduler.now() + timedelta(seconds=_seconds(timeout, "timeout"))
        while True:
            scheduler.run_pending()
            record = scheduler.get_job(self.id)
            if record is not None and record["status"] in _final_statuses():
                return record  # type: ignore[no-any-return]
            due = None if record is None else record.get("next_run_time")
            when = None if due is None else datetime.fromtimestamp(due, timezone.utc)
            if when is None or (limit is not None and when > limit):
                raise JobTimeout(self.id, float(timeout or 0), record)
            scheduler.clock.advance_to(max(when, scheduler.now()))

    def cancel(self) -> None:
        """Cancel the job (``cancel_job``): it runs no more, and a run in
        progress is asked to stop (:func:`pyramid_scheduler.should_stop`).
        Nothing for a job that has finished."""
        if self._final is None:
            self.scheduler.cancel_job(self.id, queue=self.queue)

    def __repr__(self) -> str:
        state = self._final["status"] if self._final is not None else "?"
        return f"<JobHandle {self.id} {state}>"


class periodic(scheduled_job):  # noqa: N801 - a decorator, named like scheduled_job
    """Run the decorated function every *seconds* (Django-Autotask's
    ``@periodic_task``): a declared interval job, registered by
    ``config.scan()``; takes the other arguments of
    :func:`~pyramid_scheduler.web.declare.add_scheduled_job` (``id``,
    ``queue``, the other interval units, job options)::

        @periodic(seconds=600)
        def clean_up(): ...

    :param seconds: the interval (default an hour, unless another unit such
        as ``minutes=`` is given).
    :param start_now: ``True``: the first run is as soon as the declaration
        is stored, then every interval; ``False``: one interval after.

    .. versionadded:: 1.0
    """

    def __init__(self, seconds: float | None = None, start_now: bool = False, **params: Any) -> None:
        if not isinstance(start_now, bool):
            raise InvalidJob(f"@periodic: start_now: expected True or False, got {start_now!r}")
        units = ("weeks", "days", "hours", "minutes")
        if seconds is None and not any(params.get(unit) for unit in units):
            seconds = 3600
        if seconds is not None:
            params["seconds"] = seconds
        if start_now:
            params["start_now"] = True
        super().__init__("interval", **params)


class cron(scheduled_job):  # noqa: N801 - a decorator, named like scheduled_job
    """Run the decorated function on a cron schedule (Django-Autotask's
    ``@cron_task``): ``@cron(crontab="30 7 * * *")``, or the cron fields of
    ``add_cron_job`` (``@cron(minute="*/15", hour="8-18")``) or its
    calendar (``weekdays=``, ``time_of_day=``); a declared cron job,
    registered by ``config.scan()``, taking the other arguments of
    :func:`~pyramid_scheduler.web.declare.add_scheduled_job`.

    .. versionadded:: 1.0
    """

    def __init__(self, crontab: str | None = None, **params: Any) -> None:
        if crontab is not None:
            params["crontab"] = crontab
        super().__init__("cron", **params)


def run_inline(scheduler: Any, request: JobRequest) -> dict[str, Any]:
    """Run a checked job request in the caller, as a plain call (``scheduler.enabled
    = false``), and return its finished record: ``status`` (``done`` or
    ``failed``), ``result``, ``error`` (the traceback). A failure is logged,
    not raised, as the daemon would."""
    assert request.func is not None
    func = resolve_ref(request.func)
    args, kwargs = list(request.args), dict(request.kwargs)
    current = get_current_request()
    if current is not None:
        args, kwargs = with_request(func, args, kwargs, current)
    delegator = scheduler.settings.delegator
    stamp = time.time()
    record: dict[str, Any] = {"id": request.id, "queue": request.queue, "func": request.func, "runs": 1}
    record.update(created_at=stamp, args=request.args, kwargs=request.kwargs, trigger=request.trigger)
    try:
        result = delegator(func, args, kwargs) if delegator is not None else func(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - recorded as the run's outcome, as the daemon does
        text = "".join(traceback.format_exception(exc))
        log.error("job %s: %s failed (scheduler.enabled = false: run inline)\n%s", request.id, request.func, text)
        record.update(status="failed", result=None, error=text)
    else:
        record.update(status="done", result=result, error=None)
    record.update(updated_at=time.time(), last_run_at=stamp)
    return record


def run_disabled(scheduler: Any, request: JobRequest) -> None:
    """What ``scheduler.enabled = false`` does with a checked message in
    place of publishing it: a run-now job is run at once (:func:`run_inline`),
    a scheduled one is logged as not scheduled, anything else is dropped."""
    if request.op != "add":
        log.debug("scheduler.enabled = false: %s %s not sent", request.op, request.id)
        return
    kind = (request.trigger or {}).get("type")
    if kind == "now":
        run_inline(scheduler, request)
        return
    log.warning("scheduler.enabled = false: job %s (%s, %s job) is not scheduled", request.id, request.func, kind)


def error_message(text: str) -> str:
    """The exception line(s) of a traceback (``"ValueError: boom"``); other
    text (a reason) as it is."""
    lines = text.rstrip().splitlines()
    if not lines or not lines[0].startswith("Traceback"):
        return text.strip()
    last_frame = max((i for i, line in enumerate(lines) if line.startswith(" ")), default=0)
    return "\n".join(lines[last_frame + 1 :]).strip() or text.strip()


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidJob(f"{where}: expected seconds (0 or more) or a timedelta, got {value!r}")
    return float(value)


def _final_statuses() -> tuple[str, ...]:
    from pyramid_scheduler.store.tables import FINAL

    return FINAL
