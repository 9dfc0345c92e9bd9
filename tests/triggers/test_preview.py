"""Previews (:mod:`pyramid_scheduler.triggers.preview`) through
``registry.scheduler.preview``: across the DST changes of Europe and New
York, in every schedule form, and what they refuse."""

from datetime import datetime, timedelta, timezone

import pytest
from pyramid.config import Configurator

from pyramid_scheduler import InvalidJob
from triggers.test_forms import NEW_YORK, PARIS, sunday


def test_preview_across_the_european_changes():
    proxy_times = _preview_paris("30 2 * * *", 2099)
    spring, autumn = sunday(2099, 3, last=True), sunday(2099, 10, last=True)
    # 02:30 does not exist the night clocks go forward: it runs at 03:30 summer time.
    assert [t.isoformat() for t in proxy_times["spring"]] == [
        f"{spring - timedelta(days=1)}T02:30:00+01:00",
        f"{spring}T03:30:00+02:00",
        f"{spring + timedelta(days=1)}T02:30:00+02:00",
    ]
    # 02:30 happens twice the night clocks go back: it fires once, in the first pass
    # (APScheduler 3's own cron trigger fires in both).
    assert [t.isoformat() for t in proxy_times["autumn"]] == [
        f"{autumn - timedelta(days=1)}T02:30:00+02:00",
        f"{autumn}T02:30:00+02:00",
        f"{autumn + timedelta(days=1)}T02:30:00+01:00",
        f"{autumn + timedelta(days=2)}T02:30:00+01:00",
    ]


def _preview_paris(crontab, year):
    proxy = _preview_proxy()
    spring, autumn = sunday(year, 3, last=True), sunday(year, 10, last=True)
    return {
        "spring": proxy.preview(
            cron=crontab, timezone="Europe/Paris", n=3, start_date=_midnight(spring - timedelta(days=1), PARIS)
        ),
        "autumn": proxy.preview(
            cron=crontab, timezone="Europe/Paris", n=4, start_date=_midnight(autumn - timedelta(days=1), PARIS)
        ),
    }


def _midnight(day, tz):
    return datetime.combine(day, datetime.min.time(), tz)


def _preview_proxy():
    # preview needs no broker nor job store: the memory ones never connect.
    settings = {"scheduler.broker.url": "memory://", "scheduler.jobstore.url": "memory"}
    with Configurator(settings=settings) as config:
        config.include("pyramid_scheduler")
    return config.registry.scheduler


def test_preview_of_a_daily_time_in_new_york_keeps_the_wall_clock():
    proxy = _preview_proxy()
    spring, autumn = sunday(2099, 3, nth=2), sunday(2099, 11, nth=1)
    for change, offsets in ((spring, ("-05:00", "-04:00")), (autumn, ("-04:00", "-05:00"))):
        start = _midnight(change - timedelta(days=2), NEW_YORK)
        times = proxy.preview(time_of_day=(7, 30), timezone="America/New_York", start_date=start, n=4)
        assert [t.date() for t in times] == [change - timedelta(days=2 - i) for i in range(4)]
        assert {(t.hour, t.minute) for t in times} == {(7, 30)}
        assert [t.isoformat()[-6:] for t in times] == [offsets[0], offsets[0], offsets[1], offsets[1]]
        # 23 or 25 hours of real time between the runs around the change.
        assert {(b - a) for a, b in zip(times, times[1:], strict=False)} >= {timedelta(hours=24)}


def test_preview_of_an_interval_counts_real_time_across_a_change():
    proxy = _preview_proxy()
    spring = sunday(2099, 3, last=True)
    start = _midnight(spring - timedelta(days=1), PARIS) + timedelta(hours=12)
    times = proxy.preview("interval", hours=24, start_date=start, timezone="Europe/Paris", n=3)
    assert [t.isoformat() for t in times] == [
        f"{spring - timedelta(days=1)}T12:00:00+01:00",
        f"{spring}T13:00:00+02:00",
        f"{spring + timedelta(days=1)}T13:00:00+02:00",
    ]


def test_preview_forms_and_refusals():
    proxy = _preview_proxy()
    (once,) = proxy.preview("date", delay=60, n=5)
    assert timedelta(seconds=55) < once - datetime.now(timezone.utc) <= timedelta(seconds=60)
    assert proxy.preview("date", date="2099-01-01T09:00:00", timezone="Europe/Paris") == [
        datetime(2099, 1, 1, 9, tzinfo=PARIS)
    ]
    every = proxy.preview("interval", minutes=90, n=3, jitter=30)
    assert [b - a for a, b in zip(every, every[1:], strict=False)] == [timedelta(minutes=90)] * 2
    assert len(proxy.preview(cron="0 0 1 1 *", end_date="2200-01-01T00:00:00+00:00", n=1000)) < 200
    with pytest.raises(InvalidJob, match="trigger: say which schedule"):
        proxy.preview(hours=2)
    with pytest.raises(InvalidJob, match="trigger: expected 'date', 'interval' or 'cron'"):
        proxy.preview("weekly", weeks=1)
    with pytest.raises(InvalidJob, match="colour: not an argument of a interval schedule"):
        proxy.preview("interval", hours=1, colour="red")
    with pytest.raises(InvalidJob, match="n: expected a number of fire times from 1 to 1000"):
        proxy.preview(cron="* * * * *", n=0)
    with pytest.raises(InvalidJob, match="month, day: this cron schedule never fires"):
        proxy.preview(day=30, month=2)
