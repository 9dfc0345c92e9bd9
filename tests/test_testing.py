"""pyramid_scheduler.testing: the in-process scheduler, through a real
Configurator and WebTest, with its fake clock and the production events."""

from __future__ import annotations

import contextlib
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger
from pyramid.config import Configurator
from webtest import TestApp

from pyramid_scheduler import InvalidJob, InvalidQueue
from pyramid_scheduler.api import (
    Event,
    JobCanceled,
    JobCreated,
    JobExecuted,
    JobFailed,
    JobMissed,
    JobRemoved,
)
from pyramid_scheduler.testing import OWNER, TestingScheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "examples"))
from testing_example import test_the_reminder_is_sent_a_day_later  # noqa: E402,F401 - the docs' example

UTC = timezone.utc
PARIS = ZoneInfo("Europe/Paris")
CALLS: list[tuple[str, Any]] = []


# -- job functions and views of the application under test ---------------------------


def record(tag: str) -> str:
    from pyramid.threadlocal import get_current_registry

    CALLS.append((tag, get_current_registry().settings.get("app.marker")))
    return tag


def boom(tag: str) -> None:
    CALLS.append((tag, "boom"))
    raise ValueError(f"{tag} fails")


def chain(tag: str) -> None:
    from pyramid.threadlocal import get_current_registry

    CALLS.append((tag, "chain"))
    get_current_registry().scheduler.add_async_job(record, args=[f"{tag}-next"])


def add_view(request: Any) -> dict[str, str]:
    scheduler, params = request.scheduler, request.params
    kind, tag = params["kind"], params["tag"]
    if kind == "async":
        job_id = scheduler.add_async_job(record, args=[tag], id=tag)
    elif kind == "date":
        job_id = scheduler.add_date_job(record, params["date"], args=[tag], id=tag)
    elif kind == "interval":
        job_id = scheduler.add_interval_job(record, hours=float(params["hours"]), args=[tag], id=tag)
    else:
        job_id = scheduler.add_cron_job(
            record, crontab=params["crontab"], args=[tag], id=tag, timezone=params.get("tz")
        )
    return {"job_id": job_id}


def cancel_view(request: Any) -> dict[str, str]:
    return {"job_id": request.scheduler.cancel_job(request.params["id"])}


def make_app(**settings: str) -> tuple[TestApp, TestingScheduler, dict[str, list[Any]]]:
    CALLS.clear()
    config = Configurator(settings={"app.marker": "the-app", **settings})
    config.include("pyramid_scheduler.testing")
    config.add_route("add", "/add")
    config.add_view(add_view, route_name="add", renderer="json")
    config.add_route("cancel", "/cancel")
    config.add_view(cancel_view, route_name="cancel", renderer="json")
    seen = {
        cls.__name__: config.testing_add_subscriber(cls)
        for cls in (JobCreated, JobExecuted, JobFailed, JobMissed, JobRemoved, JobCanceled)
    }
    app = TestApp(config.make_wsgi_app())
    scheduler = config.registry.scheduler
    assert isinstance(scheduler, TestingScheduler)
    return app, scheduler, seen


def types(scheduler: TestingScheduler, job_id: str | None = None) -> list[str]:
    return [e.type for e in scheduler.events if job_id is None or e.get("job_id") == job_id]


# -- tests ----------------------------------------------------------------------------


def test_jobs_are_recorded_and_run_on_demand_with_production_events():
    app, scheduler, seen = make_app()
    heard: list[Event] = []
    scheduler.add_listener(heard.append)
    job_id = app.get("/add", {"kind": "async", "tag": "a1"}).json["job_id"]
    assert job_id == "a1" and CALLS == []  # not eager: nothing ran yet

    job = scheduler.get_job("a1")
    assert job is not None
    assert (job["func"], job["args"], job["kwargs"], job["queue"], job["status"]) == (
        "test_testing:record",
        ["a1"],
        {},
        "default",
        "scheduled",
    )
    assert job["trigger"]["type"] == "now" and job["options"] == {}
    assert [j["id"] for j in scheduler.get_jobs()] == ["a1"]

    runs = scheduler.run_pending()
    assert [r["status"] for r in runs] == ["done"]
    assert CALLS == [("a1", "the-app")]  # the application's registry was current
    assert scheduler.get_job("a1")["status"] == "done"
    assert scheduler.get_job("a1")["result"] == "a1"
    assert scheduler.get_job("a1")["runs"] == 1
    assert types(scheduler) == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_REMOVED]
    assert [e.type for e in heard] == types(scheduler)
    assert [e.job_id for e in seen["JobExecuted"]] == ["a1"]
    assert [e.job_id for e in seen["JobRemoved"]] == ["a1"]
    executed = seen["JobExecuted"][0].event
    assert executed.retval == "a1" and executed.run_key.startswith("a1@")
    assert executed.job == {
        "id": "a1",
        "func": "test_testing:record",
        "args": ["a1"],
        "kwargs": {},
        "queue": "default",
        "name": "test_testing:record",
    }
    assert scheduler.run_pending() == []  # nothing more


def test_eager_setting_runs_due_jobs_inside_the_request():
    app, scheduler, seen = make_app(**{"scheduler.testing.eager": "true"})
    assert scheduler.eager
    app.get("/add", {"kind": "async", "tag": "e1"})
    assert CALLS == [("e1", "the-app")]
    assert [e.job_id for e in seen["JobExecuted"]] == ["e1"]
    # A job added by a running job runs too, after it.
    scheduler.add_async_job(chain, args=["c"])
    assert [tag for tag, _ in CALLS] == ["e1", "c", "c-next"]


def test_advance_fires_date_interval_and_cron_jobs_in_order():
    app, scheduler, _ = make_app()
    start = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)  # a Monday
    scheduler.clock.set(start)
    app.get("/add", {"kind": "interval", "tag": "every10h", "hours": "10"})
    app.get("/add", {"kind": "date", "tag": "once", "date": (start + timedelta(hours=15)).isoformat()})
    app.get("/add", {"kind": "cron", "tag": "daily7", "crontab": "0 7 * * *"})
    assert scheduler.get_job("every10h")["next_run_time"] == (start + timedelta(hours=10)).timestamp()

    runs = scheduler.clock.advance(hours=25)
    assert [(r["job_id"], r["scheduled_run_time"] - start) for r in runs] == [
        ("daily7", timedelta(hours=7)),
        ("every10h", timedelta(hours=10)),
        ("once", timedelta(hours=15)),
        ("every10h", timedelta(hours=20)),
    ]
    assert scheduler.clock.now() == start + timedelta(hours=25)
    assert [tag for tag, _ in CALLS] == ["daily7", "every10h", "once", "every10h"]
    assert scheduler.get_job("once")["status"] == "done"
    assert scheduler.get_job("every10h")["status"] == "scheduled"
    assert scheduler.get_job("every10h")["runs"] == 2
    assert scheduler.get_job("daily7")["next_run_time"] == (start + timedelta(days=1, hours=7)).timestamp()
    assert types(scheduler, "once") == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_REMOVED]
    assert types(scheduler, "every10h") == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_EXECUTED]
    with pytest.raises(ValueError, match="only moves forward"):
        scheduler.clock.advance(hours=-1)


def test_records_carry_the_fake_clock_s_times_in_the_order_they_changed():
    app, scheduler, _ = make_app()
    start = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)
    scheduler.clock.set(start)
    for tag in ("first", "second", "third"):  # the clock stands still
        app.get("/add", {"kind": "date", "tag": tag, "date": (start + timedelta(hours=1)).isoformat()})
    assert [job["id"] for job in scheduler.get_jobs()] == ["third", "second", "first"]  # newest change first
    created = scheduler.get_job("first")["created_at"]
    assert created == pytest.approx(start.timestamp(), abs=1e-3)
    scheduler.clock.advance(hours=2)
    record_ = scheduler.get_job("second")
    assert record_["status"] == "done"
    assert record_["last_run_at"] == pytest.approx((start + timedelta(hours=1)).timestamp(), abs=1e-3)
    assert record_["updated_at"] >= record_["last_run_at"]
    (run,) = scheduler.get_runs("second")
    assert run["scheduled_at"] == pytest.approx((start + timedelta(hours=1)).timestamp())


def test_a_runaway_step_is_stopped_with_a_clear_error(monkeypatch):
    import pyramid_scheduler.testing

    _, scheduler, _ = make_app()
    monkeypatch.setattr(pyramid_scheduler.testing, "MAX_RUNS", 50)
    scheduler.add_interval_job(record, seconds=1, args=["fast"])
    with pytest.raises(RuntimeError, match="50 runs in one step.*advance the clock by less"):
        scheduler.clock.advance(hours=1)
    assert len(scheduler.runs) == 50


def test_cron_across_the_march_dst_change_in_paris():
    """02:30 does not exist in Paris on 2026-03-29 (02:00 -> 03:00): the runs
    are APScheduler's own, as in the daemon."""
    app, scheduler, _ = make_app()
    scheduler.clock.set(datetime(2026, 3, 27, 12, 0, tzinfo=UTC))
    app.get("/add", {"kind": "cron", "tag": "night", "crontab": "30 2 * * *", "tz": "Europe/Paris"})
    runs = scheduler.clock.advance(days=4)
    local = [r["scheduled_run_time"].astimezone(PARIS).isoformat() for r in runs]

    trigger = CronTrigger(hour=2, minute=30, timezone=PARIS)
    expected, when = [], datetime(2026, 3, 27, 12, 0, 0, 1, tzinfo=UTC)
    previous = None
    while True:
        when = trigger.get_next_fire_time(previous, when)
        if when > datetime(2026, 3, 31, 12, 0, tzinfo=UTC):
            break
        expected.append(when.astimezone(UTC).astimezone(PARIS).isoformat())  # the wall time that exists
        previous = when
    assert local == expected
    # On the change day the run comes one hour after 01:30 local, at 03:30 CEST.
    assert [r["scheduled_run_time"].astimezone(UTC).strftime("%d %H:%M") for r in runs] == [
        "28 01:30",
        "29 01:30",
        "30 00:30",
        "31 00:30",
    ]
    assert [
        datetime.fromtimestamp(r["scheduled_run_time"].timestamp(), PARIS).strftime("%d %H:%M %Z") for r in runs
    ] == ["28 02:30 CET", "29 03:30 CEST", "30 02:30 CEST", "31 02:30 CEST"]


def test_cancel_job_stops_a_job_with_its_event():
    app, scheduler, seen = make_app()
    scheduler.clock.set(datetime(2026, 6, 1, tzinfo=UTC))
    app.get("/add", {"kind": "interval", "tag": "tick", "hours": "1"})
    scheduler.clock.advance(hours=2)
    app.get("/cancel", {"id": "tick"})
    scheduler.clock.advance(hours=5)
    assert [tag for tag, _ in CALLS] == ["tick", "tick"]
    assert scheduler.get_job("tick")["status"] == "canceled"
    assert types(scheduler, "tick") == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_EXECUTED, Event.JOB_CANCELED]
    assert [e.job_id for e in seen["JobCanceled"]] == ["tick"]
    assert scheduler.get_jobs(status="canceled")[0]["id"] == "tick"
    scheduler.cancel_job("tick")  # again: ignored, as by the daemon
    assert types(scheduler, "tick").count(Event.JOB_CANCELED) == 1


def test_failures_and_misses_are_reported_like_the_daemon():
    _, scheduler, seen = make_app()
    scheduler.add_async_job(boom, args=["b"], id="b")
    scheduler.add_date_job(
        record, scheduler.now() - timedelta(hours=2), args=["late"], id="late", misfire_grace_time=60
    )
    scheduler.run_pending()
    assert scheduler.get_job("b")["status"] == "failed"
    assert "ValueError: b fails" in scheduler.get_job("b")["error"]
    failed = seen["JobFailed"][0].event
    assert isinstance(failed.exception, ValueError) and "b fails" in failed.traceback
    assert scheduler.get_job("late")["status"] == "missed"
    assert [e.job_id for e in seen["JobMissed"]] == ["late"]
    assert "past its misfire grace time of 60s" in seen["JobMissed"][0].event.reason
    assert ("late", "the-app") not in CALLS


def test_a_durable_false_job_is_recorded_only_after_its_run_like_the_daemon():
    _, scheduler, seen = make_app()
    scheduler.add_async_job(record, args=["f"], id="f", durable=False)
    assert scheduler.get_job("f") is None and CALLS == []  # handed to the pool, not stored
    assert [r["status"] for r in scheduler.run_pending()] == ["done"]
    job = scheduler.get_job("f")
    assert (job["status"], job["result"], job["options"]) == ("done", "f", {"durable": False})
    assert types(scheduler, "f") == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_REMOVED]
    with pytest.raises(InvalidJob, match="durable: only run-now jobs"):
        scheduler.add_date_job(record, scheduler.now() + timedelta(hours=1), args=["x"], durable=False)


def test_the_real_checks_apply():
    _, scheduler, _ = make_app(**{"scheduler.queues": "jobs reports"})
    with pytest.raises(InvalidJob, match="lambda"):
        scheduler.add_async_job(lambda: None)
    with pytest.raises(InvalidJob, match="cron trigger"):
        scheduler.add_cron_job(record, hour="25", args=["x"])
    with pytest.raises(InvalidQueue):
        scheduler.add_async_job(record, args=["x"], queue="nope")
    with pytest.raises(InvalidJob, match="record"):
        scheduler.add_async_job(record, args=["x", "too many"])
    assert scheduler.jobs == {} and scheduler.events == []
    # A live id again is absorbed, as the daemon's ledger does.
    scheduler.add_interval_job(record, minutes=5, args=["x"], id="same", queue="reports")
    scheduler.add_interval_job(record, minutes=5, args=["x"], id="same", queue="reports")
    assert types(scheduler) == [Event.JOB_CREATED]
    assert scheduler.get_jobs(queue="reports")[0]["queue"] == "reports"
    assert {d["owner"] for d in scheduler.get_daemons()} == {OWNER}


def test_include_after_the_real_one_keeps_listeners_and_starts_nothing(tmp_path):
    settings = {
        "scheduler.combined": "true",
        "scheduler.broker.url": "redis://127.0.0.1:9/0",
        "scheduler.events.subscribe": "true",
        "scheduler.jobstore.url": f"sqlite:///{tmp_path}/j.sqlite",
    }
    config = Configurator(settings=settings)
    config.include("pyramid_scheduler")
    heard: list[Event] = []
    config.registry.scheduler.add_listener(heard.append)
    config.include("pyramid_scheduler.testing")
    threads = set(threading.enumerate())
    app = config.make_wsgi_app()
    assert set(threading.enumerate()) <= threads  # no combined-mode engine, no event subscriber
    scheduler = app.registry.scheduler
    assert isinstance(scheduler, TestingScheduler)
    scheduler.add_async_job(record, args=["l"])
    assert [e.type for e in heard] == [Event.JOB_CREATED]
    assert not (tmp_path / "j.sqlite").exists()  # and nothing reached for port 9 either


def test_included_from_settings_before_the_application_includes_the_real_one():
    config = Configurator(settings={"pyramid.includes": "pyramid_scheduler.testing", "scheduler.testing.eager": "true"})
    config.include("pyramid_scheduler")  # what the application's main() does: a no-op now
    config.add_route("add", "/add")
    config.add_view(add_view, route_name="add", renderer="json")
    app = TestApp(config.make_wsgi_app())
    CALLS.clear()
    app.get("/add", {"kind": "async", "tag": "s1"})
    assert isinstance(app.app.registry.scheduler, TestingScheduler)
    assert [tag for tag, _ in CALLS] == ["s1"]


def note_transaction(tag: str) -> None:
    import transaction

    CALLS.append((tag, id(transaction.get())))


def tm_view(request: Any) -> dict[str, str]:
    request.tm.get().addAfterCommitHook(lambda ok: CALLS.append(("committed", ok)))
    CALLS.append(("view", id(request.tm.get())))
    immediate = request.params.get("immediate") == "1"
    job_id = request.scheduler.add_async_job(note_transaction, args=["job"], immediate=immediate)
    if request.params.get("fail") == "1":
        raise RuntimeError("the view fails after adding the job")
    return {"job_id": job_id}


def tm_app() -> TestApp:
    CALLS.clear()
    config = Configurator(settings={"scheduler.testing.eager": "true"})
    config.include("pyramid_tm")
    config.include("pyramid_scheduler.testing")
    config.add_route("tm", "/tm")
    config.add_view(tm_view, route_name="tm", renderer="json")
    return TestApp(config.make_wsgi_app())


def test_an_eager_job_added_in_a_pyramid_tm_request_runs_after_the_commit_in_its_own_transaction():
    tm_app().get("/tm")
    (view, view_txn), committed, (job, job_txn) = CALLS
    assert (view, committed, job) == ("view", ("committed", True), "job")
    assert job_txn != view_txn  # as in the daemon: a transaction of its own


def test_an_eager_job_added_in_a_request_that_aborts_never_runs():
    app = tm_app()
    with pytest.raises(RuntimeError):
        app.get("/tm", {"fail": "1"})
    assert [tag for tag, _ in CALLS] == ["view"]
    assert app.app.registry.scheduler.get_jobs() == []


def test_an_immediate_eager_job_run_inside_a_pyramid_tm_request_joins_its_transaction():
    tm_app().get("/tm", {"immediate": "1"})
    (_, view_txn), (_, job_txn), committed = CALLS
    assert job_txn == view_txn  # the request's transaction was not aborted for the job
    assert committed == ("committed", True)


def test_retries_back_off_on_the_fake_clock_like_the_daemon():
    _, scheduler, _ = make_app()
    scheduler.add_async_job(boom, args=["r"], id="r", retries=2, retry_delay=10, retry_backoff=3)
    scheduler.run_pending()
    record = scheduler.get_job("r")
    assert (record["status"], record["attempt"], record["retries_left"]) == ("scheduled", 2, 1)
    retry = [e for e in scheduler.events if e.type == Event.JOB_RETRY][0]
    assert (retry.attempt, retry.delay) == (2, 10)
    assert scheduler.clock.advance(seconds=9) == []
    assert len(scheduler.clock.advance(seconds=1)) == 1  # the first retry, 10 s later
    assert scheduler.clock.advance(seconds=29) == []
    assert len(scheduler.clock.advance(seconds=1)) == 1  # the second, 30 s after that
    assert scheduler.get_job("r")["status"] == "failed"
    assert [run["status"] for run in scheduler.get_runs("r")] == ["failed"] * 3
    errors = [(e.attempt, e.will_retry) for e in scheduler.events if e.type == Event.JOB_ERROR]
    assert errors == [(1, True), (2, True), (3, False)]
    assert types(scheduler, "r") == [
        Event.JOB_CREATED,
        Event.JOB_ERROR,
        Event.JOB_RETRY,
        Event.JOB_ERROR,
        Event.JOB_RETRY,
        Event.JOB_ERROR,
        Event.JOB_REMOVED,
    ]
    assert scheduler.wait("r", timeout=0)["status"] == "failed"


def test_pause_resume_reschedule_and_run_now_on_the_fake_clock():
    _, scheduler, _ = make_app()
    start = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)
    scheduler.clock.set(start)
    scheduler.add_interval_job(record, args=["hourly"], id="hourly", hours=1)
    scheduler.pause_job("hourly")
    assert scheduler.get_job("hourly")["status"] == "paused"
    assert scheduler.clock.advance(hours=3) == []
    scheduler.resume_job("hourly")
    # From the next point of its grid at or after now (as APScheduler resumes a job).
    assert scheduler.get_job("hourly")["next_run_time"] == (start + timedelta(hours=3)).timestamp()
    scheduler.reschedule_job("hourly", crontab="30 6 * * *")
    assert scheduler.preview_job("hourly", n=1) == [start + timedelta(hours=6, minutes=30)]
    scheduler.run_job_now("hourly")
    assert [r["scheduled_run_time"] for r in scheduler.run_pending()] == [start + timedelta(hours=3)]
    assert [r["scheduled_run_time"] for r in scheduler.clock.advance(hours=4)] == [
        start + timedelta(hours=6, minutes=30)
    ]
    assert types(scheduler, "hourly") == [
        Event.JOB_CREATED,
        Event.JOB_PAUSED,
        Event.JOB_RESUMED,
        Event.JOB_RESCHEDULED,
        Event.JOB_EXECUTED,
        Event.JOB_EXECUTED,
    ]
    scheduler.resume_job("hourly")  # not paused: refused with its event, as by the daemon
    refused = scheduler.events[-1]
    assert (refused.type, refused.op, refused.reason) == (Event.JOB_REQUEST_REFUSED, "resume", "the job is not paused")


# -- a transaction that never commits: the Pyramid starter's fixtures ----------------


def note_request(request: Any, tag: str, follow_up: bool = False) -> str:
    CALLS.append((tag, request))
    if follow_up:
        request.scheduler.add_async_job(note_request, args=[f"{tag}-next"])
    return tag


def request_job_view(request: Any) -> dict[str, str]:
    follow_up = request.params.get("follow_up") == "1"
    return {"job_id": request.scheduler.add_async_job(note_request, args=["view"], kwargs={"follow_up": follow_up})}


@pytest.fixture
def starter_like() -> Any:
    """The starter's set-up in small: pyramid_tm's explicit manager, and a
    test manager the requests share (``tm.active``/``tm.manager``)."""
    import transaction
    from pyramid.scripting import prepare

    CALLS.clear()
    config = Configurator(settings={"tm.manager_hook": "pyramid_tm.explicit_manager"})
    config.include("pyramid_tm")
    config.include("pyramid_scheduler.testing")
    config.add_route("job", "/job")
    config.add_view(request_job_view, route_name="job", renderer="json")
    wsgi = config.make_wsgi_app()
    tm = transaction.TransactionManager(explicit=True)
    tm.begin()
    app = TestApp(wsgi, extra_environ={"tm.active": True, "tm.manager": tm})
    with prepare(registry=wsgi.registry) as env:
        env["request"].tm = tm
        yield app, wsgi.registry.scheduler, tm, env["request"]
    with contextlib.suppress(transaction.interfaces.NoTransaction):  # none left after a commit
        tm.abort()


def test_held_shows_the_jobs_a_transaction_holds_and_run_pending_runs_them_inside_it(starter_like):
    app, scheduler, tm, request = starter_like
    tm.doom()
    job_id = app.get("/job", {"follow_up": "1"}).json["job_id"]

    [held] = scheduler.held(tm)
    assert (held.op, held.id, held.func) == ("add", job_id, f"{__name__}:note_request")
    assert [job.id for job in scheduler.held(request=request)] == [job_id]
    assert scheduler.get_job(job_id) is None
    assert scheduler.run_pending() == []  # still held

    runs = scheduler.run_pending(request=request)
    # The job, then the follow-up it added (held by the same transaction), both
    # with the test's request.
    assert [(run["status"], run["result"]) for run in runs] == [("done", "view"), ("done", "view-next")]
    assert CALLS == [("view", request), ("view-next", request)]
    assert scheduler.held(tm) == []
    assert scheduler.run_pending(request=request) == []


def test_jobs_run_from_a_transaction_are_not_run_again_when_it_commits(starter_like):
    app, scheduler, tm, request = starter_like
    job_id = app.get("/job").json["job_id"]
    assert len(scheduler.run_pending(request=request)) == 1
    tm.commit()  # the after-commit hook publishes what the transaction held
    assert [run["job_id"] for run in scheduler.runs] == [job_id]
    assert scheduler.get_job(job_id)["status"] == "done"


def test_reset_forgets_jobs_runs_and_events_and_keeps_listeners():
    _, scheduler, seen = make_app()
    heard: list[str] = []
    scheduler.add_listener(lambda event: heard.append(event.type))
    scheduler.clock.advance(days=30)
    scheduler.add_async_job(record, args=["before"], id="before")
    scheduler.run_pending()
    scheduler.reset()

    assert (scheduler.jobs, scheduler.runs, scheduler.events) == ({}, [], [])
    assert scheduler.get_job("before") is None
    assert abs(scheduler.now() - datetime.now(UTC)) < timedelta(days=1)  # the real time again
    heard.clear()
    scheduler.add_async_job(record, args=["after"], id="after")
    assert [run["job_id"] for run in scheduler.run_pending()] == ["after"]
    assert heard == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_REMOVED]


# -- what the daemon's engine brings: catch-up, JOB_MISSED per skipped run, declarations -


@pytest.mark.parametrize(
    ("catch_up", "ran", "missed"),
    [
        ("skip", ["05:00"], ["01:00", "02:00", "03:00", "04:00"]),
        ("all", ["01:00", "02:00", "03:00", "04:00", "05:00"], []),
    ],
)
def test_runs_due_while_the_clock_was_set_forward_follow_the_catch_up_policy(catch_up, ran, missed):
    """clock.set() forward is an outage: what fell due meanwhile is caught up
    as the daemon does, each run not made reported with JOB_MISSED."""
    _, scheduler, seen = make_app()
    scheduler.clock.set(datetime(2026, 2, 2, 0, 30, tzinfo=UTC))
    scheduler.add_cron_job(record, crontab="0 * * * *", args=["hourly"], id="hourly", catch_up=catch_up)
    scheduler.clock.set(datetime(2026, 2, 2, 5, 30, tzinfo=UTC))  # nothing ran from 00:30 to 05:30
    runs = scheduler.run_pending()

    def hours(status: str) -> list[str]:
        return [r["scheduled_run_time"].astimezone(UTC).strftime("%H:%M") for r in runs if r["status"] == status]

    assert (hours("done"), hours("missed")) == (ran, missed)
    assert [e.job_id for e in seen["JobMissed"]] == ["hourly"] * len(missed)
    assert [run["status"] for run in scheduler.get_runs("hourly")] == [r["status"] for r in runs]
    assert types(scheduler, "hourly")[-1] == Event.JOB_EXECUTED


def test_declared_jobs_are_stored_as_the_daemon_stores_them():
    config = Configurator(settings={})
    config.include("pyramid_scheduler.testing")
    config.add_scheduled_job(record, minutes=30, args=["declared"], id="every30")
    app = config.make_wsgi_app()
    scheduler = app.registry.scheduler
    CALLS.clear()
    assert scheduler.get_job("every30")["status"] == "scheduled"
    assert [r["job_id"] for r in scheduler.clock.advance(hours=1)] == ["every30", "every30"]
    assert CALLS == [("declared", None), ("declared", None)]
    assert types(scheduler, "every30") == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_EXECUTED]
    scheduler.reset()  # a new daemon: the declaration is stored again
    assert scheduler.get_job("every30")["runs"] == 0


def test_a_production_broker_in_the_settings_is_not_reached_nor_refused():
    """The daemon refuses an open broker without a secret; the kit reaches no broker."""
    _, scheduler, _ = make_app(**{"scheduler.broker.url": "redis://192.0.2.1:6379/0"})
    scheduler.add_async_job(record, args=["local"], id="local")
    assert [run["status"] for run in scheduler.run_pending()] == ["done"]


def test_jobs_added_from_several_threads_all_run():
    """A threaded test server adds jobs from its threads: the kit takes them
    one thread at a time, and runs every one."""
    _, scheduler, _ = make_app()
    failures: list[BaseException] = []

    def add(worker: int) -> None:
        try:
            for n in range(30):
                scheduler.add_async_job(record, args=[f"t{worker}-{n}"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=add, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(scheduler.run_pending()) == 120
    assert len(scheduler.jobs) == 120


def test_a_stand_in_at_registry_scheduler_is_left_alone():
    """An application (or test) that puts its own object at
    registry.scheduler is not asked for its settings when the app is made."""
    with Configurator(settings={}) as config:
        config.include("pyramid_scheduler")
        config.commit()
        config.registry.scheduler = object()
        app = config.make_wsgi_app()
    assert app.registry.scheduler is not None
