"""Intake (:mod:`pyramid_scheduler.daemon.intake`): an add request becomes a
stored job once, whatever the broker redelivers; run-now jobs go to the
workers when they have room and a fresh heartbeat, else to the job store.

Requests are handed to :meth:`Engine.submit` as the consumer would after
decoding; the job store is a real SQLite file (or PostgreSQL).
"""

from datetime import datetime, timedelta

import sqlalchemy as sa
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


def test_a_batch_stores_its_scheduled_jobs_together_and_each_alone_if_an_id_is_known(engine_factory):
    """Date, interval and cron jobs that follow each other in a batch share
    one transaction; with a known id among them they are stored one by one
    (the known one absorbed); one that cannot be scheduled is refused alone;
    each job gets one CREATED, in the batch's order."""
    engine, events = engine_factory()
    later = datetime.now(UTC) + timedelta(hours=1)
    assert engine.submit(add(record, kind="date", job_id="known", when=later)) == "stored"
    bad = JobRequest(
        op="add",
        id="bad",
        queue="jobs",
        func="test_engine:no_such_function",
        trigger=trigger_spec("date", UTC, run_date=later),
    )
    batch = [
        add(record, kind="date", job_id="s1", when=later),
        add(record, kind="interval", job_id="s2", seconds=3600, when=later),
        add(record, kind="cron", job_id="s3", hour=3, when=later),
        add(record, job_id="s4"),
        bad,
        add(record, kind="date", job_id="s5", when=later),
        add(record, kind="date", job_id="known", when=later),
        add(record, kind="date", job_id="s6", when=datetime.now(UTC) + timedelta(seconds=0.2)),
    ]
    aps_inserts = []
    table = engine.stores["jobs"].jobs_t.name

    def seen(conn, cursor, statement, *_):
        if statement.startswith("INSERT") and table in statement.split("(")[0]:
            aps_inserts.append(statement)

    sa.event.listen(engine.db, "before_cursor_execute", seen)
    results = engine.submit_many(batch)
    sa.event.remove(engine.db, "before_cursor_execute", seen)
    assert results[:4] == ["stored"] * 4 and results[5:] == ["stored", "duplicate", "stored"]
    assert "no_such_function" in str(results[4])
    # s1-s3 in one INSERT; s5, known and s6 refused together (by the ledger's
    # INSERT, before this table's), then s5 and s6 stored alone.
    assert len(aps_inserts) == 3
    stored = ["s1", "s2", "s3", "s5", "s6"]
    with engine.db.connect() as conn:
        jobs_t = engine.stores["jobs"].jobs_t
        rows = dict(conn.execute(sa.select(jobs_t.c.id, jobs_t.c.claimed_by)).all())
    # s6 is due at once: on a busy machine it may have run and left the table.
    assert sorted(set(rows) - {"s6"}) == sorted(["known", *stored[:-1]])
    assert {rows[job] for job in stored if job in rows} == {engine.owner}
    assert engine.ledger.get_job("bad") is None
    # The events reach the listener on the event thread.
    wait_for(lambda: all(Event.JOB_REMOVED in types_for(events, job) for job in ("s4", "s6")))
    created = [e.job_id for e in events if e.type == Event.JOB_CREATED]
    assert created == ["known", "s1", "s2", "s3", "s4", "s5", "s6"]
    for job in ("s4", "s6"):
        assert types_for(events, job) == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_REMOVED]
    assert sorted(tag for tag, _ in RUNS) == ["s4", "s6"]
    settled(engine)
    assert engine.submit_many(batch[:1]) == ["duplicate"]  # redelivered later: absorbed by its id


def test_a_job_added_due_before_the_windows_bound_is_heard_of_and_runs(engine_factory):
    """The scheduler thread loads its window again at its bound (the first
    next run time after it) anyway: jobs added due later leave it alone, one
    due before makes it load again."""
    engine, events = engine_factory()
    store = engine.stores["jobs"]
    now = datetime.now(UTC)
    engine.submit_many([add(record, kind="date", job_id="tomorrow", when=now + timedelta(days=1))])
    settled(engine)  # its window is loaded: the bound is tomorrow's job
    engine.aps.pause()  # and stays as loaded
    changes = store.changes
    assert engine.submit_many([add(record, kind="date", job_id="after", when=now + timedelta(days=2))]) == ["stored"]
    assert store.changes == changes
    soon = add(record, kind="date", job_id="soon", when=datetime.now(UTC) + timedelta(seconds=0.3))
    assert engine.submit_many([soon]) == ["stored"]
    assert store.changes == changes + 1
    engine.aps.resume()
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "soon"))
    assert RUNS == [("soon", "M")]
    assert types_for(events, "soon") == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_REMOVED]
