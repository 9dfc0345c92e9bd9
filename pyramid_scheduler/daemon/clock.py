"""Clock: where the daemon reads the current time.

The engine (:mod:`pyramid_scheduler.daemon.engine`), the scheduling of due
jobs (:mod:`pyramid_scheduler.daemon.scheduling`) and the runner
(:mod:`pyramid_scheduler.daemon.execution`) ask a :class:`Clock` for "now"
wherever a schedule is read: a job's first fire time, a run's lateness, a
retry's due time, what is due. The daemon's is :data:`SYSTEM_CLOCK`;
:mod:`pyramid_scheduler.testing` passes its fake clock, which moves only
when a test says so.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    """Tells the current time."""

    def now(self) -> datetime:
        """The current time, aware, in UTC."""
        ...


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)


#: The daemon's clock: the real time.
SYSTEM_CLOCK: Clock = SystemClock()
