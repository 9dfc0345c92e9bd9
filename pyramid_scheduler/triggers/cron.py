"""The DST-safe cron trigger: APScheduler's, firing once per wall-clock time.

:func:`pyramid_scheduler.triggers.build.build_trigger` builds every cron
schedule as a :class:`WallClockCronTrigger`, on both ends, and the job store
keeps it pickled under this class. Releases before 1.0 stored it as
``pyramid_scheduler.catchup.WallClockCronTrigger``: the job store's unpickler
(:mod:`pyramid_scheduler.store.unpickle`) loads that name as this class.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from apscheduler.triggers.cron import CronTrigger


def as_utc(when: datetime) -> datetime:
    """*when* in UTC. Aware datetimes in one zone compare and subtract by wall
    time, which repeats in a DST change; in UTC they compare as instants."""
    return when.astimezone(timezone.utc)


class WallClockCronTrigger(CronTrigger):  # type: ignore[misc]
    """APScheduler's cron trigger, firing once per wall-clock time, every day.

    When the clocks go back (Europe/Berlin, last Sunday of October: 03:00
    CEST -> 02:00 CET), APScheduler 3's cron trigger fires at a wall-clock
    time of the repeated hour twice (02:30 CEST, then 02:30 CET): a daily
    job would run twice that day. Here the second occurrence is skipped, as
    cron does. A wall time in the skipped hour of spring (02:00 -> 03:00)
    fires once, as far after the change as it was written after the hour's
    start (02:30 at 03:30), and is returned as that wall time (APScheduler
    returns a 02:30 that does not exist); the day after a change is not
    skipped (see :meth:`_increment_field_value`).
    """

    __slots__ = ()

    def _increment_field_value(self, dateval: datetime, fieldnum: int) -> tuple[datetime, int]:
        # APScheduler adds the wall-clock difference to the *UTC* time: across
        # a change of offset that lands an hour off (from 00:00:01 CET on the
        # spring day, "next day 00:00" becomes 01:00 CEST and a daily 00:00
        # job skips a day; agronholm/apscheduler#529 and #606, still in
        # 3.11.3). Add it to the wall-clock time instead.
        moved, fieldnum = super()._increment_field_value(dateval, fieldnum)
        wall = dateval.replace(tzinfo=None) + (as_utc(moved) - as_utc(dateval))
        # Keep the occurrence (fold) of a repeated wall time, so time never
        # goes back; a wall time that does not exist (spring gap) moves
        # forward, as cron does.
        local = wall.replace(tzinfo=self.timezone, fold=dateval.fold)
        return as_utc(local).astimezone(self.timezone), fieldnum

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        fire = super().get_next_fire_time(previous_fire_time, now)
        for _ in range(3):  # a repeat is skipped past its overlap; never loop
            if fire is None or not self._repeats(fire):
                break
            fire = super().get_next_fire_time(None, self._after_overlap(fire))
        # Through UTC: in the skipped hour APScheduler returns a wall time that
        # does not exist (02:30 with the offset before the change, the instant
        # 03:30 after it); the run time, its events and logs show 03:30.
        return None if fire is None else as_utc(fire).astimezone(self.timezone)

    def _after_overlap(self, fire: datetime) -> datetime:
        """The first instant after the repeated wall-clock hour *fire* is in."""
        low = as_utc(fire)
        high = low + (fire.replace(fold=0).utcoffset() - fire.utcoffset())  # type: ignore[operator]
        while high - low > timedelta(microseconds=1):
            middle = low + (high - low) / 2
            local = middle.astimezone(self.timezone)
            if local.fold and local.replace(fold=0).utcoffset() != local.utcoffset():
                low = middle
            else:
                high = middle
        return high.astimezone(self.timezone)

    def _repeats(self, fire: datetime) -> bool:
        """True if *fire* is the second occurrence of a wall-clock time that
        already fired (fold=1 in a DST overlap)."""
        if not fire.fold:
            return False
        first = fire.replace(fold=0)
        if first.utcoffset() == fire.utcoffset():
            return False
        twin = super().get_next_fire_time(None, first)
        return twin is not None and as_utc(twin) == as_utc(first)
