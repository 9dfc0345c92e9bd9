"""Public event types: the 0.3.4 :class:`Event` and its Pyramid counterparts.

Events are made by the engine (in ``pscheduler`` or a combined web process)
and handed, in order, to a dispatcher thread, which calls the listeners added
with ``registry.scheduler.add_listener`` and then ``registry.notify``-es the
matching Pyramid event (:class:`JobExecuted`, ...) so that
``config.add_subscriber(fn, JobExecuted)`` works too.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface, implementer

from pyramid_scheduler.exceptions import InvalidJob, InvalidMessage, InvalidQueue

__all__ = [
    "Event",
    "InvalidJob",
    "InvalidMessage",
    "InvalidQueue",
    "IJobEvent",
    "IScheduler",
    "JobEvent",
    "JobCreated",
    "JobExecuted",
    "JobFailed",
    "JobRetry",
    "JobMissed",
    "JobExpired",
    "JobInterrupted",
    "JobCanceled",
    "JobRemoved",
    "JobParked",
    "JobRestored",
    "JobRescheduled",
    "JobPaused",
    "JobResumed",
    "JobRequestRefused",
    "JobProgress",
    "SchedulerMessage",
]


class Event(dict[str, Any]):
    """A scheduler event, as 0.3.4 defined it: a dict with attribute access.

    ``event.type`` is one of the constants below. Job events carry
    ``job_id``, ``queue`` and ``job`` (a dict with ``id``, ``func``, ``args``,
    ``kwargs``, ``queue``); run events add ``run_key`` and
    ``scheduled_run_time``; :attr:`JOB_EXECUTED` and :attr:`JOB_ERROR` add
    ``duration`` (seconds the run took) and ``lateness`` (seconds it started
    after ``scheduled_run_time``); :attr:`JOB_EXECUTED` adds ``retval``;
    :attr:`JOB_ERROR` adds ``exception``, ``traceback``, ``attempt`` (1 for
    the first run, 2 for its first retry, ...) and ``will_retry``;
    :attr:`JOB_RETRY` (after a ``JOB_ERROR`` whose ``will_retry`` is true)
    adds ``attempt`` (of the retry), ``retry_at`` and ``delay`` (seconds); :attr:`JOB_MISSED`,
    :attr:`JOB_INTERRUPTED` and :attr:`JOB_PARKED` add ``reason``
    (:attr:`JOB_INTERRUPTED` also ``will_retry``); a :attr:`JOB_MISSED`
    that stands for many overdue runs at once (beyond ``scheduler.catch_up_limit``)
    adds ``missed_count`` (``None`` when not counted) and ``missed_until``;
    :attr:`JOB_EXPIRED` (a one-off job not started by its ``expires`` time;
    never run) adds ``reason`` and ``expires``;
    :attr:`MESSAGE` carries ``message``. :attr:`JOB_RESCHEDULED` adds ``trigger`` (the wire trigger
    spec) and ``next_run_time``; :attr:`JOB_RESUMED` adds ``next_run_time``;
    :attr:`JOB_REQUEST_REFUSED` (a ``reschedule_job``, ``pause_job``,
    ``resume_job`` or ``run_job_now`` the daemon could not carry out) adds
    ``op`` and ``reason``. ``run_job_now`` has no event of its own: the run
    brings the usual run events. :attr:`JOB_PROGRESS` (a running job called
    :func:`~pyramid_scheduler.report_progress`; throttled, see
    :doc:`/progress`) adds ``run_key``, ``fraction`` (0 to 1), ``message``
    and ``at`` (epoch seconds).
    """

    MESSAGE = "message"
    JOB_CREATED = "job.created"
    JOB_EXECUTED = "job.executed"
    JOB_ERROR = "job.error"
    JOB_RETRY = "job.retry"
    JOB_MISSED = "job.missed"
    JOB_EXPIRED = "job.expired"
    JOB_INTERRUPTED = "job.interrupted"
    JOB_CANCELED = "job.canceled"
    JOB_REMOVED = "job.removed"
    JOB_PARKED = "job.parked"
    JOB_RESTORED = "job.restored"
    JOB_RESCHEDULED = "job.rescheduled"
    JOB_PAUSED = "job.paused"
    JOB_RESUMED = "job.resumed"
    JOB_REQUEST_REFUSED = "job.request_refused"
    JOB_PROGRESS = "job.progress"

    #: Every event type, in no particular order.
    TYPES = frozenset(
        {
            MESSAGE,
            JOB_CREATED,
            JOB_EXECUTED,
            JOB_ERROR,
            JOB_RETRY,
            JOB_MISSED,
            JOB_EXPIRED,
            JOB_INTERRUPTED,
            JOB_CANCELED,
            JOB_REMOVED,
            JOB_PARKED,
            JOB_RESTORED,
            JOB_RESCHEDULED,
            JOB_PAUSED,
            JOB_RESUMED,
            JOB_REQUEST_REFUSED,
            JOB_PROGRESS,
        }
    )

    def __init__(self, type: str, **params: Any) -> None:  # noqa: A002 - 0.3.4 name
        super().__init__(params)
        self["type"] = type

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __repr__(self) -> str:
        rest = {k: v for k, v in self.items() if k not in {"type", "job"}}
        return f"<pyramid_scheduler.api.Event {self['type']} {rest!r}>"


class IScheduler(Interface):
    """The registry utility: the application's scheduler
    (:class:`~pyramid_scheduler.web.proxy.SchedulerProxy`), also
    ``registry.scheduler``. Its introspectable's discriminator."""


class IJobEvent(Interface):
    """A job event delivered through ``registry.notify``."""

    event = Attribute("The pyramid_scheduler.api.Event")
    job_id = Attribute("The job's id")
    registry = Attribute("The application registry")


@implementer(IJobEvent)
class JobEvent:
    """Base of the Pyramid event classes; ``event`` is the :class:`Event`."""

    def __init__(self, event: Event, registry: Any) -> None:
        self.event = event
        self.registry = registry
        self.job_id = event.get("job_id")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} job_id={self.job_id!r}>"


class JobCreated(JobEvent):
    """A job was stored by the daemon."""


class JobExecuted(JobEvent):
    """A run finished without raising."""


class JobFailed(JobEvent):
    """A run raised."""


class JobRetry(JobEvent):
    """A failed run will be run again (``event.attempt``, ``event.retry_at``).

    .. versionadded:: 1.0
    """


class JobMissed(JobEvent):
    """A run was skipped: too late (past its misfire grace) or overlapping."""


class JobExpired(JobEvent):
    """A one-off job was not started by its ``expires`` time: it ends
    ``expired`` and is never run (``event.reason``, ``event.expires``).

    .. versionadded:: 1.0
    """


class JobInterrupted(JobEvent):
    """A run started but the daemon died before it finished."""


class JobCanceled(JobEvent):
    """A job was canceled with ``cancel_job``."""


class JobRemoved(JobEvent):
    """A job has no more runs and was removed."""


class JobParked(JobEvent):
    """A stored job could not be loaded (its function was renamed or removed):
    it is kept, not deleted, until it loads again (``event.reason`` says why)."""


class JobRestored(JobEvent):
    """A parked job loaded again (its code is back, or
    ``scheduler.func_aliases`` names its new function) and is scheduled."""


class JobRescheduled(JobEvent):
    """A job's schedule was replaced with ``reschedule_job``."""


class JobPaused(JobEvent):
    """A job was paused with ``pause_job``: it runs no more until resumed."""


class JobResumed(JobEvent):
    """A paused job was resumed with ``resume_job``."""


class JobRequestRefused(JobEvent):
    """The daemon could not carry out a ``reschedule_job``, ``pause_job``,
    ``resume_job`` or ``run_job_now`` (``event.op``): no such live job on the
    queue, or the job is not in a state that allows it (``event.reason``)."""


class JobProgress(JobEvent):
    """A running job reported its progress (``event.fraction``,
    ``event.message``); at most one per run every 0.5 s.

    .. versionadded:: 1.0
    """


class SchedulerMessage(JobEvent):
    """A text message sent with ``pscheduler --message``."""


#: Event type -> Pyramid event class.
PYRAMID_EVENTS: dict[str, type[JobEvent]] = {
    Event.JOB_CREATED: JobCreated,
    Event.JOB_EXECUTED: JobExecuted,
    Event.JOB_ERROR: JobFailed,
    Event.JOB_RETRY: JobRetry,
    Event.JOB_MISSED: JobMissed,
    Event.JOB_EXPIRED: JobExpired,
    Event.JOB_INTERRUPTED: JobInterrupted,
    Event.JOB_CANCELED: JobCanceled,
    Event.JOB_REMOVED: JobRemoved,
    Event.JOB_PARKED: JobParked,
    Event.JOB_RESTORED: JobRestored,
    Event.JOB_RESCHEDULED: JobRescheduled,
    Event.JOB_PAUSED: JobPaused,
    Event.JOB_RESUMED: JobResumed,
    Event.JOB_REQUEST_REFUSED: JobRequestRefused,
    Event.JOB_PROGRESS: JobProgress,
    Event.MESSAGE: SchedulerMessage,
}
