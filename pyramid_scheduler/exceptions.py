"""Errors raised by pyramid_scheduler.

Every error a user can meet derives from :class:`SchedulerError`; each message
names the job, queue, argument or setting at fault and says what to do.
"""

from __future__ import annotations

__all__ = [
    "SchedulerError",
    "InvalidJob",
    "InvalidQueue",
    "InvalidMessage",
    "SerializationError",
    "EnqueueError",
    "JobTimeout",
    "JobStopped",
    "SchemaError",
    "CommandFailed",
]


class SchedulerError(Exception):
    """Base class of every pyramid_scheduler error."""


class SchemaError(SchedulerError):
    """The job store's tables cannot be used by this release (they are newer)."""


class InvalidJob(SchedulerError, ValueError):
    """A job request was refused: bad callable, trigger or option.

    Raised by ``add_*_job`` in the calling process, before anything is sent.
    """


class InvalidQueue(SchedulerError, ValueError):
    """A queue name that is not listed in ``scheduler.queues``."""

    def __init__(self, queue: str, known: tuple[str, ...] = ()) -> None:
        self.queue = queue
        msg = f"unknown queue {queue!r}"
        if known:
            msg += f"; scheduler.queues lists {', '.join(known)}"
        super().__init__(msg)


class InvalidMessage(SchedulerError, ValueError):
    """A broker message that the daemon refuses at its door (wire format)."""


class SerializationError(InvalidJob):
    """Job arguments that cannot travel as JSON."""


class EnqueueError(SchedulerError, ConnectionError):
    """The broker did not accept a job within ``scheduler.broker.timeout``.

    Nothing was enqueued; the caller may retry.
    """


class JobTimeout(SchedulerError, TimeoutError):
    """:meth:`~pyramid_scheduler.web.proxy.SchedulerProxy.wait` gave up: the job
    did not finish in time (it may still run; it was not canceled).

    ``job_id`` names the job and ``record`` is its last record read (``None``
    if the daemon has not stored it yet).
    """

    def __init__(self, job_id: str, timeout: float, record: dict[str, object] | None) -> None:
        self.job_id = job_id
        self.record = record
        status = "no record yet" if record is None else f"status {record['status']!r}"
        super().__init__(f"job {job_id} did not finish within {timeout:g}s ({status})")


class CommandFailed(SchedulerError):
    """A shell-command job (:func:`pyramid_scheduler.shell.run`) did not end
    with exit code 0: it exited with another code, was killed, timed out or
    could not start. The message ends with the tail of its stderr, so the
    run's recorded error shows it; ``result`` holds its outcome (exit code,
    duration, output tails), or ``None`` if it did not start.
    """

    def __init__(self, message: str, result: dict[str, object] | None = None) -> None:
        self.result = result
        super().__init__(message)


class JobStopped(SchedulerError):
    """Raised inside a running job by :func:`pyramid_scheduler.report_progress`
    once the run is asked to stop: the job was canceled with ``cancel_job``
    (``reason`` ``"canceled"``) or its run passed the job's ``timeout=``
    (``reason`` ``"timed out"``). Let it propagate (clean up in ``finally``);
    the run is then recorded ``stopped`` or ``timed-out``, not failed.

    .. versionadded:: 1.0
    """

    def __init__(self, job_id: str, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"job {job_id}: asked to stop ({reason})")
