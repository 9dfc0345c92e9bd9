"""pyramid_scheduler: run work later, elsewhere and on a schedule.

Include it in a Pyramid application::

    config.include("pyramid_scheduler")

or, in an INI file, ``pyramid.includes = pyramid_scheduler``. Then, from any
view, ``request.registry.scheduler`` (or ``request.scheduler``) offers
``add_async_job``, ``add_date_job``, ``add_interval_job``, ``add_cron_job`` and
``cancel_job`` (inside pyramid_tm's transaction they publish on commit);
``config.add_scheduled_job`` and ``@scheduled_job`` declare periodic jobs in
code; ``@task`` (with ``f.delay()`` and its :class:`JobHandle`), ``@periodic``
and ``@cron`` are the decorators of :mod:`pyramid_scheduler.tasks`. The jobs
run in ``pscheduler CONFIG.ini``, or in the web process itself
with ``scheduler.combined = true``; inside a job, ``report_progress`` and
``should_stop`` tell how far it is and whether it was canceled.
"""

from __future__ import annotations

from pyramid.config import Configurator
from pyramid.events import ApplicationCreated

from pyramid_scheduler.api import Event, IScheduler
from pyramid_scheduler.exceptions import (
    EnqueueError,
    InvalidJob,
    InvalidMessage,
    InvalidQueue,
    JobStopped,
    SchedulerError,
)
from pyramid_scheduler.progress import report_progress, should_stop
from pyramid_scheduler.settings import SchedulerSettings
from pyramid_scheduler.tasks import JobHandle, Task, cron, periodic, task
from pyramid_scheduler.web.declare import add_scheduled_job, scheduled_job
from pyramid_scheduler.web.proxy import SchedulerProxy
from pyramid_scheduler.web.registration import register_scheduler, request_scheduler, start_in_process

__all__ = [
    "Event",
    "EnqueueError",
    "IScheduler",
    "InvalidJob",
    "InvalidMessage",
    "InvalidQueue",
    "JobHandle",
    "JobStopped",
    "SchedulerError",
    "SchedulerProxy",
    "SchedulerSettings",
    "Task",
    "cron",
    "includeme",
    "periodic",
    "report_progress",
    "scheduled_job",
    "should_stop",
    "task",
]


def includeme(config: Configurator) -> None:
    """Set up pyramid_scheduler.

    The ``scheduler.*`` settings are read when the configuration is committed
    (``config.commit()``, ``config.make_wsgi_app()``), so settings changed
    after the include count; ``registry.scheduler`` is made then. Until then
    it takes only ``add_listener``.

    :raises pyramid.exceptions.ConfigurationError: at commit, a
        ``scheduler.*`` setting is wrong (the message names it).
    """
    register_scheduler(config)
    config.add_request_method(request_scheduler, "scheduler", reify=True)
    config.add_directive("add_scheduled_job", add_scheduled_job)
    config.add_subscriber(start_in_process, ApplicationCreated)
