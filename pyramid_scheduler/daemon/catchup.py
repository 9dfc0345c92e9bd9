"""Catch-up: which of a recurring job's overdue runs are run, and which are missed.

Between the engine (which stores jobs) and the runner (which carries out each
run). When APScheduler finds a job due, it asks the job for the run times
between its stored next run time and now (``Job._get_run_times``), keeps only
the last one if the job coalesces -- dropping the others without a trace --
and enumerates *every* fire time on the way: an interval job of one second
whose next run time is 30 days old (a suspended VM, a clock set forward)
builds a list of 2.6 million datetimes before anything runs.

:class:`CatchUpJob` replaces that enumeration with :func:`plan_run_times`:
at most ``scheduler.catch_up_limit`` fire times are enumerated one by one;
the rest, up to the latest fire time due now (found in a few trigger calls,
whatever the gap), become one summary. Each run time handed to the executor
is a :class:`ScheduledRun` that carries the runs missed before it, so the
runner records every skipped run (a JOB_MISSED event and a ``missed`` row in
the runs ledger) and none is dropped silently.

The policy (``catch_up``, per job or ``scheduler.catch_up``) maps onto
APScheduler's own job options, which are what the job store keeps:

========  ======================  ==========
catch_up  misfire_grace_time      coalesce
========  ======================  ==========
skip      the job's (or default)  the job's
once      None                    True
all       None                    False
========  ======================  ==========
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from apscheduler.job import Job
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from pyramid_scheduler.daemon.aps import scheduler_of
from pyramid_scheduler.triggers.cron import as_utc

#: Overdue fire times enumerated one by one, when the scheduler has no setting.
DEFAULT_LIMIT = 100


def job_options(policy: str, options: dict[str, Any]) -> dict[str, Any]:
    """APScheduler's ``misfire_grace_time`` and ``coalesce`` for *policy*,
    merged into a job's *options* (``skip`` keeps the job's own)."""
    if policy == "once":
        return {**options, "misfire_grace_time": None, "coalesce": True}
    if policy == "all":
        return {**options, "misfire_grace_time": None, "coalesce": False}
    return options


@dataclass(frozen=True)
class Missed:
    """Fire times of a job that will not be run: one, or a summarised span."""

    #: The first (or only) fire time.
    first: datetime
    reason: str
    #: How many fire times this stands for (None: at least one, not counted).
    count: int | None = 1
    #: The last fire time of a span (None for a single fire time).
    last: datetime | None = None


class ScheduledRun(datetime):
    """A run time handed to the executor, with the runs missed just before it."""

    skipped: tuple[Missed, ...] = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> datetime:  # type: ignore[misc]
        # Arithmetic and astimezone() on a datetime subclass build their
        # result by calling the subclass: here they get a plain datetime, so
        # nothing derived from a run time (the next run time APScheduler
        # stores, which the restricted unpickler must load) is one of these.
        return datetime(*args, **kwargs)

    def replace(self, *args: Any, **kwargs: Any) -> datetime:  # type: ignore[override]
        return self.plain().replace(*args, **kwargs)

    def astimezone(self, tz: Any = None) -> datetime:  # type: ignore[override]
        return self.plain().astimezone(tz)

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self.plain().__reduce_ex__(protocol)

    @classmethod
    def of(cls, when: datetime, skipped: tuple[Missed, ...] | list[Missed] = ()) -> ScheduledRun:
        run = datetime.__new__(
            cls,
            when.year,
            when.month,
            when.day,
            when.hour,
            when.minute,
            when.second,
            when.microsecond,
            when.tzinfo,
            fold=when.fold,
        )
        run.skipped = tuple(skipped)
        return run

    def plain(self) -> datetime:
        """The run time as a plain datetime (for events and logs)."""
        return datetime(
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            self.microsecond,
            self.tzinfo,
            fold=self.fold,
        )


def plain(when: datetime) -> datetime:
    """*when* as a plain datetime, whether or not it is a :class:`ScheduledRun`."""
    return when.plain() if isinstance(when, ScheduledRun) else when


def latest_fire_time(trigger: BaseTrigger, now: datetime, after: datetime) -> datetime:
    """The trigger's last fire time at or before *now*, given *after*, a fire
    time at or before *now*.

    The trigger API only goes forward, so this probes back from *now* with
    doubling windows (``get_next_fire_time(None, now - w)``, a constant-time
    call for interval and cron triggers) until a fire time within the window
    turns up, then steps forward: a few dozen calls for any gap.
    """
    window = timedelta(seconds=1)
    found = after
    while True:
        probe = max(as_utc(now) - window, as_utc(after))
        fire = trigger.get_next_fire_time(None, probe)
        if fire is not None and as_utc(after) <= as_utc(fire) <= as_utc(now):
            found = fire
            break
        if probe == as_utc(after):
            break
        window *= 2
    for _ in range(10_000):  # the window holds few fire times; never loop forever
        following = trigger.get_next_fire_time(found, now)
        if following is None or as_utc(following) > as_utc(now) or as_utc(following) <= as_utc(found):
            break
        found = following
    return found


def count_between(trigger: BaseTrigger, first: datetime, last: datetime) -> int | None:
    """How many fire times lie from *first* to *last* inclusive, when that is
    cheap to know (interval triggers); None otherwise."""
    if isinstance(trigger, IntervalTrigger) and not trigger.jitter:
        # In UTC: between two times of one zone, "-" gives the wall-clock difference.
        return int((as_utc(last) - as_utc(first)) / trigger.interval) + 1
    return None


def plan_run_times(
    trigger: BaseTrigger, next_run_time: datetime | None, now: datetime, coalesce: bool, limit: int = DEFAULT_LIMIT
) -> list[ScheduledRun]:
    """The runs to hand to the executor for a job due at *now*.

    The fire times due are those from *next_run_time* up to *now*. At most
    *limit* of them are enumerated one by one; any between those and the
    latest one become a single :class:`Missed` span. The latest fire time is
    always the last run returned, so APScheduler moves the job to its first
    fire time after *now*. With *coalesce*, one run (the latest) is returned
    and every earlier fire time is carried as missed; without, each
    enumerated fire time is a run of its own (the runner still misses those
    later than the job's misfire grace time).
    """
    times: list[datetime] = []
    upcoming = next_run_time
    while upcoming is not None and as_utc(upcoming) <= as_utc(now) and len(times) <= limit:
        times.append(upcoming)
        following = trigger.get_next_fire_time(upcoming, now)
        # Same-zone datetimes compare by wall time: a DST repeat would look equal.
        upcoming = following if following is None or as_utc(following) > as_utc(upcoming) else None
    if not times:
        return []
    span: Missed | None = None
    if len(times) > limit:
        first_over = times.pop()
        more = upcoming is not None and as_utc(upcoming) <= as_utc(now)
        latest = latest_fire_time(trigger, now, upcoming) if more and upcoming is not None else first_over
        if as_utc(latest) > as_utc(first_over):
            # Every fire time from first_over up to (not including) latest.
            count = count_between(trigger, first_over, latest)
            last_over = (
                (as_utc(latest) - trigger.interval).astimezone(latest.tzinfo)
                if isinstance(trigger, IntervalTrigger)
                else None
            )
            span = Missed(first_over, "", None if count is None else count - 1, last_over)
        times.append(latest)
    latest = times[-1]
    if span is not None:
        total = "" if span.count is None else f"{span.count} "
        span = Missed(
            span.first,
            (
                f"{total}runs due from {span.first.isoformat()} up to {latest.isoformat()} were not run: "
                f"more than scheduler.catch_up_limit ({limit}) runs were overdue at once (was the "
                "daemon stopped, or the clock set forward?)"
            ),
            span.count,
            span.last,
        )
    if coalesce:
        reason = (
            f"coalesced: the run due at {latest.isoformat()} runs in its place "
            "(the job coalesces overdue runs: catch_up 'skip' or 'once')"
        )
        skipped = [Missed(when, reason) for when in times[:-1]]
        if span is not None:
            skipped.append(span)
        return [ScheduledRun.of(latest, skipped)]
    runs = [ScheduledRun.of(when) for when in times[:-1]]
    runs.append(ScheduledRun.of(latest, [span] if span is not None else []))
    return runs


class CatchUpJob(Job):  # type: ignore[misc]
    """An APScheduler job whose overdue runs are planned by :func:`plan_run_times`.

    It has APScheduler's slots and state, so stored jobs load either way.
    """

    __slots__ = ()

    def _get_run_times(self, now: datetime) -> list[datetime]:
        limit = getattr(scheduler_of(self), "catch_up_limit", DEFAULT_LIMIT)
        return plan_run_times(self.trigger, self.next_run_time, now, self.coalesce, limit)  # type: ignore[return-value]
