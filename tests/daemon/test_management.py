"""Management (:mod:`pyramid_scheduler.daemon.management`) carrying out reschedule,
pause, resume and run-now requests: APScheduler's job, the job record and the
events (the requests handed to :meth:`Engine.submit` as the consumer would;
SQLite and PostgreSQL)."""

import json
from datetime import datetime, timedelta, timezone

import test_engine
from test_engine import GATE, RUNS, add, record, types_for, wait_for, wait_gate

from pyramid_scheduler.api import Event
from pyramid_scheduler.triggers.build import trigger_spec
from pyramid_scheduler.wire.messages import JobRequest

UTC = timezone.utc
proxy_factory = test_engine.proxy_factory
engine_factory = test_engine.engine_factory


def request(op, job_id, trigger=None):
    return JobRequest(op=op, id=job_id, queue="jobs", trigger=trigger)


def test_pause_during_a_run_keeps_the_job_paused_after_it(engine_factory):
    engine, events = engine_factory()
    # Every 30 s, the first run at once: nothing else is due during the test.
    engine.submit(
        add(wait_gate, kind="interval", job_id="p1", seconds=30, when=datetime.now(UTC) - timedelta(seconds=29.9))
    )
    wait_for(lambda: ("p1", "started") in RUNS)
    assert engine.submit(request("pause", "p1")) == "paused"
    assert engine.ledger.get_job("p1")["status"] == "paused"
    GATE.set()
    wait_for(lambda: Event.JOB_EXECUTED in types_for(events, "p1"))
    wait_for(lambda: engine.ledger.get_job("p1")["runs"] == 1)
    assert engine.ledger.get_job("p1")["status"] == "paused"  # the run's end did not unpause it
    assert engine.aps.get_job("p1").next_run_time is None
    assert engine.submit(request("run_now", "p1")) == "run_now-refused"
    assert engine.submit(request("pause", "p1")) == "pause-refused"

    assert engine.submit(request("resume", "p1")) == "resumed"
    assert engine.ledger.get_job("p1")["status"] == "scheduled"
    assert engine.aps.get_job("p1").next_run_time > datetime.now(UTC)
    assert engine.submit(request("run_now", "p1")) == "run-now"
    wait_for(lambda: types_for(events, "p1").count(Event.JOB_EXECUTED) == 2)
    wait_for(lambda: engine.ledger.get_job("p1")["runs"] == 2)
    assert engine.ledger.get_job("p1")["status"] == "scheduled"
    assert types_for(events, "p1") == [
        Event.JOB_CREATED,
        Event.JOB_PAUSED,
        Event.JOB_EXECUTED,
        Event.JOB_REQUEST_REFUSED,
        Event.JOB_REQUEST_REFUSED,
        Event.JOB_RESUMED,
        Event.JOB_EXECUTED,
    ]
    refused = [e for e in events if e.type == Event.JOB_REQUEST_REFUSED]
    assert [(e.op, e.reason) for e in refused] == [
        ("run_now", "the job is paused; resume it first"),
        ("pause", "the job is already paused"),
    ]


def test_requests_for_a_job_the_daemon_does_not_have_are_refused_with_an_event(engine_factory):
    engine, events = engine_factory()
    for op in ("pause", "resume", "run_now"):
        assert engine.submit(request(op, "ghost")) == f"{op}-refused"
    spec = trigger_spec("interval", UTC, hours=1)
    assert engine.submit(request("reschedule", "ghost", spec)) == "reschedule-refused"
    wait_for(lambda: len(types_for(events, "ghost")) == 4)
    assert {e.op for e in events if e.get("job_id") == "ghost"} == {"pause", "resume", "run_now", "reschedule"}
    assert all("no such live job" in e.reason for e in events if e.get("job_id") == "ghost")
    assert engine.ledger.get_job("ghost") is None


def test_run_now_runs_a_date_job_early_and_closes_it(engine_factory):
    engine, events = engine_factory()
    engine.submit(add(record, kind="date", job_id="early", when=datetime.now(UTC) + timedelta(hours=1)))
    assert engine.submit(request("run_now", "early")) == "run-now"
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "early"))
    assert types_for(events, "early") == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_REMOVED]
    assert RUNS == [("early", "M")]
    assert engine.ledger.get_job("early")["status"] == "done"


def test_reschedule_replaces_the_trigger_in_aps_and_in_the_record(engine_factory):
    engine, events = engine_factory()
    engine.submit(add(record, kind="date", job_id="rs", when=datetime.now(UTC) + timedelta(hours=1)))
    new = trigger_spec("cron", UTC, crontab="0 4 * * *")
    assert engine.submit(request("reschedule", "rs", new)) == "rescheduled"
    job = engine.aps.get_job("rs")
    assert (job.next_run_time.hour, job.next_run_time.minute) == (4, 0)
    row = engine.ledger.get_job("rs")
    assert (row["kind"], json.loads(row["request"])["trigger"]) == ("cron", new)
    wait_for(lambda: Event.JOB_RESCHEDULED in types_for(events, "rs"))
    event = [e for e in events if e.type == Event.JOB_RESCHEDULED][0]
    assert (event.trigger, event.next_run_time) == (new, job.next_run_time)
    # A schedule that ended by the time the daemon reads it: refused, the job untouched.
    ended = trigger_spec(
        "interval",
        UTC,
        hours=1,
        start_date=datetime.now(UTC) - timedelta(hours=3),
        end_date=datetime.now(UTC) - timedelta(hours=2, minutes=30),
    )
    assert engine.submit(request("reschedule", "rs", ended)) == "reschedule-refused"
    assert engine.aps.get_job("rs").next_run_time == job.next_run_time


def test_resuming_a_schedule_that_ended_while_paused_closes_the_job(engine_factory):
    engine, events = engine_factory()
    start = datetime.now(UTC) + timedelta(seconds=1)
    end = start + timedelta(seconds=0.5)
    engine.submit(add(record, kind="interval", job_id="gone", when=start, hours=1, end_date=end))
    assert engine.submit(request("pause", "gone")) == "paused"
    wait_for(lambda: datetime.now(UTC) > end, timeout=5)
    assert engine.submit(request("resume", "gone")) == "resumed-ended"
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "gone"))
    assert types_for(events, "gone") == [Event.JOB_CREATED, Event.JOB_PAUSED, Event.JOB_REMOVED]
    row = engine.ledger.get_job("gone")
    assert (row["status"], row["error"]) == ("missed", "its schedule ended while it was paused")
    assert engine.aps.get_job("gone") is None
    assert RUNS == []


def test_job_records_carry_the_next_run_time_from_the_job_store(engine_factory):
    engine, events = engine_factory()
    proxy = engine.proxy
    due = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    engine.submit(add(record, kind="date", job_id="n1", when=due))
    assert proxy.get_job("n1")["next_run_time"] == due.timestamp()  # epoch seconds, like the other times
    assert [r["next_run_time"] for r in proxy.get_jobs(status="scheduled") if r["id"] == "n1"] == [due.timestamp()]
    assert engine.submit(request("pause", "n1")) == "paused"
    assert proxy.get_job("n1")["next_run_time"] is None
    assert engine.submit(request("resume", "n1")) == "resumed"
    assert proxy.get_job("n1")["next_run_time"] == due.timestamp()
