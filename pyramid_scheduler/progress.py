"""Progress and stopping: what a running job tells, and what it is told.

Inside a job's run (in ``pscheduler``, a combined process or
:mod:`pyramid_scheduler.testing`), :func:`report_progress` records how far
the run has come and :func:`should_stop` says whether it has been asked to
stop (its job canceled with ``cancel_job``, or its ``timeout=`` passed). The
run that is current is found through a context variable which the daemon's
runner (:mod:`pyramid_scheduler.daemon.execution`) sets around the call of
the job's function; the daemon's side, which throttles the writes and
watches for stop requests, is :mod:`pyramid_scheduler.daemon.control`.

Outside a run (a job's function called as a plain function, in a view or a
test) both are harmless: :func:`report_progress` does nothing and
:func:`should_stop` is false. The context does not follow the job into
threads it starts itself (``contextvars.copy_context().run`` carries it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Protocol

from pyramid_scheduler.exceptions import JobStopped

__all__ = ["JobStopped", "report_progress", "should_stop", "stop_if_asked"]

#: The longest progress message kept (characters); a longer one is cut.
MAX_MESSAGE = 500


class RunControl(Protocol):
    """The daemon's side of one run (:class:`pyramid_scheduler.daemon.control.Control`)."""

    job_id: str
    stop_reason: str | None

    def report(self, fraction: float, message: str) -> None: ...

    def should_stop(self) -> bool: ...


_current: ContextVar[RunControl | None] = ContextVar("pyramid_scheduler_run", default=None)


@contextlib.contextmanager
def running(control: RunControl) -> Iterator[None]:
    """*control* as the current run's, for the code inside (the runner's)."""
    token = _current.set(control)
    try:
        yield
    finally:
        _current.reset(token)


def report_progress(
    fraction: float | None = None, message: str = "", *, done: int | None = None, total: int | None = None
) -> None:
    """Tell how far the current run has come: *fraction* from 0 to 1, or
    *done* of *total* items, with an optional *message*.

    The job's record shows the latest report (``get_job(id)["progress"]``:
    ``fraction``, ``message``, ``at``, ``run_key``) and a
    :attr:`~pyramid_scheduler.api.Event.JOB_PROGRESS` event is emitted --
    at most once per 0.5 s per run (the reports between are folded into the
    next), and always the last one when the run ends; so a call in a tight
    loop costs next to nothing. Outside a job's run it does nothing.

    :raises ValueError: *fraction* is not a number from 0 to 1, or *done*
        and *total* are not whole numbers with ``0 <= done <= total`` and
        ``total > 0``, or both forms are given.
    :raises JobStopped: the run has been asked to stop (its job was
        canceled, or its ``timeout`` passed); let it propagate.

    .. versionadded:: 1.0
    """
    if done is not None or total is not None:
        if fraction is not None:
            raise ValueError("report_progress: give fraction, or done= and total=, not both")
        fraction = _fraction_of(done, total)
    elif fraction is None:
        raise ValueError("report_progress: give fraction (0 to 1), or done= and total=")
    elif isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
        raise ValueError(f"report_progress: fraction must be a number from 0 to 1, got {fraction!r:.80}")
    if not isinstance(message, str):
        raise ValueError(f"report_progress: message must be a str, got {type(message).__name__}")
    control = _current.get()
    if control is not None:
        control.report(float(fraction), message[:MAX_MESSAGE])


def should_stop() -> bool:
    """True once the current run has been asked to stop: its job was
    canceled with ``cancel_job`` (from any process), or the run has lasted
    longer than the job's ``timeout=``. A long job checks it between steps
    and returns (or raises :class:`~pyramid_scheduler.exceptions.JobStopped`);
    the run is then recorded ``stopped`` or ``timed-out``. Cheap: the daemon
    reads stop requests in the background. Outside a job's run: False.

    .. versionadded:: 1.0
    """
    control = _current.get()
    return control is not None and control.should_stop()


def stop_if_asked() -> None:
    """Raise :class:`~pyramid_scheduler.exceptions.JobStopped` if the current
    run has been asked to stop (see :func:`should_stop`); else nothing. For
    code that stops its own work first, as :func:`pyramid_scheduler.shell.run`
    kills its command's process group.

    .. versionadded:: 1.0
    """
    control = _current.get()
    if control is not None and control.should_stop():
        raise JobStopped(control.job_id, control.stop_reason or "")


def _fraction_of(done: int | None, total: int | None) -> float:
    if (
        isinstance(done, bool)
        or isinstance(total, bool)
        or not isinstance(done, int)
        or not isinstance(total, int)
        or total <= 0
        or not 0 <= done <= total
    ):
        raise ValueError(
            f"report_progress: done= and total= must be whole numbers with 0 <= done <= total and "
            f"total > 0, got done={done!r:.40}, total={total!r:.40}"
        )
    return done / total
