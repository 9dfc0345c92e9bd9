"""The producer: checks at add time, and what it publishes (read back from the
SQL transport's table)."""

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from pyramid.config import Configurator
from webtest import TestApp

from producers import published
from pyramid_scheduler import EnqueueError, InvalidJob, InvalidQueue


def job(*args, **kwargs):
    return args, kwargs


def test_add_jobs_publish_versioned_json(scheduler, tmp_path):
    ids = [
        scheduler.add_async_job(job, args=(1, "two"), kwargs={"k": [3]}),
        scheduler.add_date_job(job, time.time() + 60, queue="reports"),
        scheduler.add_interval_job(job, minutes=2, id="sync-stock"),
        scheduler.add_cron_job(job, crontab="30 7 * * mon"),
        scheduler.add_cron_job(job, hour=3, minute="*/15", timezone="Europe/Paris"),
    ]
    assert all(isinstance(job_id, str) for job_id in ids)
    assert ids[2] == "sync-stock"
    sent = published(tmp_path)
    assert [queue for queue, _ in sent] == [
        "pyramid_scheduler.jobs",
        "pyramid_scheduler.reports",
        "pyramid_scheduler.jobs",
        "pyramid_scheduler.jobs",
        "pyramid_scheduler.jobs",
    ]
    requests = [request for _, request in sent]
    assert [r.id for r in requests] == ids
    assert requests[0].func == "test_proxy:job"
    assert requests[0].args == [1, "two"] and requests[0].kwargs == {"k": [3]}
    assert [r.trigger["type"] for r in requests] == ["now", "date", "interval", "cron", "cron"]
    assert requests[3].trigger["crontab"] == "30 7 * * mon"
    assert requests[4].trigger["timezone"] == "Europe/Paris"


def test_request_property_is_the_registry_scheduler(app_settings):
    def view(request):
        from pyramid.response import Response

        return Response(request.scheduler.add_async_job(job))

    with Configurator(settings=app_settings) as config:
        config.include("pyramid_scheduler")
        config.add_route("home", "/")
        config.add_view(view, route_name="home")
        app = config.make_wsgi_app()
    try:
        job_id = TestApp(app).get("/").text
        assert len(job_id) == 32
    finally:
        app.registry.scheduler.close()


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda s: s.add_async_job(lambda: 1), "lambda"),
        (lambda s: s.add_async_job(job, args=[datetime.now()]), r"args\[0\]"),
        (lambda s: s.add_async_job(job, args="abc"), "args: expected a list"),
        (lambda s: s.add_async_job(job, kwargs=[1]), "kwargs: expected a dict"),
        (lambda s: s.add_async_job(job, urgency=3), "urgency: unknown option"),
        (lambda s: s.add_async_job(job, max_instances=0), "max_instances"),
        (lambda s: s.add_async_job(job, id=""), "id: expected"),
        (
            lambda s: s.add_date_job(job, time.time() + 60, misfire_grace_time=0.5),
            "misfire_grace_time: expected int or None, got 0.5",
        ),
        (
            lambda s: s.add_date_job(job, time.time() + 60, misfire_grace_time=0),
            "misfire_grace_time: expected 1 or more",
        ),
        (lambda s: s.add_date_job(job, "next tuesday"), "date"),
        (lambda s: s.add_interval_job(job), "add up to more than zero"),
        (lambda s: s.add_interval_job(job, weeks=416017), "first run is out of range"),
        (lambda s: s.add_interval_job(job, seconds=5, end_date=time.time() - 10), "earlier than start_date"),
        (lambda s: s.add_cron_job(job, minute=1, end_date=time.time() - 10), "never fires"),
        (lambda s: s.add_cron_job(job, minute="99"), "cron trigger"),
        (lambda s: s.add_cron_job(job, crontab="* *"), "cron trigger"),
        (lambda s: s.add_cron_job(job, crontab="* * * * *", hour=1), "not both"),
        (lambda s: s.add_cron_job(job, minute=1, timezone="Nowhere/Land"), "timezone"),
        (lambda s: s.add_async_job(job, args=["x" * 300_000]), "max_message_size"),
        (lambda s: s.cancel_job(None), "job_id"),
    ],
)
def test_bad_requests_fail_in_the_caller_and_send_nothing(scheduler, tmp_path, call, fragment):
    with pytest.raises(InvalidJob, match=fragment):
        call(scheduler)
    assert published(tmp_path) == []


def test_unknown_queue_is_named(scheduler):
    with pytest.raises(InvalidQueue, match="'nightly'.*jobs, reports"):
        scheduler.add_async_job(job, queue="nightly")
    with pytest.raises(InvalidQueue, match="nightly"):
        scheduler.cancel_job("x", queue="nightly")


def test_cancel_without_queue_goes_to_every_queue(scheduler, tmp_path):
    scheduler.cancel_job("abc")
    sent = published(tmp_path)
    assert [(q, r.op, r.id) for q, r in sent] == [
        ("pyramid_scheduler.jobs", "cancel", "abc"),
        ("pyramid_scheduler.reports", "cancel", "abc"),
    ]


def test_naive_dates_are_read_in_the_scheduler_timezone(app_settings, tmp_path):
    app_settings["scheduler.timezone"] = "Asia/Tokyo"
    with Configurator(settings=app_settings) as config:
        config.include("pyramid_scheduler")
    proxy = config.registry.scheduler
    try:
        proxy.add_date_job(job, datetime(2031, 1, 1, 9, 0))
    finally:
        proxy.close()
    ((_, request),) = published(tmp_path)
    when = datetime.fromisoformat(request.trigger["run_date"])
    assert when == datetime(2031, 1, 1, 0, 0, tzinfo=timezone.utc)


def test_unreachable_broker_raises_within_the_bound(tmp_path):
    settings = {"scheduler.broker.url": "redis://127.0.0.1:1/0", "scheduler.broker.timeout": "1"}
    pytest.importorskip("redis")
    with Configurator(settings=settings) as config:
        config.include("pyramid_scheduler")
    proxy = config.registry.scheduler
    try:
        threads_before = threading.active_count()
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(EnqueueError, match="scheduler.broker.timeout|publishing"):
                proxy.add_async_job(job)
            assert time.monotonic() - started < 5
        assert threading.active_count() <= threads_before + 1
    finally:
        proxy.close()


def test_locked_sqlite_broker_raises_within_the_bound_then_recovers(app_settings, tmp_path):
    """The embedded broker's file held by another process's exclusive
    transaction: add_*_job raises EnqueueError within scheduler.broker.timeout
    (not SQLite's own 30 s lock wait), and works again once the lock is gone."""
    import sqlite3

    with Configurator(settings={**app_settings, "scheduler.broker.timeout": "1"}) as config:
        config.include("pyramid_scheduler")
    proxy = config.registry.scheduler
    try:
        proxy.add_async_job(job)  # creates the file and its table
        holder = sqlite3.connect(tmp_path / "broker.sqlite", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(EnqueueError, match="database is locked"):
            proxy.add_async_job(job, id="while-locked")
        assert time.monotonic() - started < 10
        holder.execute("ROLLBACK")
        holder.close()
        proxy.add_async_job(job, id="after-unlock")
        assert [request.id for _, request in published(tmp_path)][-1] == "after-unlock"
        assert "while-locked" not in [request.id for _, request in published(tmp_path)]
    finally:
        proxy.close()


def test_interval_start_defaults_to_now(scheduler, tmp_path):
    before = datetime.now(timezone.utc)
    scheduler.add_interval_job(job, seconds=30)
    ((_, request),) = published(tmp_path)
    start = datetime.fromisoformat(request.trigger["start_date"])
    assert before - timedelta(seconds=1) <= start <= datetime.now(timezone.utc)


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda s: s.add_date_job(job, time.time() + 60, durable=False), "durable: only run-now jobs .* not date jobs"),
        (lambda s: s.add_interval_job(job, minutes=2, durable=False), "durable: only run-now .* not interval jobs"),
        (lambda s: s.add_cron_job(job, crontab="30 7 * * mon", durable=False), "durable: only run-now jobs"),
        (lambda s: s.add_async_job(job, durable=False, retries=2), "retries: a durable=False job .* not retried"),
        (lambda s: s.add_async_job(job, durable="no"), "durable: expected bool, got 'no'"),
        (lambda s: s.add_async_job(job, durable=0), "durable: expected bool, got 0"),
    ],
)
def test_durable_false_is_refused_where_it_cannot_hold(scheduler, tmp_path, call, fragment):
    with pytest.raises(InvalidJob, match=fragment):
        call(scheduler)
    assert published(tmp_path) == []


def test_durable_false_travels_as_an_option_and_durable_jobs_without_it(scheduler, tmp_path):
    scheduler.add_async_job(job, durable=False, ttl=60)
    scheduler.add_async_job(job, durable=True)
    scheduler.add_async_job(job, durable=False, retries=0)
    scheduler.add_async_job(job)
    scheduler.add_date_job(job, time.time() + 60, durable=True)
    options = [request.options for _, request in published(tmp_path)]
    # Only false is written: the messages of durable jobs stay as old daemons read them.
    assert options == [{"durable": False, "ttl": 60}, {}, {"durable": False, "retries": 0}, {}, {}]


def test_scheduler_durable_false_makes_run_now_jobs_non_durable_unless_they_ask(app_settings, tmp_path):
    with Configurator(settings={**app_settings, "scheduler.durable": "false"}) as config:
        config.include("pyramid_scheduler")
    scheduler = config.registry.scheduler
    try:
        assert scheduler.settings.durable is False
        scheduler.add_async_job(job)
        scheduler.add_async_job(job, durable=True)
        scheduler.add_async_job(job, retries=1)  # retries need the record: durable
        scheduler.add_date_job(job, time.time() + 60)
        scheduler.add_interval_job(job, minutes=2)
        # So do the options the daemon keeps in the job store: sent durable, never refused at its door.
        scheduler.add_async_job(job, timeout=10)
        scheduler.add_async_job(job, priority=5)
        scheduler.add_async_job(job, max_concurrency=2)
        scheduler.add_async_job(job, rate_limit="10/s")
    finally:
        scheduler.close()
    options = [request.options for _, request in published(tmp_path)]
    assert options[:5] == [{"durable": False}, {}, {"retries": 1}, {}, {}]
    assert [options_ for options_ in options[5:] if "durable" in options_] == []
