"""The producer: ``registry.scheduler``, used from views and scripts.

Every ``add_*_job`` call checks its request right here, in the calling
process: the callable must be importable by ``module:qualname``, the arguments
must be JSON, the trigger is built with APScheduler (so a bad cron field or
date raises in the view), the queue must be configured and the message must
fit ``scheduler.max_message_size``. Only then is one version 1 JSON message
published (:mod:`pyramid_scheduler.brokers.connection`). The call returns the job id once
the broker holds the message, or raises :class:`~.exceptions.EnqueueError`
within ``scheduler.broker.timeout``. Inside a transaction (pyramid_tm) the
checked message waits for the commit instead (:mod:`pyramid_scheduler.web.tx`).
The methods that read job records back come from
:class:`~pyramid_scheduler.web.records.JobRecords`, those that manage a
stored job (pause, resume, run now, reschedule, retry) from
:class:`~pyramid_scheduler.web.manage.JobManagement`.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

from pyramid_scheduler import tracing
from pyramid_scheduler.brokers.connection import Publisher
from pyramid_scheduler.events import Listener, Listeners
from pyramid_scheduler.exceptions import InvalidJob, InvalidQueue
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.settings import SchedulerSettings
from pyramid_scheduler.triggers.forms import (
    cron_args,
    date_args,
    interval_args,
    no_other_arguments,
    schedule_args,
    schedule_spec,
)
from pyramid_scheduler.triggers.preview import spec_fire_times
from pyramid_scheduler.web.flows import FlowMethods
from pyramid_scheduler.web.manage import JobManagement
from pyramid_scheduler.web.records import JobRecords
from pyramid_scheduler.web.tx import check_delivery, current_transaction, hold
from pyramid_scheduler.wire.flows import flow_problem
from pyramid_scheduler.wire.limits import resolve_keys
from pyramid_scheduler.wire.messages import JobRequest, check_json, check_name, new_id
from pyramid_scheduler.wire.options import expires_at, option_problem
from pyramid_scheduler.wire.refs import callable_ref, check_arguments, resolve_ref

log = get_logger(__name__)


class SchedulerProxy(FlowMethods, JobManagement, JobRecords):
    """The object at ``registry.scheduler``.

    :param settings: the parsed ``scheduler.*`` settings.
    :param registry: the application registry (jobs run with it current).
    """

    def __init__(self, settings: SchedulerSettings, registry: Any = None) -> None:
        self.settings = settings
        self.registry = registry
        self.listeners = Listeners()
        self.publisher = Publisher(settings)
        #: The running engine when this process consumes (combined mode or
        #: ``pscheduler``), else ``None``.
        self.runtime: Any = None
        self._service: Any = None
        self._subscriber: Any = None
        #: Config-time schedules by job id (:mod:`pyramid_scheduler.web.declare`).
        self.declared: dict[str, JobRequest] = {}
        self._captured = threading.local()
        #: Called with each request ``add_*_job`` published and its kind
        #: (``now``, ``date``, ``interval``, ``cron``): the enqueue counter of
        #: :mod:`pyramid_scheduler.metrics`.
        self.on_enqueue: list[Callable[[JobRequest, str], None]] = []

    @property
    def queues(self) -> tuple[str, ...]:
        return self.settings.queues

    # -- adding jobs ------------------------------------------------------------------
    def add_async_job(
        self,
        func: Any,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        queue: str | None = None,
        **options: Any,
    ) -> str:
        """Run ``func(*args, **kwargs)`` as soon as possible, in the daemon.

        Inside a transaction the job is published when it commits (nothing if
        it aborts), unless the option ``immediate=True`` is given; the option
        ``tm=`` names the transaction manager to wait for (a script's own
        ``transaction.TransactionManager``). The same holds for every
        ``add_*_job`` (see :ref:`transactional-enqueue`).

        With the option ``durable=False`` (or ``scheduler.durable = false``)
        the daemon runs the job straight from its message and records it
        after the run: lower latency, at most once, lost if the daemon dies
        before the run ends (see :ref:`fast-lane`). Not with the options the
        daemon keeps in the job store: ``retries=``, ``timeout=``,
        ``priority=``, ``expires=``, the limits (``max_concurrency=``,
        ``concurrency_key=``, ``rate_limit=``, ``rate_key=``) or ``then=``;
        ``scheduler.durable = false`` leaves such jobs durable.

        ``timeout=`` (seconds) asks each run to stop past it (see
        :doc:`progress`); ``max_concurrency=`` and ``rate_limit=`` (here and on
        ``add_date_job``) limit the runs across daemons (see :doc:`flow`).

        With ``then=scheduler.step(...)`` (here and on ``add_date_job``) the
        job starts a chain of two: once it succeeds, the step runs with its
        result as its first argument, as job ``<job id>-then`` (see
        :doc:`flow`).

        :returns: the job id.
        :raises InvalidJob: the callable, arguments or an option is refused.
        :raises InvalidQueue: *queue* is not in ``scheduler.queues``.
        :raises EnqueueError: the broker did not take the job in time (not
            raised for a job held until the commit: see the ERROR log then).

        With ``priority=`` (0 to 9, higher first; default
        ``scheduler.priority.<queue>``, else 0) the job starts before the
        lower ones waiting for a worker; with ``expires=`` (seconds from now,
        or an aware datetime; also on ``add_date_job``) a job not started by
        then ends ``expired``, never run late (see :doc:`flow`).

        .. versionadded:: 1.0 ``durable=False``, ``timeout``, ``priority``,
           ``expires``, the limits and ``then=``.
        """
        return self._add("now", func, args, kwargs, queue, options, run_date=self.now())

    def add_date_job(
        self,
        func: Any,
        date: Any = None,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        queue: str | None = None,
        **options: Any,
    ) -> str:
        """Run ``func`` once at *date*, or after a delay.

        :param date: an aware or naive :class:`~datetime.datetime` (naive ones are
            read in ``scheduler.timezone``), an ISO 8601 string, or an epoch
            number (``time.time() + 3600``). A date in the past runs at once if
            it is within the misfire grace time, else is reported missed.
        :param options: besides the job options, a delay from now instead of
            *date*: ``delay`` (seconds, or a :class:`~datetime.timedelta`),
            ``days``, ``hours``, ``minutes``, ``seconds`` and ``millis``, added
            up (``add_date_job(func, hours=1, minutes=30)``).
        :raises InvalidJob: both a date and a delay, or neither, naming them.

        .. versionchanged:: 1.0 *date* may be left out for a delay.
        """
        return self._add(
            "date", func, args, kwargs, queue, options, **date_args(options, date, self.settings.timezone, self.now())
        )

    def add_interval_job(
        self,
        func: Any,
        start_date: Any = None,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        queue: str | None = None,
        weeks: float = 0,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
        **options: Any,
    ) -> str:
        """Run ``func`` every interval.

        Without *start_date* the first run is one interval after this call.
        With a future *start_date* the first run is at *start_date*; with a
        past one, runs follow its grid (``start_date + k * interval``) from
        the next point after now.

        With the option ``fixed_delay=True`` each later run is due one
        interval after the previous run *ended* (done or failed), so runs
        never overlap and a slow run pushes the next ones back (see
        :ref:`fixed-delay`).

        .. versionadded:: 1.0 ``fixed_delay``.
        """
        fields = dict(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)
        return self._add(
            "interval",
            func,
            args,
            kwargs,
            queue,
            options,
            **interval_args(options, start_date, fields, self.settings.timezone, self.now()),
        )

    def add_cron_job(
        self,
        func: Any,
        start_date: Any = None,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        queue: str | None = None,
        year: Any = None,
        month: Any = None,
        day: Any = None,
        week: Any = None,
        day_of_week: Any = None,
        hour: Any = None,
        minute: Any = None,
        second: Any = None,
        **options: Any,
    ) -> str:
        """Run ``func`` on a cron schedule: the fields of
        :class:`apscheduler.triggers.cron.CronTrigger`, or ``crontab="30 7 * * mon"``,
        or a calendar: ``weekdays`` (ISO numbers, 1 = Monday ... 7 = Sunday, or
        names ``"mon"`` ... ``"sun"``) and/or ``monthdays`` (1 to 31, or
        ``"last"``), at ``time_of_day`` (``(7, 30)``, ``(7, 30, 15)``,
        ``"07:30"`` or a :class:`datetime.time`; default midnight), in the
        job's ``timezone``. With both ``weekdays`` and ``monthdays`` a day
        must be both.

        .. versionchanged:: 1.0 ``weekdays``, ``monthdays`` and ``time_of_day``.
        """
        fields = dict(
            year=year, month=month, day=day, week=week, day_of_week=day_of_week, hour=hour, minute=minute, second=second
        )
        return self._add(
            "cron", func, args, kwargs, queue, options, **cron_args(options, start_date, fields, self.settings.timezone)
        )

    def cancel_job(self, job_id: str, queue: str | None = None, immediate: bool = False, tm: Any = None) -> str:
        """Cancel a job: it runs no more; a run in progress is asked to stop
        (:func:`pyramid_scheduler.should_stop` turns true in it, and
        :func:`~pyramid_scheduler.report_progress` raises
        :exc:`~pyramid_scheduler.JobStopped`) and, if it saw the request, is
        recorded ``stopped``; a job that does not look runs to its end: see
        :doc:`/progress`.

        Without *queue*, the request goes to every queue. Like ``add_*_job``,
        it waits for the current transaction's commit unless *immediate*, or
        for the commit of *tm*'s transaction if given.
        """
        check_name(job_id, "job_id")
        check_delivery(immediate, tm)
        for name in self._queues_for(queue):
            self._publish(JobRequest(op="cancel", id=job_id, queue=name), immediate, tm)
        return job_id

    def send_message(self, text: str, queue: str | None = None, immediate: bool = False, tm: Any = None) -> None:
        """Send a text message to the daemons (a MESSAGE event for listeners;
        ``print-jobs`` makes the daemon log its jobs). *immediate* and *tm*
        as for :meth:`cancel_job`."""
        check_delivery(immediate, tm)
        for name in self._queues_for(queue):
            self._publish(JobRequest(op="message", id=new_id(), queue=name, text=str(text)), immediate, tm)

    # -- previewing schedules ---------------------------------------------------------
    def preview(self, trigger: str | None = None, n: int = 10, **trigger_args: Any) -> list[datetime]:
        """The next *n* fire times of a schedule, as aware datetimes in its
        time zone, computed by the same APScheduler trigger the daemon would
        use (jitter left out). The arguments are those of
        :meth:`reschedule_job`: ``preview(cron="0 2 * * *",
        timezone="Europe/Paris")``, ``preview("interval", hours=6)``. Fewer than
        *n* when the schedule ends.

        :raises InvalidJob: the schedule is refused as ``add_*_job`` would refuse it.

        .. versionadded:: 1.0
        """
        kind, args = schedule_args(trigger, trigger_args, self.settings.timezone, self.now())
        spec = schedule_spec(kind, trigger_args, args, self.settings.timezone, self.now())
        no_other_arguments(kind, trigger_args)
        return spec_fire_times(spec, n, self.settings.timezone, now=self.now())

    def preview_job(self, job_id: str, n: int = 10) -> list[datetime]:
        """The next *n* fire times of a stored job, from the trigger in its
        record, in the job's time zone. A paused job: the times it would run
        at if resumed now. A finished job: ``[]``.

        :raises InvalidJob: the job store has no record of *job_id*.

        .. versionadded:: 1.0
        """
        from pyramid_scheduler.store.tables import LIVE

        row = self._ledger().get_job(job_id)
        if row is None:
            raise InvalidJob(f"job_id: the job store has no record of job {job_id!r}")
        if row["status"] not in LIVE:
            return []
        spec = json.loads(row["request"])["trigger"]
        created = datetime.fromtimestamp(row["created_at"], timezone.utc)
        return spec_fire_times(spec, n, self.settings.timezone, anchor=created, now=self.now())

    # -- listeners --------------------------------------------------------------------
    def add_listener(
        self,
        listener: Listener,
        events: Iterable[str] | None = None,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Call ``listener(event, *args, **kwargs)`` for each event whose type is
        in *events* (default: all), from the dispatcher thread of the process that
        runs the jobs."""
        self.listeners.add(listener, events, args, kwargs)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling *listener*."""
        self.listeners.remove(listener)

    addListener = add_listener  # noqa: N815 - the 0.3.4 name
    removeListener = remove_listener  # noqa: N815 - the 0.3.4 name

    def shutdown(self, wait: bool = True) -> None:
        """Stop the jobs running in this process (combined mode), if any, and
        release the broker connections."""
        service = getattr(self, "_service", None)
        if service is not None:
            service.stop()
            if wait:
                service.join(self.settings.shutdown_timeout + 10)
            self._service = None
        if self._subscriber is not None:
            self._subscriber.stop()
            self._subscriber = None
        self.publisher.close()
        self._close_ledger()

    close = shutdown

    # -- internals --------------------------------------------------------------------
    def now(self) -> datetime:
        """The current time (aware, UTC); :mod:`pyramid_scheduler.testing`
        replaces it with its fake clock."""
        return datetime.now(timezone.utc)

    def _queues_for(self, queue: str | None) -> tuple[str, ...]:
        if queue is None:
            return self.settings.queues
        if queue not in self.settings.queues:
            raise InvalidQueue(queue, self.settings.queues)
        return (queue,)

    def _add(
        self,
        kind: str,
        func: Any,
        args: Iterable[Any] | None,
        kwargs: dict[str, Any] | None,
        queue: str | None,
        options: dict[str, Any],
        **trigger_args: Any,
    ) -> str:
        queue = queue if queue is not None else self.settings.default_queue
        if queue not in self.settings.queues:
            raise InvalidQueue(queue, self.settings.queues)
        ref = callable_ref(func, self.settings.allowed_modules)
        if isinstance(args, (str, bytes, dict)):
            raise InvalidJob(f"args: expected a list or tuple of positional arguments, got {type(args).__name__}")
        args_json = check_json(list(args or ()), "args")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise InvalidJob(f"kwargs: expected a dict, got {type(kwargs).__name__}")
        kwargs_json = check_json(dict(kwargs or {}), "kwargs")
        check_arguments(resolve_ref(ref), args_json, kwargs_json, ref, self.settings)

        job_id = options.pop("id", None)
        if job_id is None:
            job_id = new_id()
        else:
            check_name(job_id, "id")
        spec = schedule_spec(kind, options, trigger_args, self.settings.timezone, self.now())
        immediate = options.pop("immediate", False)
        manager = options.pop("tm", None)
        check_delivery(immediate, manager)
        job_options = dict(options)
        try:
            resolve_keys(job_options, args_json, kwargs_json)
        except ValueError as exc:
            raise InvalidJob(str(exc)) from exc
        if job_options.get("expires") is not None:
            job_options["expires"] = expiry_after(job_options["expires"], spec, self.now())
        then = job_options.pop("then", None)
        if then is not None:  # a chain of two (pyramid_scheduler.web.flows)
            job_options["flow"] = self.then_flow(job_id, then)
        flow = job_options.get("flow")
        problem = option_problem(job_options, kind) or flow_problem(flow, kind)
        if problem:
            raise InvalidJob(problem)
        if flow is not None and job_options.get("durable") is False:
            raise InvalidJob("durable: a step of a chain or group is stored (durable), so that its followers are made")
        # scheduler.durable = false: the run-now jobs that ask for nothing else.
        durable = job_options.pop("durable", None)
        if durable is None:
            # Not asked either way: durable unless scheduler.durable = false, and
            # then still durable when an option needs the job store (retries,
            # timeout, priority, expires, limits, a flow).
            durable = (
                self.settings.durable
                or kind != "now"
                or flow is not None
                or option_problem({**job_options, "durable": False}, kind) is not None
            )
        if not durable:
            # On the wire only when false: the messages of durable jobs stay
            # readable by daemons that do not know the option.
            job_options["durable"] = False
        for key, why in (("retries", "keeps the attempts"), ("timeout", "the daemon reads it from")):
            if job_options.get(key) and self.settings.memory_store:
                raise InvalidJob(f"{key}: need the SQL job store, which {why}; scheduler.jobstore.url is 'memory'")

        request = JobRequest(
            op="add",
            id=job_id,
            queue=queue,
            func=ref,
            args=args_json,
            kwargs=kwargs_json,
            trigger=spec,
            options=job_options,
        )
        if tracing.ENABLED and tracing.configured():
            with tracing.enqueue_span(queue, job_id, ref, kind) as headers:
                self._publish(request, immediate, manager, headers)
        else:
            self._publish(request, immediate, manager)
        if getattr(self._captured, "requests", None) is None:
            for hook in self.on_enqueue:
                hook(request, kind)
        log.debug("job %s: %s %s sent to queue %s", job_id, kind, ref, queue)
        return job_id

    @contextlib.contextmanager
    def capturing(self) -> Iterator[list[JobRequest]]:
        """Collect the checked requests of the ``add_*_job`` calls made in this
        thread within the block, instead of publishing them."""
        captured: list[JobRequest] = []
        self._captured.requests = captured
        try:
            yield captured
        finally:
            self._captured.requests = None

    def _publish(
        self, request: JobRequest, immediate: bool = False, manager: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        body = request.encode()
        if len(body) > self.settings.max_message_size:
            raise InvalidJob(
                f"job {request.id}: the message is {len(body)} bytes, above "
                f"scheduler.max_message_size ({self.settings.max_message_size}); pass a "
                "reference to the data (a database id, a file name) instead of the data"
            )
        captured = getattr(self._captured, "requests", None)
        if captured is not None:
            captured.append(request)
            return
        if not self.settings.enabled:
            from pyramid_scheduler.tasks import run_disabled

            run_disabled(self, request)
            return
        txn = None if immediate or not self.settings.transactional else current_transaction(manager=manager)
        if txn is None:
            if headers:
                self.publisher.publish(body, request.queue, request.id, headers)
            else:
                self.publisher.publish(body, request.queue, request.id)
        else:
            hold(txn, self.publisher.publish, body, request.queue, request.id, request.op, headers)


def expiry_after(value: Any, spec: dict[str, Any], now: datetime) -> Any:
    """The ``expires`` option as it travels (:func:`~pyramid_scheduler.wire.options.expires_at`),
    refused when it comes before a date job's date (it could never run).
    A recurring job's is left for :func:`option_problem` to refuse.

    :raises InvalidJob: naming the option.
    """
    if spec.get("type") not in ("now", "date"):
        return value
    at = expires_at(value, now)
    run_date = spec.get("run_date")
    if spec["type"] == "date" and isinstance(run_date, str) and datetime.fromisoformat(run_date).timestamp() >= at:
        when = datetime.fromtimestamp(at, timezone.utc).isoformat()
        raise InvalidJob(f"expires: at {when}, not after the job's date {run_date}; it could never start")
    return at
