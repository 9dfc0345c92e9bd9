"""Schedule forms (:mod:`pyramid_scheduler.triggers.forms`): calendar and
delay schedules, the never-firing check and the one kind inference, through
``registry.scheduler``; the messages it publishes are read back from the SQL
transport's table."""

import calendar
import fnmatch
import textwrap
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from producers import published
from pyramid_scheduler import InvalidJob

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def job(*args, **kwargs):
    return args, kwargs


def last_trigger(tmp_path):
    return published(tmp_path)[-1][1].trigger


def sunday(year: int, month: int, last: bool = False, nth: int = 1) -> date:
    """The last (or *nth*) Sunday of a month: DST changes in Europe and the US."""
    days = [week[calendar.SUNDAY] for week in calendar.monthcalendar(year, month) if week[calendar.SUNDAY]]
    return date(year, month, days[-1] if last else days[nth - 1])


# -- weekdays, monthdays, time of day -------------------------------------------------


def test_weekdays_are_iso_numbers_at_a_time_of_day(scheduler, tmp_path):
    scheduler.add_cron_job(job, weekdays=[1, 5], time_of_day=(7, 30), timezone="Europe/Paris")
    trigger = last_trigger(tmp_path)
    assert {k: trigger[k] for k in ("day_of_week", "hour", "minute", "second", "timezone")} == {
        "day_of_week": "mon,fri",
        "hour": 7,
        "minute": 30,
        "second": 0,
        "timezone": "Europe/Paris",
    }
    times = scheduler.preview(weekdays=[1, 5], time_of_day=(7, 30), timezone="Europe/Paris", n=8)
    assert len(times) == 8
    assert {t.isoweekday() for t in times} == {1, 5}
    assert {(t.hour, t.minute, t.second) for t in times} == {(7, 30, 0)}
    assert all(t.tzinfo == PARIS for t in times)


@pytest.mark.parametrize(
    ("weekdays", "expected"),
    [
        ([7], {7}),
        (["sat", "Sun"], {6, 7}),
        (3, {3}),
        ((1, 2, 3, 4, 5), {1, 2, 3, 4, 5}),
    ],
)
def test_weekday_forms(scheduler, weekdays, expected):
    times = scheduler.preview(weekdays=weekdays, time_of_day="18:05", n=14)
    assert {t.isoweekday() for t in times} == expected
    assert {(t.hour, t.minute) for t in times} == {(18, 5)}


def test_monthdays_and_last_day(scheduler):
    times = scheduler.preview(monthdays=[1, 15], time_of_day=(2, 0, 30), n=6)
    assert {t.day for t in times} == {1, 15}
    assert {(t.hour, t.minute, t.second) for t in times} == {(2, 0, 30)}
    for t in scheduler.preview(monthdays=["last"], n=4):
        assert (t + timedelta(days=1)).day == 1 and (t.hour, t.minute) == (0, 0)


def test_weekdays_and_monthdays_must_both_match(scheduler):
    # Friday the 13th: APScheduler's rule, not crontab's "either".
    for t in scheduler.preview(weekdays=[5], monthdays=[13], time_of_day=(9, 0), n=3):
        assert (t.isoweekday(), t.day) == (5, 13)


def test_time_of_day_alone_is_every_day(scheduler):
    times = scheduler.preview(time_of_day=(23, 59, 59), timezone="America/New_York", n=3)
    assert [(b - a).days for a, b in zip(times, times[1:], strict=False)] in ([1, 1], [0, 1], [1, 0])
    assert {(t.hour, t.minute, t.second) for t in times} == {(23, 59, 59)}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"weekdays": [0]}, "weekdays: 0 is not a day of the week; use ISO numbers 1 \\(Monday\\)"),
        ({"weekdays": [8]}, "weekdays: 8"),
        ({"weekdays": [True]}, "weekdays: True"),
        ({"weekdays": ["funday"]}, "weekdays: 'funday'"),
        ({"weekdays": []}, "weekdays: expected at least one day"),
        ({"monthdays": [0]}, "monthdays: 0 is not a day of the month"),
        ({"monthdays": [32]}, "monthdays: 32"),
        ({"monthdays": {"x": 1}}, "monthdays: expected a list"),
        ({"time_of_day": (24, 0)}, "time_of_day: \\(24, 0\\) is not a time of day"),
        ({"time_of_day": (7,)}, "time_of_day: expected \\(hour, minute\\)"),
        ({"time_of_day": "7h30"}, "time_of_day: expected"),
        ({"time_of_day": 730}, "time_of_day: expected"),
        ({"weekdays": [1], "day_of_week": "tue"}, "weekdays and day_of_week: give one or the other"),
        ({"monthdays": [1], "day": 2}, "monthdays and day: give one or the other"),
        ({"time_of_day": (7, 0), "minute": 5}, "time_of_day and minute: give one or the other"),
        ({"weekdays": [1], "crontab": "0 7 * * *"}, "crontab: give either crontab or the cron fields"),
    ],
)
def test_bad_calendars_are_refused_naming_the_argument(scheduler, tmp_path, kwargs, fragment):
    with pytest.raises(InvalidJob, match=fragment):
        scheduler.add_cron_job(job, **kwargs)
    assert published(tmp_path) == []


def test_crontab_string(scheduler, tmp_path):
    scheduler.add_cron_job(job, crontab="30 7 * * mon", timezone="Europe/Paris")
    assert last_trigger(tmp_path) == {"type": "cron", "timezone": "Europe/Paris", "crontab": "30 7 * * mon"}
    times = scheduler.preview(cron="30 7 * * mon", timezone="Europe/Paris", n=3)
    assert {(t.isoweekday(), t.hour, t.minute) for t in times} == {(1, 7, 30)}


# -- delays ---------------------------------------------------------------------------


def test_date_job_with_a_delay(scheduler, tmp_path):
    before = datetime.now(timezone.utc)
    scheduler.add_date_job(job, delay=0.5)
    scheduler.add_date_job(job, hours=1, minutes=30, millis=250)
    scheduler.add_date_job(job, delay=timedelta(days=2), timezone="America/New_York")
    after = datetime.now(timezone.utc)
    (_, a), (_, b), (_, c) = published(tmp_path)
    dates = [datetime.fromisoformat(r.trigger["run_date"]) for r in (a, b, c)]
    assert before + timedelta(seconds=0.5) <= dates[0] <= after + timedelta(seconds=0.5)
    assert before + timedelta(seconds=5400.25) <= dates[1] <= after + timedelta(seconds=5400.25)
    assert before + timedelta(days=2) <= dates[2] <= after + timedelta(days=2)
    assert c.trigger["timezone"] == "America/New_York"
    assert dates[2].utcoffset() == dates[2].astimezone(NEW_YORK).utcoffset()


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        ((time.time() + 60,), {"delay": 5}, "date and delay: give a date or a delay, not both"),
        ((time.time() + 60,), {"hours": 1, "millis": 5}, "date and hours, millis: give a date or a delay"),
        ((), {}, "date: required, unless a delay is given"),
        ((), {"delay": -1}, "delay: expected a number of zero or more"),
        ((), {"minutes": float("nan")}, "minutes: expected a number"),
        ((), {"seconds": "5"}, "seconds: expected a number"),
        ((), {"delay": 5, "end_date": time.time() + 100}, "end_date: not an option of date jobs"),
    ],
)
def test_bad_delays_are_refused_naming_the_arguments(scheduler, tmp_path, args, kwargs, fragment):
    with pytest.raises(InvalidJob, match=fragment):
        scheduler.add_date_job(job, *args, **kwargs)
    assert published(tmp_path) == []


# -- time zones -----------------------------------------------------------------------


def test_timezone_per_job_for_every_kind(scheduler, tmp_path):
    scheduler.add_async_job(job, timezone="Asia/Tokyo")
    scheduler.add_date_job(job, "2099-06-01T09:00:00", timezone="Asia/Tokyo")
    scheduler.add_date_job(job, minutes=5, timezone=ZoneInfo("Asia/Tokyo"))
    scheduler.add_interval_job(job, hours=1, start_date="2099-06-01T09:00:00", timezone="Asia/Tokyo")
    scheduler.add_cron_job(job, time_of_day=(9, 0), timezone="Asia/Tokyo")
    triggers = [request.trigger for _, request in published(tmp_path)]
    assert [t["timezone"] for t in triggers] == ["Asia/Tokyo"] * 5
    assert triggers[1]["run_date"] == "2099-06-01T09:00:00+09:00"
    assert triggers[2]["run_date"].endswith("+09:00")
    assert triggers[3]["start_date"] == "2099-06-01T09:00:00+09:00"
    with pytest.raises(InvalidJob, match="timezone: 'Mars/Olympus' is not an IANA time zone name"):
        scheduler.add_date_job(job, delay=1, timezone="Mars/Olympus")


# -- schedules that never fire --------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda s: s.add_cron_job(job, day=31, month=2), "month, day: this cron schedule never fires"),
        (lambda s: s.add_cron_job(job, monthdays=[30], month="feb"), "month, day: this cron schedule never fires"),
        (
            lambda s: s.add_cron_job(job, minute=1, start_date=time.time() + 100, end_date=time.time() + 50),
            "end_date: earlier than start_date",
        ),
        (lambda s: s.add_interval_job(job, hours=1, end_date=time.time() + 60), "end_date: .* never fires"),
        (
            lambda s: s.add_cron_job(job, crontab="0 3 * * *", end_date=time.time() - 3600),
            "end_date: .* is before the schedule's first fire time",
        ),
    ],
)
def test_schedules_that_never_fire_are_refused(scheduler, tmp_path, call, fragment):
    with pytest.raises(InvalidJob, match=fragment):
        call(scheduler)
    assert published(tmp_path) == []


# -- the preview ----------------------------------------------------------------------


# -- the management messages ----------------------------------------------------------


def test_management_calls_check_before_sending(scheduler, tmp_path):
    # No record yet (the add may still be on its way): the default queue.
    assert scheduler.pause_job("not-stored-yet") == "not-stored-yet"
    assert scheduler.reschedule_job("not-stored-yet", cron="0 3 * * *", timezone="Europe/Paris") == "not-stored-yet"
    (_, pause), (_, reschedule) = published(tmp_path)
    assert (pause.op, pause.queue) == ("pause", "jobs")
    assert (reschedule.op, reschedule.trigger) == (
        "reschedule",
        {"type": "cron", "timezone": "Europe/Paris", "crontab": "0 3 * * *"},
    )
    with pytest.raises(InvalidJob, match="job_id: expected a string of 1 to 200 characters"):
        scheduler.resume_job("")
    with pytest.raises(InvalidJob, match="month, day: this cron schedule never fires"):
        scheduler.reschedule_job("x", day=31, month=4)
    with pytest.raises(InvalidJob, match="job_id: the job store has no record of job 'x'"):
        scheduler.preview_job("x")
    assert len(published(tmp_path)) == 2


# -- the examples in docs/schedules.rst -----------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schedules.rst"


def code_blocks(path):
    """(language, code) of each ``.. code-block::`` in *path*, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    for index, line in enumerate(lines):
        if line.startswith(".. code-block:: "):
            body = []
            for text in lines[index + 2 :]:
                if text and not text.startswith("   "):
                    break
                body.append(text[3:])
            blocks.append((line.split()[-1], textwrap.dedent("\n".join(body)).strip("\n")))
    return blocks


def test_the_schedules_page_examples_run_and_print_what_it_shows(scheduler, capsys):
    namespace = {"scheduler": scheduler}
    printed = None
    checked = 0
    for language, code in code_blocks(DOCS):
        if language == "python":
            exec(compile(code, str(DOCS), "exec"), namespace)  # noqa: S102 - the docs' own examples
            printed = capsys.readouterr().out.splitlines()
        elif language == "text" and printed is not None:
            expected = code.splitlines()
            assert len(printed) == len(expected), printed
            assert all(
                fnmatch.fnmatchcase(out, want.replace("(...)", "(*)"))
                for out, want in zip(printed, expected, strict=True)
            ), printed
            checked += 1
    assert checked == 2


# -- which kind of schedule -----------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "as_schedule", "as_declaration"),
    [
        ({"cron": "0 3 * * *"}, "cron", "cron"),
        ({"crontab": "0 3 * * *", "timezone": "Europe/Paris"}, "cron", "cron"),
        ({"minute": 5, "start_date": "2099-01-01"}, "cron", "cron"),
        ({"weekdays": [1, 5], "time_of_day": (7, 30)}, "cron", "cron"),
        ({"weeks": 2}, "interval", "interval"),
        ({"minutes": 10}, None, "interval"),  # a delay or an interval: say which
        ({"hours": 1, "minutes": 30}, None, "interval"),
        ({"delay": 60}, "date", None),
        ({"millis": 500}, "date", None),
        ({"date": "2099-01-01", "hours": 1}, "date", None),  # refused later: a date or a delay
        ({"date": "2099-01-01"}, "date", "date"),
        ({"minute": 5, "minutes": 10}, None, None),
        ({"args": ["x"], "hour": None}, None, None),
    ],
)
def test_one_kind_inference_for_schedules_and_declarations(params, as_schedule, as_declaration):
    from pyramid_scheduler.triggers.forms import schedule_kind

    for delays, expected in ((True, as_schedule), (False, as_declaration)):
        if expected is None:
            with pytest.raises(InvalidJob, match="trigger: say which schedule.*exactly one"):
                schedule_kind(None, params, delays=delays)
        else:
            assert schedule_kind(None, params, delays=delays) == expected
    assert schedule_kind("interval", params) == "interval"
    with pytest.raises(InvalidJob, match="trigger: expected 'date', 'interval' or 'cron', got 'weekly'"):
        schedule_kind("weekly", params)
