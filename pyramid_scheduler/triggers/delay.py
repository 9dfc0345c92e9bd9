"""Fixed delay: an interval counted from the end of each run, not from a grid.

``add_interval_job(func, minutes=5, fixed_delay=True)`` travels as an
interval trigger spec with ``"fixed_delay": true``
(:func:`pyramid_scheduler.triggers.build.build_trigger` makes it a
:class:`FixedDelayTrigger`). APScheduler moves a job on as its run is
handed to the pool, before the run ends, so the trigger alone cannot know
when the next run is due: it gives a provisional time (one interval after
the run was handed over), scheduling holds a due job back while its
previous run is still in the pool
(:class:`pyramid_scheduler.daemon.scheduling.DueScheduler`), and once the run
has ended execution moves the job to one interval after that end
(:meth:`pyramid_scheduler.daemon.scheduling.StoreBack.delay_next`). A daemon
that dies during a run leaves the provisional time, so the job still runs
after a restart.
"""

from __future__ import annotations

from datetime import datetime

from apscheduler.triggers.interval import IntervalTrigger


class FixedDelayTrigger(IntervalTrigger):  # type: ignore[misc]
    """An interval trigger whose next fire time, after a run, is one
    interval after *now* (the run's hand-over, or its end) rather than on the
    grid of ``start_date + k * interval``. The first fire time is
    :class:`~apscheduler.triggers.interval.IntervalTrigger`'s. Jitter and
    ``end_date`` apply as there; it pickles as its base class does."""

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        if previous_fire_time is None:
            return super().get_next_fire_time(None, now)  # type: ignore[no-any-return]
        # From the later of the two: a preview steps with now = the previous time.
        start = max(previous_fire_time.timestamp(), now.timestamp())
        return super().get_next_fire_time(datetime.fromtimestamp(start, self.timezone), now)  # type: ignore[no-any-return]

    def after(self, ended: datetime) -> datetime | None:
        """The next fire time of a job whose run ended at *ended* (None: past ``end_date``)."""
        return self.get_next_fire_time(ended, ended)

    def __str__(self) -> str:
        return f"interval[{self.interval!s}] after each run ends"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} (interval={self.interval!r}, fixed_delay=True)>"
