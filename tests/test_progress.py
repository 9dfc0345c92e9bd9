"""Progress and stopping (pyramid_scheduler.progress, daemon/control) through
the public API: outside a job, in the testing kit (the daemon's runner on
the fake clock), and the daemon's watcher on a real job store. The same with
real ``pscheduler`` daemons: tests/integration/test_progress.py."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from pyramid.config import Configurator
from pyramid.threadlocal import get_current_registry

from pyramid_scheduler import InvalidJob, JobStopped, report_progress, should_stop
from pyramid_scheduler.api import Event, JobProgress
from pyramid_scheduler.daemon.control import Controls
from pyramid_scheduler.progress import stop_if_asked
from pyramid_scheduler.testing import TestingScheduler

LOOPS = 1000


def counting(total: int) -> int:
    for done in range(1, total + 1):
        report_progress(done=done, total=total, message=f"item {done}")
    return total


def sleepy(seconds: float, how: str = "check") -> str:
    """Moves the fake clock on by *seconds* as if it worked that long."""
    scheduler = get_current_registry().scheduler
    scheduler.clock.set(scheduler.clock.now() + timedelta(seconds=seconds))
    if how == "raise":
        report_progress(0.5)
    return "stopped" if should_stop() else "finished"


def cancels_itself(job_id: str) -> str:
    assert not should_stop()
    get_current_registry().scheduler.cancel_job(job_id, immediate=True)
    assert should_stop()
    report_progress(0.9, "never past this")  # raises JobStopped
    return "not reached"


def make_scheduler() -> tuple[TestingScheduler, list[JobProgress]]:
    config = Configurator(settings={})
    config.include("pyramid_scheduler.testing")
    heard = config.testing_add_subscriber(JobProgress)
    config.commit()
    scheduler = config.registry.scheduler
    assert isinstance(scheduler, TestingScheduler)
    return scheduler, heard


def test_outside_a_job_progress_is_ignored_and_nothing_asks_to_stop():
    assert report_progress(0.5, "a plain call") is None
    assert report_progress(done=3, total=4) is None
    assert should_stop() is False
    assert stop_if_asked() is None
    assert counting(5) == 5


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((1.5,), {}, "fraction must be a number from 0 to 1"),
        ((float("nan"),), {}, "fraction must be a number from 0 to 1"),
        ((True,), {}, "fraction must be a number from 0 to 1"),
        (("half",), {}, "fraction must be a number from 0 to 1"),
        ((), {}, "give fraction"),
        ((0.5,), {"done": 1, "total": 2}, "not both"),
        ((), {"done": 3, "total": 2}, "done= and total="),
        ((), {"done": 1, "total": 0}, "done= and total="),
        ((), {"done": 1.5, "total": 2}, "done= and total="),
        ((0.5, 7), {}, "message must be a str"),
    ],
)
def test_bad_progress_is_refused_naming_the_argument(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        report_progress(*args, **kwargs)


def test_progress_in_a_tight_loop_is_throttled_and_the_last_report_is_kept():
    scheduler, heard = make_scheduler()
    job_id = scheduler.add_async_job(counting, args=[LOOPS])
    scheduler.run_pending()
    record = scheduler.get_job(job_id)
    assert record["status"] == "done"
    assert record["progress"]["fraction"] == 1.0
    assert record["progress"]["message"] == f"item {LOOPS}"
    assert record["progress"]["run_key"].startswith(f"{job_id}@")
    progress = [e for e in scheduler.events if e.type == Event.JOB_PROGRESS]
    assert 1 <= len(progress) < LOOPS / 10
    assert progress[-1].fraction == 1.0
    assert [e.event for e in heard] == progress  # the Pyramid subscribers too
    types = [e.type for e in scheduler.events if e.get("job_id") == job_id]
    assert types.index(Event.JOB_PROGRESS) < types.index(Event.JOB_EXECUTED)


@pytest.mark.parametrize("how", ["check", "raise"])
def test_a_run_past_its_timeout_on_the_fake_clock_ends_timed_out(how):
    scheduler, _ = make_scheduler()
    job_id = scheduler.add_async_job(sleepy, args=[5, how], timeout=2, retries=1, retry_delay=10)
    scheduler.run_pending()
    record = scheduler.get_job(job_id)
    # A timeout fails the attempt: retried like a failure.
    assert record["status"] == "scheduled"
    assert record["attempt"] == 2
    assert "timed out" in record["error"]
    assert [run["status"] for run in scheduler.get_runs(job_id)] == ["timed-out"]
    (error,) = [e for e in scheduler.events if e.type == Event.JOB_ERROR]
    assert isinstance(error.exception, JobStopped) or "JobStopped" in error.traceback
    assert error.will_retry
    scheduler.clock.advance(seconds=10)
    assert [run["status"] for run in scheduler.get_runs(job_id)] == ["timed-out", "timed-out"]
    assert scheduler.get_job(job_id)["status"] == "failed"


def test_a_run_within_its_timeout_is_not_stopped():
    scheduler, _ = make_scheduler()
    job_id = scheduler.add_async_job(sleepy, args=[1], timeout=3)
    scheduler.run_pending()
    assert scheduler.get_job(job_id)["status"] == "done"
    assert scheduler.get_job(job_id)["result"] == "finished"


def test_cancel_job_stops_the_running_job_which_ends_canceled_without_retry():
    scheduler, _ = make_scheduler()
    job_id = scheduler.add_async_job(cancels_itself, args=["self-cancel"], id="self-cancel", retries=2)
    scheduler.run_pending()
    record = scheduler.get_job(job_id)
    assert record["status"] == "canceled"
    assert record["retry_at"] is None
    (run,) = scheduler.get_runs(job_id)
    assert run["status"] == "stopped"
    assert "canceled" in run["error"]
    types = [e.type for e in scheduler.events if e.get("job_id") == job_id]
    assert types[-1] == Event.JOB_CANCELED
    assert Event.JOB_ERROR not in types and Event.JOB_EXECUTED not in types


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"timeout": 0.5}, "timeout: expected a number of 1 or more"),
        ({"timeout": "60"}, "timeout: expected int or float or None"),
        ({"timeout": 60, "durable": False}, "timeout: a durable=False job is not watched"),
    ],
)
def test_a_bad_timeout_is_refused_at_add(options, match):
    scheduler, _ = make_scheduler()
    with pytest.raises(InvalidJob, match=match):
        scheduler.add_async_job(counting, args=[1], **options)


def test_the_watcher_reads_cancels_and_timeouts_from_the_job_store_and_warns_past_the_grace(caplog):
    """What a daemon does for runs whose cancel another daemon consumed: the
    job store's status, read by this daemon's watcher."""
    scheduler, _ = make_scheduler()
    ledger, clock = scheduler.engine.ledger, scheduler.clock
    canceled = scheduler.add_date_job(counting, clock.now() + timedelta(hours=1), args=[1])
    slow = scheduler.add_date_job(counting, clock.now() + timedelta(hours=1), args=[1], timeout=2)
    assert ledger.set_status(canceled, "default", "canceled")
    events: list[Event] = []
    controls = Controls(ledger, events.append, clock, grace=5)
    first = controls.start(canceled, "default", f"{canceled}@x", {})
    second = controls.start(slow, "default", f"{slow}@x", {})
    controls.look([first, second])
    assert first.should_stop() and first.stop_reason == "canceled"
    assert not second.should_stop()
    clock.set(clock.now() + timedelta(seconds=3))
    controls.look([second])
    assert second.stop_reason == "timed out"
    assert "past its timeout" not in caplog.text
    clock.set(clock.now() + timedelta(seconds=5))
    with caplog.at_level(logging.WARNING, "pyramid_scheduler"):
        controls.look([second])
        controls.look([second])  # once
    assert caplog.text.count("still running") == 1
    with pytest.raises(JobStopped, match="timed out"):
        second.report(0.25, "late")
    assert second.end() == "timed-out"
    assert first.end() == "stopped"
    assert [e.fraction for e in events if e.type == Event.JOB_PROGRESS] == [0.25]
    assert scheduler.get_job(slow)["progress"]["message"] == "late"


def test_a_timeout_needs_the_sql_job_store():
    config = Configurator(settings={"scheduler.jobstore.url": "memory", "scheduler.combined": "false"})
    config.include("pyramid_scheduler")
    config.commit()
    with pytest.raises(InvalidJob, match="timeout: need the SQL job store"):
        config.registry.scheduler.add_async_job(counting, args=[1], timeout=60)


def test_a_job_store_of_the_same_schema_version_gets_the_progress_table(tmp_path):
    """The table is new in this release without a schema step: the ledger
    makes it when it opens tables that lack it."""
    import sqlalchemy as sa

    from pyramid_scheduler.store.db import create_db_engine
    from pyramid_scheduler.store.ledger import Ledger
    from pyramid_scheduler.store.progress import read_progress, write_progress

    engine = create_db_engine(f"sqlite:///{tmp_path}/jobs.sqlite")
    ledger = Ledger(engine, "t_")
    ledger.progress.drop(engine)
    assert "t_progress" not in sa.inspect(engine).get_table_names()
    ledger = Ledger(engine, "t_")
    write_progress(ledger, engine, "j1", "j1@x", 0.5, "half", 1.0)
    write_progress(ledger, engine, "j1", "j1@y", 0.75, "more", 2.0)
    assert read_progress(ledger, engine, ["j1", "j2"]) == {
        "j1": {"run_key": "j1@y", "fraction": 0.75, "message": "more", "at": 2.0}
    }
    engine.dispose()


def test_the_progress_goes_with_its_job_at_housekeeping():
    from pyramid_scheduler.store.progress import read_progress

    scheduler, _ = make_scheduler()
    job_id = scheduler.add_async_job(counting, args=[3])
    scheduler.run_pending()
    ledger = scheduler.engine.ledger
    assert read_progress(ledger, ledger.engine, [job_id])
    assert ledger.purge(older_than=ledger.now() + 1) == 1
    assert read_progress(ledger, ledger.engine, [job_id]) == {}
