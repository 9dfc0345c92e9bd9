"""Trigger building (:mod:`pyramid_scheduler.triggers.build`): times in every
form, specs that round-trip through JSON, refusals naming the field, and the
bounded search for a cron schedule's first fire time."""

import json
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from pyramid_scheduler.exceptions import InvalidJob
from pyramid_scheduler.triggers.build import build_trigger, next_fire_time, to_datetime, trigger_spec

UTC = timezone.utc


def test_times_naive_aware_epoch():
    paris = ZoneInfo("Europe/Paris")
    naive = datetime(2030, 1, 1, 12, 0)
    assert to_datetime(naive, paris, "date") == datetime(2030, 1, 1, 11, 0, tzinfo=UTC)
    aware = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert to_datetime(aware, paris, "date") == aware
    assert to_datetime(aware.timestamp(), paris, "date") == aware
    assert to_datetime("2030-01-01T12:00:00+00:00", paris, "date") == aware
    with pytest.raises(InvalidJob, match="date"):
        to_datetime("tomorrow", paris, "date")
    with pytest.raises(InvalidJob, match="date"):
        to_datetime(True, paris, "date")


def test_triggers_round_trip_through_the_wire():
    tz = ZoneInfo("UTC")
    when = datetime(2030, 5, 1, 8, 30, tzinfo=UTC)
    spec = json.loads(json.dumps(trigger_spec("date", tz, run_date=when)))
    trigger = build_trigger(spec, tz)
    assert isinstance(trigger, DateTrigger) and trigger.run_date == when

    spec = json.loads(json.dumps(trigger_spec("interval", tz, start_date=when, minutes=2)))
    trigger = build_trigger(spec, tz)
    assert isinstance(trigger, IntervalTrigger)
    assert trigger.get_next_fire_time(None, when) == when

    spec = json.loads(json.dumps(trigger_spec("cron", tz, crontab="30 7 * * mon")))
    trigger = build_trigger(spec, tz)
    assert isinstance(trigger, CronTrigger)
    first = trigger.get_next_fire_time(None, when)
    assert (first.weekday(), first.hour, first.minute) == (0, 7, 30)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ({"type": "cron", "minute": "61"}, "cron trigger"),
        ({"type": "cron", "day_of_week": "funday"}, "cron trigger"),
        ({"type": "cron", "crontab": "* * *"}, "cron trigger"),
        ({"type": "interval"}, "add up to more than zero"),
        ({"type": "interval", "seconds": -1}, "seconds"),
        ({"type": "date", "run_date": "soon"}, "date"),
        ({"type": "weekly"}, "trigger type"),
    ],
)
def test_bad_triggers_fail_with_the_field(spec, fragment):
    with pytest.raises(InvalidJob, match=fragment):
        build_trigger(spec, ZoneInfo("UTC"))


def test_epoch_and_offsets_survive_encoding():
    tz = ZoneInfo("America/New_York")
    when = datetime(2030, 3, 10, 1, 30, tzinfo=tz)
    spec = trigger_spec("date", tz, run_date=when)
    assert build_trigger(json.loads(json.dumps(spec)), ZoneInfo("UTC")).run_date == when
    assert spec["timezone"] == "America/New_York"
    assert timedelta(0) == build_trigger(spec, tz).run_date - when


@pytest.mark.parametrize("crontab", ["0 0 31 2 *", "0 0 30 2 *", "* * 31 4 *", "0 0 31 11 *"])
def test_an_impossible_cron_is_found_never_to_fire_quickly(crontab):
    trigger = build_trigger({"type": "cron", "crontab": crontab}, timezone.utc)
    started = time.process_time()
    assert next_fire_time(trigger, datetime.now(timezone.utc)) is None
    assert time.process_time() - started < 0.15


def test_rare_and_far_crons_still_fire():
    now = datetime.now(timezone.utc)
    trigger = build_trigger({"type": "cron", "crontab": "0 0 29 2 mon"}, timezone.utc)
    assert next_fire_time(trigger, now).year == 2044
    far = build_trigger(
        {"type": "cron", "year": "2300", "month": "1", "start_date": "2299-06-01T00:00:00+00:00"}, timezone.utc
    )
    assert next_fire_time(far, now).year == 2300  # searched from its start
    assert next_fire_time(build_trigger({"type": "cron", "year": "2300"}, timezone.utc), now) is None
