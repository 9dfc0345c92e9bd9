"""Execution (:mod:`pyramid_scheduler.daemon.execution`) through its interface: a due
job in, a run record out.

A real engine on a real job store (SQLite file or PostgreSQL), as in
``test_engine.py``; each job is stored due an hour from now, so the scheduler
thread leaves it alone, and its due runs are handed to :meth:`Runner.run` on
the test's thread, as the worker pool would. What comes out is checked three
ways: the :class:`RunRecord` returned, the run ledger, and the events.
"""

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import test_engine
from test_engine import RUNS, add, fail, record, types_for, wait_for

from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon.catchup import Missed, ScheduledRun
from pyramid_scheduler.daemon.execution import RunRecord, run_key

UTC = timezone.utc
proxy_factory = test_engine.proxy_factory
engine_factory = test_engine.engine_factory


def stored(engine, func, job_id, **options):
    """Store a date job due in an hour; return it as the job store loads it."""
    request = add(func, kind="date", when=datetime.now(UTC) + timedelta(hours=1), job_id=job_id)
    assert engine.submit(replace(request, options=options)) == "stored"
    job = engine.aps.get_job(job_id, jobstore="jobs")
    assert job is not None
    return job


def handed(engine, job, run_times):
    """Hand a batch to the runner as the worker pool does (``submit_job``
    counts it pending, the run ends it)."""
    engine.runner.submitted()
    return engine.runner.run(job, run_times)


def statuses(engine, job_id):
    return {run["run_key"]: run["status"] for run in engine.proxy.get_runs(job_id)}


def test_a_due_run_in_gives_its_run_record_out(engine_factory):
    engine, events = engine_factory()
    job = stored(engine, record, "ex1")
    due = job.next_run_time
    (out,) = handed(engine, job, [due])
    key = run_key("ex1", due)
    assert out == RunRecord("ex1", "jobs", key, "done")
    assert RUNS == [("ex1", "M")]
    assert statuses(engine, "ex1") == {key: "done"}
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "ex1"))
    assert types_for(events, "ex1") == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_REMOVED]


def test_a_failed_run_with_retries_left_comes_out_with_its_retry(engine_factory):
    engine, events = engine_factory()
    job = stored(engine, fail, "ex2", retries=1, retry_delay=3600)
    due = job.next_run_time
    (out,) = handed(engine, job, [due])
    assert (out.outcome, out.retry.attempt, out.retry.retries) == ("failed", 1, 1)
    assert engine.proxy.get_job("ex2")["status"] == "scheduled"  # the retry is due
    wait_for(lambda: Event.JOB_RETRY in types_for(events, "ex2"))
    assert types_for(events, "ex2") == [Event.JOB_CREATED, Event.JOB_ERROR, Event.JOB_RETRY]


def test_a_run_later_than_its_grace_comes_out_missed_and_is_not_run(engine_factory):
    engine, events = engine_factory()
    job = stored(engine, record, "ex3", misfire_grace_time=1)
    late = datetime.now(UTC) - timedelta(minutes=5)
    (out,) = handed(engine, job, [late])
    assert out == RunRecord("ex3", "jobs", run_key("ex3", late), "missed")
    assert RUNS == []
    wait_for(lambda: Event.JOB_MISSED in types_for(events, "ex3"))


def test_a_run_already_recorded_comes_out_not_run_and_runs_once(engine_factory):
    engine, _ = engine_factory()
    job = stored(engine, record, "ex4")
    due = job.next_run_time
    first = handed(engine, job, [due])
    again = handed(engine, job, [due])
    assert [r.outcome for r in first + again] == ["done", "not-run"]
    assert RUNS == [("ex4", "M")]


def test_the_runs_a_catch_up_plan_skipped_come_out_missed_before_the_run(engine_factory):
    engine, events = engine_factory()
    job = stored(engine, record, "ex5")
    due = job.next_run_time
    skipped = [Missed(due - timedelta(minutes=2), "coalesced"), Missed(due - timedelta(minutes=1), "coalesced")]
    out = handed(engine, job, [ScheduledRun.of(due, skipped)])
    assert [(r.run_key, r.outcome) for r in out] == [
        (run_key("ex5", skipped[0].first), "missed"),
        (run_key("ex5", skipped[1].first), "missed"),
        (run_key("ex5", due), "done"),
    ]
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "ex5"))
    assert types_for(events, "ex5") == [
        Event.JOB_CREATED,
        Event.JOB_MISSED,
        Event.JOB_MISSED,
        Event.JOB_EXECUTED,
        Event.JOB_REMOVED,
    ]


def test_a_run_refused_by_the_heartbeat_check_goes_back_to_scheduling(engine_factory, monkeypatch):
    engine, _ = engine_factory()
    job = stored(engine, record, "ex6")
    due = job.next_run_time
    engine.aps.remove_job("ex6", jobstore="jobs")  # handed over: the scheduler no longer holds it
    monkeypatch.setattr(engine.membership, "valid", lambda: False)
    (out,) = handed(engine, job, [due])
    assert out.outcome == "not-run" and RUNS == []
    back = engine.aps.get_job("ex6", jobstore="jobs")
    assert back is not None and back.next_run_time == due
