"""Job functions that report progress and stop when asked (docs/progress.rst).

Each records its phases in the oracle (:mod:`.jobs`): ``start``, then
``stopped`` (it saw :func:`pyramid_scheduler.should_stop`, or
:class:`~pyramid_scheduler.JobStopped` came out of ``report_progress``) or
``end``.
"""

from __future__ import annotations

import time

from pyramid_scheduler import JobStopped, report_progress, should_stop

from .jobs import _log_run


def steps(oracle: str, tag: str, count: int, pause: float) -> int:
    """*count* steps of *pause* seconds, each reported as done of *count*."""
    _log_run(oracle, tag, "start")
    for done in range(1, count + 1):
        time.sleep(pause)
        report_progress(done=done, total=count, message=f"step {done} of {count}")
    _log_run(oracle, tag, "end")
    return count


def until_stopped(oracle: str, tag: str, seconds: float, how: str = "check") -> str:
    """Work in small steps for up to *seconds*, until asked to stop: *how*
    ``check`` returns when :func:`should_stop` is true; ``raise`` lets
    :class:`JobStopped` out of ``report_progress``; ``ignore`` never looks."""
    _log_run(oracle, tag, "start")
    deadline = time.monotonic() + seconds
    step = 0
    try:
        while time.monotonic() < deadline:
            step += 1
            time.sleep(0.05)
            if how == "raise":
                report_progress(min(step / 100, 1.0), f"step {step}")
            elif how == "check" and should_stop():
                _log_run(oracle, tag, "stopped")
                return "stopped"
    except JobStopped:
        _log_run(oracle, tag, "stopped")
        raise
    _log_run(oracle, tag, "end")
    return "end"


def fails_when_stopped(oracle: str, tag: str, seconds: float) -> None:
    """Like :func:`until_stopped`, but raises an error of its own when asked to stop."""
    if until_stopped(oracle, tag, seconds) == "stopped":
        raise RuntimeError(f"sampleapp job {tag} gives up")
