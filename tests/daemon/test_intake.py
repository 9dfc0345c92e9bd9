"""Intake (:mod:`pyramid_scheduler.daemon.intake`): an add request becomes a
stored job once, whatever the broker redelivers; run-now jobs go to the
workers when they have room and a fresh heartbeat, else to the job store.

Requests are handed to :meth:`Engine.submit` as the consumer would after
decoding; the job store is a real SQLite file (or PostgreSQL).
"""

from datetime import datetime, timedelta

import test_engine
from test_engine import GATE, RUNS, UTC, add, record, settled, types_for, wait_gate

from conftest import wait_for
from pyramid_scheduler.api import Event
from pyramid_scheduler.triggers.build import trigger_spec
from pyramid_scheduler.wire.messages import JobRequest

proxy_factory = test_engine.proxy_factory
engine_factory = test_engine.engine_factory


def test_duplicate_message_is_absorbed_but_a_finished_id_can_be_reused(engine_factory):
    engine, events = engine_factory()
    request = add(record, job_id="d1")
    assert engine.submit(request) == "stored"
    assert engine.submit(request) == "duplicate"  # a redelivery: same message id
    wait_for(lambda: engine.ledger.get_job("d1")["status"] == "done")
    assert engine.submit(request) == "duplicate"  # a late redelivery after it ran
    again = add(record, job_id="d1")  # a new request reusing the finished id
    assert engine.submit(again) == "stored"
    wait_for(lambda: len([r for r in RUNS if r[0] == "d1"]) == 2)
    settled(engine)
    assert len([r for r in RUNS if r[0] == "d1"]) == 2
    assert types_for(events, "d1").count(Event.JOB_CREATED) == 2


def test_live_job_id_is_idempotent(engine_factory):
    engine, _ = engine_factory()
    first = add(record, kind="interval", job_id="sync", seconds=3600)
    second = add(record, kind="interval", job_id="sync", seconds=60)
    assert engine.submit(first) == "stored"
    assert engine.submit(second) == "duplicate"
    job = engine.aps.get_job("sync")
    assert job.trigger.interval == timedelta(hours=1)


def test_run_now_jobs_past_the_pool_backlog_wait_in_the_job_store(engine_factory, monkeypatch):
    monkeypatch.setattr("pyramid_scheduler.daemon.intake.DIRECT_BACKLOG", 0)
    engine, events = engine_factory()
    engine.aps.pause()
    engine.submit(add(record, job_id="stored"))
    assert engine.aps.get_job("stored", jobstore="jobs") is not None
    engine.aps.resume()
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "stored"))
    assert RUNS == [("stored", "M")]
    assert types_for(events, "stored") == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_REMOVED]


def test_run_now_job_is_not_handed_to_the_pool_without_a_fresh_heartbeat(engine_factory, monkeypatch):
    engine, events = engine_factory()
    renew = engine.membership.renew
    monkeypatch.setattr(engine.membership, "renew", lambda: True)  # the heartbeat thread stalls
    engine.membership.renewed_at -= engine.membership.ttl  # as after a pause
    engine.submit(add(record, job_id="fenced"))
    # Stored where a daemon with a fresh heartbeat will find it, and not run here.
    assert engine.aps.get_job("fenced", jobstore="jobs") is not None
    settled(engine)
    assert RUNS == []
    assert renew()
    engine.aps.wakeup()
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "fenced"))
    assert RUNS == [("fenced", "M")]


def test_run_now_job_refused_by_the_heartbeat_check_is_stored_back(engine_factory, proxy_factory, monkeypatch):
    proxy = proxy_factory(**{"executor.max_workers": 1})
    engine, events = engine_factory(proxy=proxy)
    engine.submit(add(wait_gate, job_id="busy"))
    wait_for(lambda: ("busy", "started") in RUNS)
    engine.submit(add(record, job_id="later"))
    # The heartbeat lapses while "later" waits for the worker: its run is refused
    # and the job goes back to the job store instead of being dropped.
    monkeypatch.setattr(engine.membership, "valid", lambda: False)
    GATE.set()
    wait_for(lambda: engine.aps.get_job("later", jobstore="jobs") is not None)
    assert ("later", "M") not in RUNS
    monkeypatch.undo()
    engine.aps.wakeup()
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "later"))
    assert RUNS.count(("later", "M")) == 1
    assert types_for(events, "later") == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_REMOVED]


def test_redelivered_message_whose_record_was_stored_runs_the_job(engine_factory):
    engine, events = engine_factory()
    request = add(record, job_id="lost-reply")
    # The record's commit went through but its reply was lost: the message
    # comes back, and nothing holds the job yet.
    engine.ledger.add_job(request.to_wire())
    assert engine.submit(request) == "stored"
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "lost-reply"))
    assert RUNS == [("lost-reply", "M")]
    # Once it is handed over, the same message again is a duplicate.
    assert engine.submit(request) == "duplicate"


def test_a_batch_is_carried_out_in_order_with_its_run_now_jobs_stored_together(engine_factory):
    engine, events = engine_factory()
    later = datetime.now(UTC) + timedelta(hours=1)
    bad = JobRequest(
        op="add",
        id="bad",
        queue="jobs",
        func="test_engine:no_such_function",
        trigger=trigger_spec("now", UTC, run_date=datetime.now(UTC)),
    )
    b1 = add(record, job_id="b1")
    batch = [
        b1,
        add(record, job_id="b2"),
        bad,
        add(record, kind="date", job_id="b3", when=later),
        JobRequest(op="cancel", id="b3", queue="jobs"),
        add(record, job_id="b4"),
        b1,
    ]  # b4 with b1's message again: stored one by one
    results = engine.submit_many(batch)
    assert results[:2] == ["stored", "stored"] and results[3:] == ["stored", "canceled", "stored", "duplicate"]
    assert "no_such_function" in str(results[2])
    wait_for(lambda: all(Event.JOB_REMOVED in types_for(events, job) for job in ("b1", "b2", "b4")))
    assert sorted(tag for tag, _ in RUNS) == ["b1", "b2", "b4"]
    assert types_for(events, "b3") == [Event.JOB_CREATED, Event.JOB_CANCELED]
    assert engine.ledger.get_job("bad") is None
    assert [engine.ledger.get_job(job)["status"] for job in ("b1", "b2", "b3", "b4")] == [
        "done",
        "done",
        "canceled",
        "done",
    ]
