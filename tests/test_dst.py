"""Daylight saving changes, in-process: every "when is it due" is an instant.

For each place that computes a due time (the scheduler thread's window, the
catch-up plan, retries, an interval's first fire time, previews, the testing
kit's fake clock), a time in the *second* pass of the repeated hour of autumn
(``fold=1``) and a time next to the skipped hour of spring. In a ``zoneinfo``
zone, ``aware + timedelta`` moves the wall clock and resets ``fold``, and two
times of one zone compare by wall time: each test here failed when that place
did its arithmetic in the job's zone. The live daemon through the same
changes is ``tests/integration/test_dst.py``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.interval import IntervalTrigger
from pyramid.config import Configurator

from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon import scheduling as due
from pyramid_scheduler.daemon.catchup import count_between, plan_run_times
from pyramid_scheduler.daemon.retries import plan_retry
from pyramid_scheduler.triggers.build import build_trigger
from pyramid_scheduler.triggers.preview import fire_times

UTC = timezone.utc
PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")

#: (zone, the instant of the change in UTC) for each change of 2026.
AUTUMN = [
    (PARIS, datetime(2026, 10, 25, 1, tzinfo=UTC)),  # 03:00 CEST -> 02:00 CET
    (NEW_YORK, datetime(2026, 11, 1, 6, tzinfo=UTC)),
]  # 02:00 EDT -> 01:00 EST
SPRING = [
    (PARIS, datetime(2026, 3, 29, 1, tzinfo=UTC)),  # 02:00 CET -> 03:00 CEST
    (NEW_YORK, datetime(2026, 3, 8, 7, tzinfo=UTC)),
]  # 02:00 EST -> 03:00 EDT
CHANGES = [
    pytest.param(zone, at, id=f"{zone.key}-{kind}")
    for kind, changes in (("autumn", AUTUMN), ("spring", SPRING))
    for zone, at in changes
]
AUTUMN_ONLY = [pytest.param(zone, at, id=zone.key) for zone, at in AUTUMN]


def in_second_pass(zone: ZoneInfo, change: datetime, minutes: int) -> datetime:
    """*minutes* after an autumn change, in *zone*: a wall time that occurred
    an hour before (``fold=1``)."""
    local = (change + timedelta(minutes=minutes)).astimezone(zone)
    assert local.fold == 1
    return local


# -- the scheduler thread's window (due.py) -----------------------------------------


class StubStore:
    """What DueScheduler._process_window asks of a queue's job store."""

    changes = 0
    claims = None  # no other daemon shares the table

    def __init__(self, following: datetime | None) -> None:
        self.following = following
        self.loads: list[datetime] = []

    def fenced(self) -> bool:
        return False

    def pending(self) -> int:
        return 0

    def load_window(self, until: datetime) -> tuple[list[Any], datetime | None]:
        self.loads.append(until)
        return [], self.following


@pytest.mark.parametrize(("zone", "change"), AUTUMN_ONLY)
def test_due_window_reaches_ahead_in_the_second_pass_of_the_repeated_hour(zone, change):
    """Issue 23: the window was ``now + LOOKAHEAD`` on the wall clock, an hour
    in the past during the second pass, so nothing due then was loaded."""
    scheduler = due.DueScheduler()
    now = in_second_pass(zone, change, 12)
    following = in_second_pass(zone, change, 27)  # the next run of a job every 15 minutes
    store = StubStore(following)
    wakeup = scheduler._process_window("jobs", store, now, [])
    assert [until.timestamp() - now.timestamp() for until in store.loads] == [pytest.approx(due.LOOKAHEAD)]
    assert wakeup is not None
    assert wakeup.timestamp() == pytest.approx(following.timestamp() - due.LEAD)
    # Not loaded again before the next job is near (the wall-clock "following -
    # LEAD" was an hour early: a load on every round for an hour).
    scheduler._process_window("jobs", store, now + (wakeup - now) / 2, [])
    assert len(store.loads) == 1


@pytest.mark.parametrize(("zone", "change"), AUTUMN_ONLY)
def test_due_window_holds_a_job_due_in_the_second_pass_until_its_time(zone, change):
    """A recurring job moved on to a time of the second pass is within the
    window by its instant, not by its wall time (02:xx, which the first pass
    already had)."""
    now = change - timedelta(minutes=30)  # 02:30 CEST / 01:30 EDT, first pass
    window = due._Window([], now + timedelta(seconds=due.LOOKAHEAD), None, 0)

    class Job:
        next_run_time = in_second_pass(zone, change, 15)  # the same wall time, an hour later

    window.add(Job)
    assert window.jobs == []
    # (By timestamp: a time in a repeated hour never equals one of another zone.)
    assert window.following is not None
    assert window.following.timestamp() == Job.next_run_time.timestamp()
    assert window.pop_due(now) == []


# -- catch-up (catchup.py) --------------------------------------------------------------


@pytest.mark.parametrize(("zone", "change"), AUTUMN_ONLY)
def test_catch_up_counts_missed_interval_runs_by_real_time(zone, change):
    trigger = IntervalTrigger(minutes=15, start_date=change - timedelta(hours=2), timezone=zone)
    first = (change - timedelta(minutes=15)).astimezone(zone)  # 02:45 CEST (01:45 EDT)
    last = in_second_pass(zone, change, 45)  # 02:45 CET (01:45 EST)
    assert count_between(trigger, first, last) == 5
    # A span summarised past the limit ends a real interval before the latest run.
    start = (change - timedelta(hours=1)).astimezone(zone)
    runs = plan_run_times(trigger, start, in_second_pass(zone, change, 50), coalesce=True, limit=2)
    (span,) = [missed for missed in runs[-1].skipped if missed.count != 1]
    assert runs[-1].timestamp() == (change + timedelta(minutes=45)).timestamp()
    assert span.last is not None and span.last.timestamp() == (change + timedelta(minutes=30)).timestamp()
    assert span.count == 5  # from the third run (change - 30 min) to the latest, not included


# -- retries (retries.py) and an interval's first fire time (messages.py) --------------


@pytest.mark.parametrize(("zone", "change"), AUTUMN_ONLY)
def test_retry_is_due_its_delay_after_the_failure(zone, change):
    record = {"request": '{"options": {"retries": 2, "retry_delay": 600}}', "attempt": 1}
    failed_at = in_second_pass(zone, change, 55)
    plan = plan_retry(record, failed_at)
    assert plan is not None
    assert plan.at.timestamp() - failed_at.timestamp() == 600
    before = (change - timedelta(minutes=5)).astimezone(zone)  # fails in the first pass
    plan = plan_retry(record, before)
    assert plan is not None and plan.at == change + timedelta(minutes=5)


@pytest.mark.parametrize(("zone", "change"), AUTUMN_ONLY)
def test_interval_without_start_counts_from_acceptance_in_real_time(zone, change):
    anchor = in_second_pass(zone, change, 10)
    trigger = build_trigger({"type": "interval", "timezone": zone.key, "minutes": 30}, zone, anchor=anchor)
    first = trigger.get_next_fire_time(None, anchor.astimezone(UTC))
    assert first.timestamp() - anchor.timestamp() == 30 * 60


# -- previews (schedules.py) -----------------------------------------------------------


@pytest.mark.parametrize(("zone", "change"), CHANGES)
def test_interval_preview_is_every_15_real_minutes_through_the_change(zone, change):
    trigger = build_trigger(
        {
            "type": "interval",
            "timezone": zone.key,
            "minutes": 15,
            "start_date": (change - timedelta(hours=1)).isoformat(),
        },
        zone,
    )
    times = fire_times(trigger, change - timedelta(minutes=50), 8, zone)
    assert [t.astimezone(UTC) for t in times] == [
        change - timedelta(minutes=45) + i * timedelta(minutes=15) for i in range(8)
    ]
    assert all(t.tzinfo is zone for t in times)


# -- the testing kit's fake clock (testing.py) -----------------------------------------

CALLS: list[str] = []


def work(tag: str) -> str:
    CALLS.append(tag)
    return tag


def flaky(tag: str) -> None:
    CALLS.append(tag)
    if CALLS.count(tag) == 1:
        raise RuntimeError(f"{tag} fails once")


def make_scheduler(zone: ZoneInfo) -> Any:
    CALLS.clear()
    config = Configurator(settings={"scheduler.timezone": zone.key})
    config.include("pyramid_scheduler.testing")
    config.commit()
    return config.registry.scheduler


@pytest.mark.parametrize(("zone", "change"), CHANGES)
def test_fake_clock_runs_interval_date_retry_and_cron_jobs_through_the_change(zone, change):
    scheduler = make_scheduler(zone)
    start = change - timedelta(hours=1, minutes=5)
    scheduler.clock.set(start)
    scheduler.add_interval_job(
        work, args=["every-15"], minutes=15, start_date=change - timedelta(hours=1), id="every-15"
    )
    date_at = change + timedelta(minutes=20)  # in the second pass in autumn
    scheduler.add_date_job(work, date_at.astimezone(zone).isoformat(), args=["date"], id="date")
    # Fails 10 minutes before the change; its retry is due 15 minutes later.
    scheduler.add_date_job(
        flaky, change - timedelta(minutes=10), args=["retry"], id="retry", retries=1, retry_delay=900
    )
    scheduler.add_cron_job(work, args=["cron"], crontab="30 * * * *", id="cron")

    runs = scheduler.clock.advance(hours=2, minutes=10)
    assert scheduler.clock.now() == start + timedelta(hours=2, minutes=10)
    at = {run["job_id"]: [] for run in runs}
    for run in runs:
        at[run["job_id"]].append(run["scheduled_run_time"].astimezone(UTC))
    assert at["every-15"] == [change - timedelta(hours=1) + i * timedelta(minutes=15) for i in range(9)]
    assert at["date"] == [date_at]
    assert at["retry"] == [change - timedelta(minutes=10), change + timedelta(minutes=5)]
    assert [run["status"] for run in runs if run["job_id"] == "retry"] == ["failed", "done"]
    assert not [run for run in runs if run["status"] == "missed"]
    assert not [e for e in scheduler.events if e.type == Event.JOB_MISSED]
    # Cron: the wall clock's :30 of each hour that exists, once: in autumn the
    # repeated hour's 02:30 (Paris; 01:30 New York) runs in its first pass only.
    cron = [t.astimezone(zone) for t in at["cron"]]
    assert len({t.replace(tzinfo=None) for t in cron}) == len(cron)
    assert all(t.minute == 30 for t in cron)


@pytest.mark.parametrize(("zone", "change"), AUTUMN_ONLY)
def test_fake_clock_advances_by_real_time_after_a_run_in_the_second_pass(zone, change):
    """The clock stays in UTC: after a run in the second pass it was set to
    the run's local time, and ``advance`` then added to the wall clock,
    taking the clock an hour back."""
    scheduler = make_scheduler(zone)
    scheduler.clock.set(change)
    scheduler.add_interval_job(work, args=["tick"], minutes=10, start_date=change + timedelta(minutes=10))
    scheduler.clock.advance(minutes=10)  # to the run's time exactly
    runs = scheduler.clock.advance(minutes=20)
    assert scheduler.clock.now() == change + timedelta(minutes=30)
    assert [run["scheduled_run_time"].timestamp() for run in runs] == [
        (change + timedelta(minutes=m)).timestamp() for m in (20, 30)
    ]
    assert CALLS == ["tick"] * 3


@pytest.mark.parametrize(
    ("zone", "change", "local"),
    [
        pytest.param(PARIS, SPRING[0][1], "03:30", id="spring"),
        pytest.param(PARIS, AUTUMN[0][1], "02:30", id="autumn"),
    ],
)
def test_fake_clock_daily_cron_in_the_changed_hour_runs_once(zone, change, local):
    """``30 2 * * *``: 03:30 CEST on the spring day (02:30 does not exist:
    the same distance after the change), 02:30 CEST once on the autumn day."""
    scheduler = make_scheduler(zone)
    scheduler.clock.set(change - timedelta(hours=12))
    scheduler.add_cron_job(work, args=["nightly"], crontab="30 2 * * *")
    runs = scheduler.clock.advance(hours=24)
    assert [run["scheduled_run_time"].astimezone(zone).strftime("%H:%M") for run in runs] == [local]


@pytest.mark.parametrize(
    ("crontab", "local"), [("30 2 * * *", "03:30"), ("0 2 * * *", "03:00"), ("30 3 * * *", "03:30")]
)
def test_fake_clock_cron_in_the_skipped_hour_runs_as_far_after_the_change(crontab, local):
    zone, change = SPRING[0]
    scheduler = make_scheduler(zone)
    scheduler.clock.set(change - timedelta(hours=12))
    scheduler.add_cron_job(work, args=["nightly"], crontab=crontab)
    (run,) = scheduler.clock.advance(hours=24)
    assert run["scheduled_run_time"].astimezone(zone).strftime("%H:%M %Z") == f"{local} CEST"


@pytest.mark.parametrize(
    ("when", "change", "utc"),
    [
        pytest.param("2026-03-29T02:30:00", SPRING[0][1], "01:30", id="skipped-hour"),
        pytest.param("2026-10-25T02:30:00", AUTUMN[0][1], "00:30", id="repeated-hour-first-pass"),
        pytest.param("2026-10-25T02:30:00+01:00", AUTUMN[0][1], "01:30", id="repeated-hour-second-pass"),
    ],
)
def test_fake_clock_date_given_as_a_wall_time_around_a_change(when, change, utc):
    """A naive time is read in scheduler.timezone: in the skipped hour with
    the offset before the change, in the repeated hour as the first pass."""
    scheduler = make_scheduler(PARIS)
    scheduler.clock.set(change - timedelta(hours=2))
    scheduler.add_date_job(work, when, args=["date"])
    (run,) = scheduler.clock.advance(hours=4)
    assert run["scheduled_run_time"].astimezone(UTC).strftime("%H:%M") == utc
    assert run["status"] == "done"
