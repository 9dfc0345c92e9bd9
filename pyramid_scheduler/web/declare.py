"""Config-time schedules: jobs declared in the application's code.

``config.add_scheduled_job(func, ...)`` and the ``@scheduled_job(...)``
decorator (picked up by ``config.scan()``) check a periodic job at
configuration time, through the very ``add_*_job`` front-ends of
:mod:`pyramid_scheduler.web.proxy` (nothing is published), and record it in
``registry.scheduler.declared`` by its stable id (default: the function's
``module:qualname``). Each is a ``config.action`` with an introspectable
(category ``scheduled jobs``, related to the ``scheduler`` one), so two
declarations of one id conflict; the declaration is checked when the
configuration is committed, once ``registry.scheduler`` is made.

Web processes only record declarations. The process that runs the jobs
(``pscheduler``, or the web process in combined mode) loads the same
application, so it has the same declarations, and
:class:`pyramid_scheduler.daemon.reconcile.Reconcile` applies
them when its engine starts, before anything runs: a new declaration is
stored (JOB_CREATED), an unchanged one is left alone, a changed one replaces
the stored job in place, and a stored declared job whose declaration is gone
is removed (JOB_REMOVED). A declaration is recognised by the message id of
its stored request, ``declared:`` plus a digest of the declaration, so no
new column or wire option is needed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

import venusian
from pyramid.exceptions import ConfigurationError

from pyramid_scheduler.api import IScheduler
from pyramid_scheduler.exceptions import InvalidJob, SchedulerError
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.triggers.forms import schedule_kind
from pyramid_scheduler.wire.messages import JobRequest
from pyramid_scheduler.wire.refs import callable_ref

log = get_logger(__name__)

#: The prefix of a declared job's message id.
DECLARED = "declared:"
#: The prefix of the message id of a declared job with ``start_now=True``:
#: run once as soon as the declaration is stored (new or changed).
DECLARED_NOW = DECLARED + "now:"


def read_declaration(func: Any, trigger: str | None, params: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """What a declaration says without the scheduler: its trigger kind, its
    id and the parameters of ``add_<kind>_job``.

    :raises ConfigurationError: the trigger cannot be told, or the
        parameters are not those of a declaration.
    """
    params = dict(params)
    try:
        kind = schedule_kind(trigger, params, delays=False)
    except InvalidJob as exc:
        raise ConfigurationError(str(exc)) from exc
    job_id = params.pop("id", None)
    if job_id is None:
        job_id = callable_ref(func)
    if kind == "cron" and "cron" in params:
        if "crontab" in params:
            raise ConfigurationError(f"scheduled job {job_id}: give cron= or crontab=, not both")
        params["crontab"] = params.pop("cron")
    if "immediate" in params:
        raise ConfigurationError(f"scheduled job {job_id}: immediate: declarations are never published")
    start_now = params.get("start_now", False)
    if not isinstance(start_now, bool) or (start_now and kind == "date"):
        raise ConfigurationError(
            f"scheduled job {job_id}: start_now: expected True or False, for an interval or cron job; got {start_now!r}"
        )
    return kind, job_id, params


def declare(proxy: Any, func: Any, trigger: str | None = None, **params: Any) -> JobRequest:
    """Check one declaration and return the request the daemon will apply.

    :raises ConfigurationError: naming the job, if ``add_<trigger>_job``
        would refuse it.
    """
    kind, job_id, params = read_declaration(func, trigger, params)
    prefix = DECLARED_NOW if params.get("start_now") else DECLARED
    digest = hashlib.sha256(
        json.dumps(
            {"func": callable_ref(func), "trigger": kind, "id": job_id, "params": params}, sort_keys=True, default=repr
        ).encode()
    ).hexdigest()[:40]
    params.pop("start_now", None)
    try:
        with proxy.capturing() as captured:
            getattr(proxy, f"add_{kind}_job")(func, id=job_id, **params)
    except SchedulerError as exc:
        raise ConfigurationError(f"scheduled job {job_id}: {exc}") from exc
    (request,) = captured
    return replace(request, mid=prefix + digest)


def add_scheduled_job(config: Any, func: Any, trigger: str | None = None, **params: Any) -> None:
    """Declare a job that the scheduler keeps stored while the code declares it.

    :param func: the job function (or a dotted name), importable by
        ``module:qualname``.
    :param trigger: ``"cron"``, ``"interval"`` or ``"date"``; by default read
        from the other parameters (``cron="*/5 * * * *"`` or ``crontab=``,
        the cron fields or the calendar keywords, ``minutes=10`` and the
        other interval units, ``date=``), by
        :func:`~pyramid_scheduler.triggers.forms.schedule_kind`.
    :param params: ``id``, the job's stable id (default: ``module:qualname``
        of *func*); ``start_now=True`` (interval and cron jobs): run it once
        as soon as the declaration is stored (new, or changed), then on its
        schedule; and what ``add_cron_job``, ``add_interval_job`` or
        ``add_date_job`` take: the trigger's parameters, ``args``,
        ``kwargs``, ``queue`` and the job options.
    :raises ConfigurationError: the declaration is refused (what needs no
        scheduler, such as the trigger, at this call; what ``add_*_job``
        checks, such as the queue or a cron field, when the configuration is
        committed), or two declarations share an id (at commit).

    .. versionadded:: 1.0
    """
    func = config.maybe_dotted(func)
    kind, job_id, read = read_declaration(func, trigger, params)
    intr = config.introspectable("scheduled jobs", job_id, f"{job_id}: {kind} {callable_ref(func)}", "scheduled job")
    intr["id"] = job_id
    intr["func"] = func
    intr["params"] = read
    intr.relate("scheduler", IScheduler)

    def register() -> None:
        proxy = config.registry.scheduler
        request = declare(proxy, func, trigger, **params)
        if not proxy.settings.enabled:
            log.info("scheduler.enabled = false: scheduled job %s is not registered", request.id)
            return
        proxy.declared[request.id] = request
        intr["queue"] = request.queue
        intr["trigger"] = dict(request.trigger or {})

    config.action(("pyramid_scheduler.scheduled_job", job_id), register, introspectables=(intr,))


class scheduled_job:  # noqa: N801 - a decorator, named like Pyramid's view_config
    """Declare the decorated function as a scheduled job when ``config.scan()``
    finds it; takes the arguments of :func:`add_scheduled_job`::

        @scheduled_job(cron="*/5 * * * *")
        def sync_stock(): ...

        @scheduled_job(minutes=10, id="cleanup", queue="reports")
        def cleanup(): ...

    .. versionadded:: 1.0
    """

    venusian = venusian

    def __init__(self, trigger: str | None = None, **params: Any) -> None:
        self.trigger = trigger
        self.params = params

    def __call__(self, wrapped: Any) -> Any:
        def callback(context: Any, name: str, ob: Any) -> None:
            config = context.config.with_package(info.module)
            config.add_scheduled_job(ob, self.trigger, **self.params)

        info = self.venusian.attach(wrapped, callback, category="pyramid")
        return wrapped
