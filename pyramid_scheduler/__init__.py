"""pyramid_scheduler: run work later, elsewhere and on a schedule.

Include it in a Pyramid application::

    config.include("pyramid_scheduler")

or, in an INI file, ``pyramid.includes = pyramid_scheduler``. Then, from any
view, ``request.registry.scheduler`` (or ``request.scheduler``) offers
``add_async_job``, ``add_date_job``, ``add_interval_job``, ``add_cron_job`` and
``cancel_job`` (inside pyramid_tm's transaction they publish on commit);
``config.add_scheduled_job`` and ``@scheduled_job`` declare periodic jobs in
code. The jobs run in ``pscheduler CONFIG.ini``, or in the web process itself
with ``scheduler.combined = true``.
"""

from __future__ import annotations

from typing import Any

from pyramid.events import ApplicationCreated
from zope.interface import Interface

from pyramid_scheduler.api import Event
from pyramid_scheduler.brokers.fanout import start_subscriber
from pyramid_scheduler.daemon.service import start_combined
from pyramid_scheduler.exceptions import EnqueueError, InvalidJob, InvalidMessage, InvalidQueue, SchedulerError
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.settings import SchedulerSettings, parse_settings
from pyramid_scheduler.web.declare import add_scheduled_job, scheduled_job
from pyramid_scheduler.web.proxy import SchedulerProxy

__all__ = [
    "Event",
    "EnqueueError",
    "IScheduler",
    "InvalidJob",
    "InvalidMessage",
    "InvalidQueue",
    "SchedulerError",
    "SchedulerProxy",
    "SchedulerSettings",
    "includeme",
    "scheduled_job",
]

log = get_logger(__name__)


class IScheduler(Interface):
    """The registry utility: the application's :class:`SchedulerProxy`."""


def _request_scheduler(request: Any) -> SchedulerProxy:
    return request.registry.scheduler  # type: ignore[no-any-return]


def includeme(config: Any) -> None:
    """Set up pyramid_scheduler; the settings are checked here, at include time.

    :raises pyramid.exceptions.ConfigurationError: a ``scheduler.*`` setting
        is wrong (the message names it).
    """
    raw = config.get_settings()
    settings = parse_settings(raw)
    if "scheduler.combined" not in raw:
        log.info("scheduler.combined is not set: jobs run in pscheduler, not in this process (0.3.4 defaulted to true)")
    scheduler = SchedulerProxy(settings, config.registry)
    config.registry.scheduler = scheduler
    config.registry.registerUtility(scheduler, IScheduler)
    config.add_request_method(_request_scheduler, "scheduler", reify=True)
    config.add_directive("add_scheduled_job", add_scheduled_job)
    if settings.combined:
        config.add_subscriber(start_combined, ApplicationCreated)
    if settings.events_subscribe:
        config.add_subscriber(start_subscriber, ApplicationCreated)
