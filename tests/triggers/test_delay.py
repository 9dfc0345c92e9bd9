"""Fixed-delay interval jobs (:mod:`pyramid_scheduler.triggers.delay`) and
``reschedule_job(id)`` with no new schedule, through the testing kit (the
daemon's engine on a fake clock), the previews, the command line's schedule
text and what the daemon's door refuses."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pyramid.config import Configurator
from pyramid.threadlocal import get_current_registry

from pyramid_scheduler import InvalidJob
from pyramid_scheduler.commands.output import schedule
from pyramid_scheduler.testing import TestingScheduler
from pyramid_scheduler.triggers.build import build_trigger
from pyramid_scheduler.triggers.delay import FixedDelayTrigger
from pyramid_scheduler.wire.messages import JobRequest

UTC = timezone.utc
START = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)


def takes(minutes: float, fail: bool = False) -> float:
    """A job that takes *minutes* on the fake clock (and may then fail)."""
    clock = get_current_registry().scheduler.clock
    clock.set(clock.now() + timedelta(minutes=minutes))
    if fail:
        raise RuntimeError("failing on purpose")
    return minutes


def make_scheduler() -> TestingScheduler:
    config = Configurator(settings={})
    config.include("pyramid_scheduler.testing")
    config.commit()
    scheduler = config.registry.scheduler
    scheduler.clock.set(START)
    return scheduler


def starts(scheduler: TestingScheduler, job_id: str) -> list[float]:
    return [(run["started_at"] - START.timestamp()) / 60 for run in scheduler.get_runs(job_id)]


def test_each_run_is_due_an_interval_after_the_previous_one_ended():
    scheduler = make_scheduler()
    job_id = scheduler.add_interval_job(takes, minutes=10, args=[4], fixed_delay=True)
    scheduler.clock.advance(hours=1)
    # Runs at 10 (ends 14), 24 (ends 28), 38 (ends 42), 52: each 10 min after the last end.
    assert sorted(starts(scheduler, job_id)) == [10, 24, 38, 52]
    assert scheduler.get_job(job_id)["trigger"]["fixed_delay"] is True


def test_a_failed_run_delays_the_next_one_too_and_a_pause_wins():
    scheduler = make_scheduler()
    job_id = scheduler.add_interval_job(takes, minutes=10, args=[5, True], fixed_delay=True)
    scheduler.clock.advance(minutes=30)
    assert sorted(starts(scheduler, job_id)) == [10, 25]
    assert {run["status"] for run in scheduler.get_runs(job_id)} == {"failed"}
    scheduler.pause_job(job_id)
    scheduler.clock.advance(hours=2)
    assert len(scheduler.get_runs(job_id)) == 2
    assert scheduler.get_job(job_id)["status"] == "paused"


def test_without_the_option_runs_stay_on_their_grid():
    scheduler = make_scheduler()
    job_id = scheduler.add_interval_job(takes, minutes=10, args=[4])
    scheduler.clock.advance(minutes=35)
    assert sorted(starts(scheduler, job_id)) == [10, 20, 30]


def test_previews_and_descriptions_say_fixed_delay():
    scheduler = make_scheduler()
    # The times of runs that take no time: those of the plain interval.
    times = scheduler.preview("interval", minutes=10, fixed_delay=True, n=3)
    assert times == scheduler.preview("interval", minutes=10, n=3)
    # fixed_delay= says the kind on its own.
    assert scheduler.preview(minutes=10, fixed_delay=True, n=1) == times[:1]
    job_id = scheduler.add_interval_job(takes, minutes=10, args=[0], fixed_delay=True)
    previewed = scheduler.preview_job(job_id, 3)
    assert [(b - a).total_seconds() / 60 for a, b in zip(previewed, previewed[1:], strict=False)] == [10, 10]
    assert schedule(scheduler.get_job(job_id)["trigger"]) == "every 10m after each run ends"
    trigger = build_trigger(scheduler.get_job(job_id)["trigger"], UTC)
    assert isinstance(trigger, FixedDelayTrigger) and "after each run ends" in str(trigger)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.add_interval_job(takes, minutes=10, args=[0], fixed_delay="yes"), "fixed_delay: expected True"),
        (lambda s: s.add_cron_job(takes, crontab="* * * * *", args=[0], fixed_delay=True), "fixed_delay"),
        (lambda s: s.preview("cron", cron="* * * * *", fixed_delay=True), "fixed_delay"),
    ],
)
def test_fixed_delay_is_refused_where_it_means_nothing(call, message):
    with pytest.raises(InvalidJob, match=message):
        call(make_scheduler())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "interval", "minutes": 1, "fixed_delay": "true"}, "fixed_delay: true or false"),
        ({"type": "cron", "minute": "*", "fixed_delay": True}, "only for an interval trigger"),
        ({"type": "date", "run_date": "2030-01-07T10:00:00+00:00", "delay": -1}, "delay: seconds of zero or more"),
        ({"type": "interval", "minutes": 1, "delay": 60}, "only for a date trigger"),
    ],
)
def test_the_door_refuses_bad_trigger_fields(spec, message):
    with pytest.raises(InvalidJob, match=message):
        build_trigger(spec, UTC)
    # A message from another producer: refused at the daemon's door, nothing stored.
    scheduler = make_scheduler()
    request = JobRequest(op="add", id="odd", queue="default", func=f"{__name__}:takes", args=[0], trigger=spec)
    with pytest.raises(InvalidJob, match=message):
        scheduler.submit(request)
    assert scheduler.get_job("odd") is None


def test_reschedule_with_no_schedule_applies_the_same_delay_again():
    scheduler = make_scheduler()
    job_id = scheduler.add_date_job(takes, minutes=30, args=[0])
    assert scheduler.get_job(job_id)["trigger"]["delay"] == 1800
    scheduler.clock.advance(minutes=20)
    scheduler.reschedule_job(job_id)  # due 30 minutes from now: 09:50
    scheduler.clock.advance(minutes=20)  # 09:40: the first due time passed, nothing ran
    assert scheduler.get_runs(job_id) == []
    scheduler.clock.advance(minutes=10)
    assert starts(scheduler, job_id) == [50]

    dated = scheduler.add_date_job(takes, START + timedelta(hours=5), args=[0])
    with pytest.raises(InvalidJob, match="not a stored date job made with a delay; give its new schedule"):
        scheduler.reschedule_job(dated)
    with pytest.raises(InvalidJob, match="is done; only scheduled, running, paused or waiting jobs can be managed"):
        scheduler.reschedule_job(job_id)


def stops_itself(minutes: float, how: str) -> None:
    """Takes *minutes*, and pauses or cancels its own job on the way."""
    scheduler = get_current_registry().scheduler
    takes(minutes)
    getattr(scheduler, f"{how}_job")("self-stopping")


@pytest.mark.parametrize(("how", "status"), [("pause", "paused"), ("cancel", "canceled")])
def test_a_pause_or_cancel_during_a_run_is_not_undone_by_its_end(how, status):
    scheduler = make_scheduler()
    scheduler.add_interval_job(stops_itself, minutes=10, args=[3, how], fixed_delay=True, id="self-stopping")
    scheduler.clock.advance(hours=1)
    assert starts(scheduler, "self-stopping") == [10]
    assert scheduler.get_job("self-stopping")["status"] == status
