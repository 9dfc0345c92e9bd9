"""The settings of the task decorators (:mod:`pyramid_scheduler.tasks`).

:data:`SETTINGS_TASKS` is appended to
:data:`pyramid_scheduler.settings.spec.SETTINGS`, the one table.
"""

from __future__ import annotations

from pyramid_scheduler.settings.values import Flag, Setting

SETTINGS_TASKS: tuple[Setting, ...] = (
    Setting(
        "enabled",
        Flag(),
        default="true",
        doc="""``false`` switches the scheduler off, for development without a broker or a
daemon (Django-Autotask's ``AUTOTASK_IS_ACTIVE``): nothing is published. ``f.delay()`` of
a :doc:`task <tasks>` and ``add_async_job`` run the function at once, in the calling
thread, as a plain function (a task's handle comes back finished, with its result or
error); ``add_date_job``, ``add_interval_job`` and ``add_cron_job`` check their job as
usual and then only log that it is not scheduled; ``cancel_job`` and ``send_message`` do
nothing; declared jobs (``@scheduled_job``, ``@periodic``, ``@cron``) are checked but not
registered; combined mode starts nothing, and ``pscheduler`` exits with code 14. See
:ref:`tasks-disabled`.""",
    ),
)
