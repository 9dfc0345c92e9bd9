"""The DST-safe cron trigger (:mod:`pyramid_scheduler.triggers.cron`), on the
daemon's own loop (plan the due runs with :mod:`pyramid_scheduler.daemon.catchup`,
then move the job as APScheduler's ``_process_jobs`` does) driven by a
simulated clock across both changes of a year in Europe/Berlin."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from pyramid_scheduler.daemon.catchup import plan_run_times
from pyramid_scheduler.triggers.build import build_trigger
from pyramid_scheduler.triggers.cron import WallClockCronTrigger

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


def test_every_cron_schedule_is_built_as_the_wall_clock_trigger():
    for spec in ({"type": "cron", "hour": 3}, {"type": "cron", "crontab": "30 2 * * *", "timezone": "Europe/Berlin"}):
        assert type(build_trigger(spec, UTC)) is WallClockCronTrigger


def run_daemon_loop(trigger, start, end, step, coalesce=True):
    """The daemon's loop on a simulated clock: each tick, plan the due runs
    (CatchUpJob._get_run_times), then store the next run time as
    APScheduler's _process_jobs does. Returns every planned run time."""
    fired = []
    next_run = trigger.get_next_fire_time(None, start)
    clock = start
    while clock < end:
        if next_run is not None and next_run.astimezone(UTC) <= clock.astimezone(UTC):
            runs = plan_run_times(trigger, next_run, clock, coalesce)
            assert runs, f"due at {next_run} but nothing planned at {clock}"
            assert not [m for run in runs for m in run.skipped], "a run was skipped on a ticking clock"
            assert not fired or runs[0].astimezone(UTC) > fired[-1].astimezone(UTC), (runs, fired[-1])
            fired.extend(run.plain() for run in runs)
            following = trigger.get_next_fire_time(runs[-1], clock)
            assert following is None or following.astimezone(UTC) > clock.astimezone(UTC), (
                f"spins at {clock}: next {following}"
            )
            next_run = following
        clock = (clock.astimezone(UTC) + step).astimezone(BERLIN)  # real time, not wall time
    return fired


@pytest.mark.parametrize("day", [date(2026, 3, 29), date(2026, 10, 25)], ids=["spring", "autumn"])
@pytest.mark.parametrize("hour,minute", [(2, 30), (1, 30), (3, 0), (0, 0)])
def test_a_daily_cron_fires_once_a_day_across_dst_changes(day, hour, minute):
    """Europe/Berlin: 02:00 -> 03:00 on 2026-03-29 (02:30 does not exist),
    03:00 -> 02:00 on 2026-10-25 (02:30 happens twice). A daily cron job
    fires exactly once on each day around the change, never twice, never
    spinning, whatever its time of day."""
    spec = {"type": "cron", "timezone": "Europe/Berlin", "hour": hour, "minute": minute}
    trigger = build_trigger(spec, UTC)
    start = datetime.combine(day - timedelta(days=2), datetime.min.time(), BERLIN)
    end = datetime.combine(day + timedelta(days=3), datetime.min.time(), BERLIN)
    fired = run_daemon_loop(trigger, start, end, timedelta(minutes=1))
    days = [when.astimezone(BERLIN).date() for when in fired]
    assert days == [day + timedelta(days=d) for d in range(-2, 3)], fired
    assert len({when.astimezone(UTC) for when in fired}) == len(fired)
    for when in fired:
        local = when.astimezone(BERLIN)
        if (local.hour, local.minute) != (hour, minute):
            # Only the missing 02:30 of the spring change may move, and only forward.
            assert day.month == 3 and local.date() == day and (hour, minute) == (2, 30), local
            assert local.hour == 3


@pytest.mark.parametrize("day", [date(2026, 3, 29), date(2026, 10, 25)], ids=["spring", "autumn"])
@pytest.mark.parametrize("minute,every", [("15", timedelta(hours=1)), ("*/10", timedelta(minutes=10))])
def test_hourly_and_minutely_crons_never_repeat_or_spin_across_dst_changes(day, minute, every):
    """Every fire time comes after the one before, at its minute; the only
    gaps are the repeated wall-clock hour of autumn (fired once)."""
    trigger = build_trigger({"type": "cron", "timezone": "Europe/Berlin", "minute": minute}, UTC)
    start = datetime.combine(day, datetime.min.time(), BERLIN) - timedelta(hours=3)
    end = start + timedelta(hours=9)
    fired = run_daemon_loop(trigger, start, end, timedelta(seconds=30))
    utc = [when.astimezone(UTC) for when in fired]
    assert utc == sorted(set(utc))
    assert all(str(when.astimezone(BERLIN).minute) == minute or when.minute % 10 == 0 for when in fired)
    gaps = {b - a for a, b in zip(utc, utc[1:], strict=False)}
    assert gaps <= {every, every + timedelta(hours=1)}, sorted(gaps)
    if day.month == 3:
        assert gaps == {every}  # the hour that does not exist has no fire time to skip
    wall = [when.astimezone(BERLIN).replace(tzinfo=None) for when in fired]
    assert len(wall) == len(set(wall))  # once per wall-clock time


@pytest.mark.parametrize("minute", ["*", "*/10", "15"])
def test_a_cron_started_during_the_repeated_hour_never_fires_in_the_past(minute):
    """A daemon (re)started while the clocks show the repeated hour the
    second time (CET): the first fire time is never before now, and the
    loop goes on without repeats."""
    trigger = build_trigger({"type": "cron", "timezone": "Europe/Berlin", "minute": minute}, UTC)
    instant = datetime(2026, 10, 25, 0, 0, tzinfo=UTC)  # 02:00 CEST; 01:00 UTC is 02:00 CET
    while instant < datetime(2026, 10, 25, 2, 30, tzinfo=UTC):
        fire = trigger.get_next_fire_time(None, instant.astimezone(BERLIN))
        assert fire.astimezone(UTC) >= instant, (instant.astimezone(BERLIN), fire)
        instant += timedelta(minutes=7, seconds=13)
    start = datetime(2026, 10, 25, 1, 20, tzinfo=UTC).astimezone(BERLIN)  # 02:20 CET, fold=1
    fired = run_daemon_loop(trigger, start, start + timedelta(hours=2), timedelta(seconds=30))
    assert fired and all(when.astimezone(UTC) >= start.astimezone(UTC) for when in fired)
