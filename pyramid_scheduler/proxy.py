"""The producer: ``registry.scheduler``, used from views and scripts.

Every ``add_*_job`` call checks its request right here, in the calling
process: the callable must be importable by ``module:qualname``, the arguments
must be JSON, the trigger is built with APScheduler (so a bad cron field or
date raises in the view), the queue must be configured and the message must
fit ``scheduler.max_message_size``. Only then is one version 1 JSON message
published (:mod:`pyramid_scheduler.broker`). The call returns the job id once
the broker holds the message, or raises :class:`~.exceptions.EnqueueError`
within ``scheduler.broker.timeout``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from .broker import Publisher
from .catchup import check_options as check_catch_up
from .events import Listener, Listeners
from .exceptions import InvalidJob, InvalidQueue
from .messages import (
    OPTION_TYPES,
    POSITIVE_OPTIONS,
    JobRequest,
    build_trigger,
    callable_ref,
    check_allowed,
    check_arguments,
    check_json,
    new_id,
    next_fire_time,
    resolve_ref,
    to_datetime,
    to_zone,
    trigger_spec,
)
from .settings import SchedulerSettings

log = logging.getLogger(__name__)

#: Options that shape the trigger rather than the job.
TRIGGER_OPTIONS = ("end_date", "timezone", "jitter")


class SchedulerProxy:
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
        self._ledger_obj: Any = None

    @property
    def queues(self) -> tuple[str, ...]:
        return self.settings.queues

    # -- adding jobs ------------------------------------------------------------------
    def add_async_job(self, func: Any, args: Iterable[Any] | None = None,
                      kwargs: dict[str, Any] | None = None, queue: str | None = None,
                      **options: Any) -> str:
        """Run ``func(*args, **kwargs)`` as soon as possible, in the daemon.

        :returns: the job id.
        :raises InvalidJob: the callable, arguments or an option is refused.
        :raises InvalidQueue: *queue* is not in ``scheduler.queues``.
        :raises EnqueueError: the broker did not take the job in time.
        """
        now = datetime.now(timezone.utc)
        return self._add("now", func, args, kwargs, queue, options, run_date=now)

    def add_date_job(self, func: Any, date: Any, args: Iterable[Any] | None = None,
                     kwargs: dict[str, Any] | None = None, queue: str | None = None,
                     **options: Any) -> str:
        """Run ``func`` once at *date*.

        :param date: an aware or naive :class:`~datetime.datetime` (naive ones are
            read in ``scheduler.timezone``), an ISO 8601 string, or an epoch
            number (``time.time() + 3600``). A date in the past runs at once if
            it is within the misfire grace time, else is reported missed.
        """
        tz = self._zone(options)
        return self._add("date", func, args, kwargs, queue, options,
                         run_date=to_datetime(date, tz, "date"))

    def add_interval_job(self, func: Any, start_date: Any = None,
                         args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
                         queue: str | None = None, weeks: float = 0, days: float = 0,
                         hours: float = 0, minutes: float = 0, seconds: float = 0,
                         **options: Any) -> str:
        """Run ``func`` every interval.

        Without *start_date* the first run is one interval after this call.
        With a future *start_date* the first run is at *start_date*; with a
        past one, runs follow its grid (``start_date + k * interval``) from
        the next point after now.
        """
        tz = self._zone(options)
        start = (to_datetime(start_date, tz, "start_date") if start_date is not None
                 else datetime.now(timezone.utc))
        return self._add("interval", func, args, kwargs, queue, options, start_date=start,
                         weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)

    def add_cron_job(self, func: Any, start_date: Any = None,
                     args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
                     queue: str | None = None, year: Any = None, month: Any = None,
                     day: Any = None, week: Any = None, day_of_week: Any = None,
                     hour: Any = None, minute: Any = None, second: Any = None,
                     **options: Any) -> str:
        """Run ``func`` on a cron schedule: the fields of
        :class:`apscheduler.triggers.cron.CronTrigger`, or ``crontab="30 7 * * mon"``.
        """
        tz = self._zone(options)
        crontab = options.pop("crontab", None)
        fields = dict(year=year, month=month, day=day, week=week, day_of_week=day_of_week,
                      hour=hour, minute=minute, second=second)
        if crontab is not None:
            if any(value is not None for value in fields.values()):
                raise InvalidJob("crontab: give either crontab or the cron fields, not both")
            if not isinstance(crontab, str):
                raise InvalidJob(f"crontab: expected a string such as '30 7 * * mon', got {crontab!r}")
            fields = {"crontab": crontab}
        start = to_datetime(start_date, tz, "start_date") if start_date is not None else None
        return self._add("cron", func, args, kwargs, queue, options, start_date=start, **fields)

    def cancel_job(self, job_id: str, queue: str | None = None) -> str:
        """Cancel a job: it runs no more; a run in progress finishes.

        Without *queue*, the request goes to every queue.
        """
        if not isinstance(job_id, str) or not job_id:
            raise InvalidJob(f"job_id: expected a job id string, got {job_id!r}")
        for name in self._queues_for(queue):
            self._publish(JobRequest(op="cancel", id=job_id, queue=name))
        return job_id

    def send_message(self, text: str, queue: str | None = None) -> None:
        """Send a text message to the daemons (a MESSAGE event for listeners;
        ``print-jobs`` makes the daemon log its jobs)."""
        for name in self._queues_for(queue):
            self._publish(JobRequest(op="message", id=new_id(), queue=name, text=str(text)))

    # -- reading job records ----------------------------------------------------------
    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The job's record from the job store's database, or ``None``.

        Keys: ``id``, ``queue``, ``func``, ``kind``, ``status`` (``scheduled``,
        ``running``, ``done``, ``failed``, ``missed``, ``canceled``,
        ``interrupted`` or ``parked``), ``runs``, ``created_at``,
        ``updated_at``, ``last_run_at`` (epoch seconds), ``result`` (the last
        run's return value, decoded from JSON) and ``error``. Works from any
        process that shares ``scheduler.jobstore.url`` (not with the memory store).
        """
        row = self._ledger().get_job(job_id)
        return None if row is None else _record(row)

    def get_jobs(self, queue: str | None = None, status: str | None = None,
                 limit: int = 100) -> list[dict[str, Any]]:
        """The most recently changed job records, newest first."""
        if queue is not None and queue not in self.settings.queues:
            raise InvalidQueue(queue, self.settings.queues)
        return [_record(row) for row in self._ledger().list_jobs(queue, status, limit)]

    def get_runs(self, job_id: str, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The job's recorded runs, latest scheduled first (with *status*:
        only those).

        Keys: ``run_key`` (``job_id@scheduled time``), ``job_id``, ``queue``,
        ``scheduled_at``, ``started_at``, ``finished_at`` (epoch seconds),
        ``status`` (``started``, ``done``, ``failed``, ``missed`` or
        ``interrupted``), ``owner`` (the daemon) and ``error`` (why a run was
        missed, failed or interrupted). A run that the catch-up policy did not
        run is here as ``missed``; many at once beyond
        ``scheduler.catch_up_limit`` are one ``missed`` row whose ``error``
        gives their number and span.

        .. versionadded:: 1.0
        """
        return self._ledger().list_runs(job_id, status, limit)  # type: ignore[no-any-return]

    def get_daemons(self) -> list[dict[str, Any]]:
        """Which daemon runs each configured queue, from the job store's leases.

        One dict per queue in ``scheduler.queues``: ``queue``, ``owner``
        (``host:pid:token`` of the daemon, or ``None`` if none ever ran it),
        ``expires_at`` (epoch seconds) and ``active`` (the lease is current, so
        a daemon is consuming the queue now).
        """
        leases = {row["queue"]: row for row in self._ledger().list_leases()}
        stamp = time.time()
        daemons = []
        for queue in self.settings.queues:
            row = leases.get(queue)
            if row is None:
                daemons.append({"queue": queue, "owner": None, "expires_at": None, "active": False})
            else:
                daemons.append({"queue": queue, "owner": row["owner"], "expires_at": row["expires_at"],
                                "active": row["expires_at"] > stamp})
        return daemons

    def _ledger(self) -> Any:
        if self._ledger_obj is None:
            if self.settings.memory_store:
                raise InvalidJob("job records need a SQL job store; scheduler.jobstore.url is 'memory'")
            from .db import create_db_engine
            from .store import Ledger

            self._ledger_obj = Ledger(create_db_engine(self.settings.jobstore_url or ""),
                                      self.settings.jobstore_tablename_prefix)
        return self._ledger_obj

    # -- listeners --------------------------------------------------------------------
    def add_listener(self, listener: Listener, events: Iterable[str] | None = None,
                     args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None) -> None:
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
        self.publisher.close()
        if self._ledger_obj is not None:
            self._ledger_obj.engine.dispose()
            self._ledger_obj = None

    close = shutdown

    # -- internals --------------------------------------------------------------------
    def _zone(self, options: dict[str, Any]) -> Any:
        if options.get("timezone") is not None:
            options["timezone"] = to_zone(options["timezone"])
            return options["timezone"]
        return self.settings.timezone

    def _queues_for(self, queue: str | None) -> tuple[str, ...]:
        if queue is None:
            return self.settings.queues
        if queue not in self.settings.queues:
            raise InvalidQueue(queue, self.settings.queues)
        return (queue,)

    def _add(self, kind: str, func: Any, args: Iterable[Any] | None,
             kwargs: dict[str, Any] | None, queue: str | None, options: dict[str, Any],
             **trigger_args: Any) -> str:
        queue = queue if queue is not None else self.settings.default_queue
        if queue not in self.settings.queues:
            raise InvalidQueue(queue, self.settings.queues)
        ref = callable_ref(func)
        check_allowed(ref, self.settings.allowed_modules)
        if isinstance(args, (str, bytes, dict)):
            raise InvalidJob(f"args: expected a list or tuple of positional arguments, got {type(args).__name__}")
        args_json = check_json(list(args or ()), "args")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise InvalidJob(f"kwargs: expected a dict, got {type(kwargs).__name__}")
        kwargs_json = check_json(dict(kwargs or {}), "kwargs")
        check_arguments(resolve_ref(ref), args_json, kwargs_json, ref)

        job_id = options.pop("id", None)
        if job_id is None:
            job_id = new_id()
        elif not isinstance(job_id, str) or not job_id or len(job_id) > 200:
            raise InvalidJob(f"id: expected a string of 1 to 200 characters, got {job_id!r}")
        tz = self._zone(options)
        end_date = options.pop("end_date", None)
        if end_date is not None:
            if kind in ("now", "date"):
                raise InvalidJob(f"end_date: not an option of {kind} jobs")
            trigger_args["end_date"] = to_datetime(end_date, tz, "end_date")
        jitter = options.pop("jitter", None)
        options.pop("timezone", None)
        job_options: dict[str, Any] = {}
        for key, value in options.items():
            kinds = OPTION_TYPES.get(key)
            if kinds is None:
                raise InvalidJob(
                    f"{key}: unknown option; add_*_job accepts id, name, misfire_grace_time, "
                    f"coalesce, catch_up, max_instances, {', '.join(TRIGGER_OPTIONS)}")
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                expected = " or ".join("None" if kind is type(None) else kind.__name__ for kind in kinds)
                raise InvalidJob(f"{key}: expected {expected}, got {value!r}")
            if key in POSITIVE_OPTIONS and value is not None and value < 1:  # type: ignore[operator]
                raise InvalidJob(f"{key}: expected 1 or more, got {value!r}")
            job_options[key] = value
        problem = check_catch_up(job_options, kind)
        if problem is not None:
            raise InvalidJob(problem)

        spec = trigger_spec(kind, tz, jitter=jitter, **trigger_args)
        trigger = build_trigger(spec, tz)  # a bad cron field or date fails here
        first = next_fire_time(trigger, datetime.now(timezone.utc))
        if kind not in ("now", "date") and first is None:
            raise InvalidJob(f"{kind} trigger: this schedule never fires (is end_date in the past?)")
        request = JobRequest(op="add", id=job_id, queue=queue, func=ref, args=args_json,
                             kwargs=kwargs_json, trigger=spec, options=job_options)
        self._publish(request)
        log.debug("job %s: %s %s sent to queue %s", job_id, kind, ref, queue)
        return job_id

    def _publish(self, request: JobRequest) -> None:
        body = request.encode()
        if len(body) > self.settings.max_message_size:
            raise InvalidJob(
                f"job {request.id}: the message is {len(body)} bytes, above "
                f"scheduler.max_message_size ({self.settings.max_message_size}); pass a "
                "reference to the data (a database id, a file name) instead of the data")
        self.publisher.publish(body, request.queue, request.id)


def _record(row: dict[str, Any]) -> dict[str, Any]:
    record = {k: v for k, v in row.items() if k not in ("request", "mid")}
    if record.get("result") is not None:
        record["result"] = json.loads(record["result"])
    request = json.loads(row["request"])
    record.update(args=request.get("args"), kwargs=request.get("kwargs"), trigger=request.get("trigger"))
    return record
