"""Control of running jobs: their progress, and the requests that they stop.

Between execution (:mod:`.execution`), which opens a :class:`Control` for
each run and makes it current for the job's code
(:func:`pyramid_scheduler.progress.running`), and the job's own calls of
:func:`~pyramid_scheduler.report_progress` and
:func:`~pyramid_scheduler.should_stop`. Below it, the job store
(:mod:`pyramid_scheduler.store.progress`); beside it, management
(:mod:`.management`), which tells :meth:`Controls.cancel` the jobs it cancels.

* **Progress** is kept in the run's :class:`Control` and written (one row
  per job) with a JOB_PROGRESS event at most once per
  :data:`PROGRESS_INTERVAL` per run; the report last made is always written
  when the run ends. A failed write is logged, never the job's failure.
* **Stop requests** come two ways. ``cancel_job`` sets the job's status to
  ``canceled`` in the job store, whichever daemon consumed the message (the
  only place every daemon of a queue shares, and one that outlives a broker
  or fan-out outage); one watcher thread per daemon reads the status of the
  jobs it runs, every :data:`WATCH_INTERVAL`, in one query for all of them.
  When this daemon consumed the cancel itself, management tells the run at
  once. Either way :func:`~pyramid_scheduler.should_stop` only reads a flag.
* **Timeouts** (the ``timeout=`` job option, at least :data:`MIN_TIMEOUT`
  seconds) are read from the job's record once a run has lasted that long,
  so short runs cost no read. Past it the run is asked to stop; a run still
  going :attr:`Controls.grace` seconds after its deadline is logged at WARNING
  (a thread cannot be killed: stopping is cooperative).

The outcome a stop gives the run (:meth:`Control.end`): ``stopped`` for a
canceled job whose run saw the request (its status stays ``canceled``; no
retry; a run that never looked keeps its own outcome, as before),
``timed-out`` for a timeout (the job's attempt failed; retried like a failure).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon.clock import Clock
from pyramid_scheduler.exceptions import JobStopped
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.progress import job_statuses, job_timeouts, write_progress

log = get_logger(__name__)

#: Seconds between two progress writes (and JOB_PROGRESS events) of one run.
PROGRESS_INTERVAL = 0.5
#: Seconds between two reads of the stop requests of the running jobs.
WATCH_INTERVAL = 0.5
#: Seconds between two looks at a run's deadline from the job's own calls.
CHECK_INTERVAL = 0.05
#: The shortest ``timeout`` a job may ask for, in seconds.
MIN_TIMEOUT = 1.0
#: Seconds a timed-out run may go on before a warning says it does.
TIMEOUT_GRACE = 30.0
#: How a traceback of JobStopped ends.
STOPPED_LINE = f"{JobStopped.__module__}.{JobStopped.__qualname__}:"
#: Outcomes of a stopped run, by the reason it was asked to stop.
STOP_OUTCOMES = {"canceled": "stopped", "timed out": "timed-out"}


class Control:
    """One run's progress and stop request (see the module)."""

    def __init__(self, controls: Controls, job_id: str, queue: str, run_key: str, info: dict[str, Any]) -> None:
        self.controls = controls
        self.job_id, self.queue, self.run_key, self.info = job_id, queue, run_key, info
        self.started = controls.clock.now()
        self.started_monotonic = time.monotonic()
        #: The job's timeout in seconds (None: none, or not read yet).
        self.timeout: float | None = None
        self.timeout_read = False
        #: Why the run was asked to stop (``canceled``, ``timed out``), or None.
        self.stop_reason: str | None = None
        self.warned = False
        #: The job was told to stop (should_stop() was true, or JobStopped raised in it).
        self.observed = False
        #: What the stop made of the run (see :meth:`end`), once it has ended.
        self.outcome: str | None = None
        self._pending: tuple[float, str, float] | None = None
        self._written = -PROGRESS_INTERVAL
        self._next_check = 0.0

    # report() and should_stop() are called from the job's thread only (and
    # end() after them): no lock; the watcher only sets stop_reason.
    def report(self, fraction: float, message: str) -> None:
        self._pending = (fraction, message, self.controls.ledger.now())
        if time.monotonic() - self._written >= PROGRESS_INTERVAL:
            self.flush()
        if self.should_stop():
            raise JobStopped(self.job_id, self.stop_reason or "")

    def should_stop(self) -> bool:
        if self.stop_reason is None:
            now = time.monotonic()
            if now >= self._next_check:  # the clock is read at most every CHECK_INTERVAL
                self._next_check = now + CHECK_INTERVAL
                self.check_deadline(self.controls.clock.now())
        if self.stop_reason is None:
            return False
        self.observed = True
        return True

    def stop(self, reason: str) -> None:
        """Ask the run to stop (once; the first reason stands)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.info("job %s (queue %s): run %s asked to stop: %s", self.job_id, self.queue, self.run_key, reason)

    def deadline(self) -> datetime | None:
        return None if self.timeout is None else self.started + timedelta(seconds=self.timeout)

    def check_deadline(self, now: datetime) -> None:
        """Read the job's timeout once the run has lasted :data:`MIN_TIMEOUT`;
        ask the run to stop past it, and warn past its grace."""
        if not self.timeout_read and (now - self.started).total_seconds() >= MIN_TIMEOUT:
            self.timeout_read, self.timeout = self.controls.timeout_of(self.job_id)
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return
        self.stop("timed out")
        if not self.warned and now >= deadline + timedelta(seconds=self.controls.grace):
            self.warned = True
            log.warning(
                "job %s (queue %s): run %s is still running %gs past its timeout of %gs; stopping is "
                "cooperative (the job should check pyramid_scheduler.should_stop())",
                self.job_id,
                self.queue,
                self.run_key,
                (now - deadline).total_seconds(),
                self.timeout,
            )

    def flush(self) -> None:
        """Write the latest report not yet written, and tell its event."""
        pending, self._pending = self._pending, None
        self._written = time.monotonic()
        if pending is None:
            return
        fraction, message, at = pending
        controls = self.controls
        try:
            write_progress(controls.ledger, controls.ledger.engine, self.job_id, self.run_key, fraction, message, at)
        except Exception as exc:  # noqa: BLE001 - progress is never the job's failure
            log.warning("job %s: progress of run %s not recorded: %s", self.job_id, self.run_key, exc)
        controls.emit(
            Event(
                Event.JOB_PROGRESS,
                job_id=self.job_id,
                queue=self.queue,
                job=self.info,
                run_key=self.run_key,
                fraction=fraction,
                message=message,
                at=at,
            )
        )

    def explain(self, text: str) -> str:
        """The error text of a run that raised: *text*, after the reason it
        was asked to stop when it was and raised something else."""
        if self.outcome is None or text.rstrip().rsplit("\n", 1)[-1].startswith(STOPPED_LINE):
            return text
        return f"{JobStopped(self.job_id, self.stop_reason or '')}\n{text}"

    def end(self) -> str | None:
        """The run has returned: write its last report, stop watching it,
        and give its outcome if it was asked to stop (``stopped``,
        ``timed-out``), else None. A canceled run that never saw the request
        (it neither reported progress nor asked since) keeps its own outcome;
        a timed-out one is timed out whatever it did."""
        self.controls.forget(self)
        self.flush()
        if self.stop_reason is None:
            self.check_deadline(self.controls.clock.now())
        if self.stop_reason != "canceled" or self.observed:
            self.outcome = STOP_OUTCOMES.get(self.stop_reason or "")
        return self.outcome


class Controls:
    """The controls of one daemon's runs, and the thread that watches them.

    :param ledger: where progress is written and stop requests are read.
    :param emit: hands a JOB_PROGRESS event over (:meth:`.JobEvents.emit`).
    :param clock: where "now" is read (a run's deadline).
    """

    def __init__(
        self, ledger: Ledger, emit: Callable[[Event], None], clock: Clock, grace: float = TIMEOUT_GRACE
    ) -> None:
        self.ledger, self.emit, self.clock, self.grace = ledger, emit, clock, grace
        self._runs: dict[int, Control] = {}
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def start(self, job_id: str, queue: str, run_key: str, info: dict[str, Any]) -> Control:
        """A :class:`Control` for a run starting now, watched until it ends."""
        control = Control(self, job_id, queue, run_key, info)
        with self._lock:
            self._runs[id(control)] = control
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="pscheduler-control", daemon=True)
                self._watcher.start()
        return control

    def forget(self, control: Control) -> None:
        with self._lock:
            self._runs.pop(id(control), None)

    def cancel(self, job_id: str) -> None:
        """*job_id* was canceled here: its runs going here are asked to stop now."""
        with self._lock:
            runs = [control for control in self._runs.values() if control.job_id == job_id]
        for control in runs:
            control.stop("canceled")

    def timeout_of(self, job_id: str) -> tuple[bool, float | None]:
        """Whether *job_id*'s timeout could be read, and the timeout."""
        try:
            return True, job_timeouts(self.ledger, self.ledger.engine, [job_id]).get(job_id)
        except Exception as exc:  # noqa: BLE001 - read again at the next look
            log.warning("job %s: its timeout could not be read: %s", job_id, exc)
            return False, None

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL)
            with self._lock:
                if not self._runs:
                    self._watcher = None
                    return
                edge = time.monotonic() - WATCH_INTERVAL
                runs = [control for control in self._runs.values() if control.started_monotonic <= edge]
            try:
                self.look(runs)
            except Exception:
                log.exception("reading the stop requests of %d running job(s) failed", len(runs))

    def look(self, runs: list[Control]) -> None:
        """Ask *runs* to stop whose job was canceled or whose timeout passed."""
        live = [control for control in runs if control.stop_reason is None]
        if live:
            statuses = job_statuses(self.ledger, self.ledger.engine, {control.job_id for control in live})
            for control in live:
                if statuses.get(control.job_id) == "canceled":
                    control.stop("canceled")
        now = self.clock.now()
        for control in runs:
            control.check_deadline(now)
