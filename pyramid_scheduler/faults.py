"""Named crash points, so the fault suite can kill the daemon at an exact place.

Set ``PYRAMID_SCHEDULER_CRASH_AT=<point>`` (or ``<point>:<n>`` for the n-th
time the point is reached) in a daemon's environment and the daemon sends
itself SIGKILL there: no cleanup, no finally blocks, as a power cut would.
The points, in the order a job passes them:

``taken``
    (Redis only) the message was moved off the queue, not yet handed to the
    consumer: the window in which Kombu's own Redis transport loses it;
``received``
    a message was read from the broker, nothing stored yet;
``persisted``
    the job is stored (job store and job record), the message not yet acked;
``submitted``
    APScheduler handed a due run to the executor; the run is not yet recorded;
``handed``
    the scheduler thread is about to write the job-store rows of the jobs it
    handed to the executor (deleted, or moved to their next run time), some
    of whose runs may have started or finished;
``started``
    the run is recorded as started, the job function not yet called;
``finished``
    the job function returned, its outcome not yet recorded;
``step-made``
    a step of a chain or group ended, and the job of the step it makes is
    recorded with its outcome (:mod:`pyramid_scheduler.store.flows`), not
    yet handed to a job store.

:doc:`/guarantees` gives the outcome after a restart for each point. Unset
(the normal case), :func:`crash_point` costs one comparison.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

ENV = "PYRAMID_SCHEDULER_CRASH_AT"
POINTS = ("taken", "received", "persisted", "submitted", "handed", "started", "finished", "step-made")


def _parse(spec: str | None) -> tuple[str | None, int]:
    if not spec:
        return None, 0
    name, _, nth = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"{ENV}={spec!r}: unknown crash point; known: {', '.join(POINTS)}")
    return name, int(nth or 1)


_TARGET, _NTH = _parse(os.environ.get(ENV))
_seen = 0
_lock = threading.Lock()


def crash_point(name: str) -> None:
    """SIGKILL this process if *name* is the configured crash point (and its turn)."""
    global _seen
    if _TARGET != name:
        return
    with _lock:
        _seen += 1
        if _seen < _NTH:
            return
    sys.stderr.write(f"pyramid_scheduler: crash point {name!r} reached; SIGKILL\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
