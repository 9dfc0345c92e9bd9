"""The fast lane (:mod:`pyramid_scheduler.daemon.fastlane`): a run-now job
sent with ``durable=False`` is not stored before it runs; its record and its
run's appear after the run, with the events of a stored job, in order.

Requests are handed to a real engine as the consumer would after decoding
(:meth:`Engine.submit`, or :meth:`Engine.submit_many` and then each
:class:`~pyramid_scheduler.daemon.fastlane.Accepted` handed over as the
consumer does once the messages are acked); the job store is a real SQLite
file (or PostgreSQL).
"""

import json
import threading
from dataclasses import replace
from datetime import datetime, timedelta

import test_engine
from test_engine import GATE, RUNS, UTC, add, exits, fail, record, types_for, wait_gate

from conftest import wait_for
from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon.fastlane import Accepted

proxy_factory = test_engine.proxy_factory
engine_factory = test_engine.engine_factory


def fast(func, job_id, **options):
    """A run-now request of *func* sent with ``durable=False``."""
    request = add(func, job_id=job_id, when=options.pop("when", None))
    return replace(request, options={"durable": False, **options})


def test_a_durable_false_job_runs_then_is_recorded_with_the_usual_events(engine_factory):
    engine, events = engine_factory()
    assert engine.submit(fast(wait_gate, "f1")) == "handed"
    wait_for(lambda: ("f1", "started") in RUNS)
    # Running, and nothing stored: not its record, not its run, not in APScheduler's table.
    assert engine.ledger.get_job("f1") is None
    assert engine.ledger.list_runs("f1") == []
    assert engine.aps.get_job("f1") is None
    assert types_for(events, "f1") == [Event.JOB_CREATED]
    GATE.set()
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "f1"))
    assert types_for(events, "f1") == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_REMOVED]
    executed = next(e for e in events if e.type == Event.JOB_EXECUTED)
    row = engine.ledger.get_job("f1")  # written before EXECUTED was emitted
    assert (row["status"], row["runs"], row["kind"], json.loads(row["result"])) == ("done", 1, "now", "f1")
    assert json.loads(row["request"])["options"] == {"durable": False}
    assert row["created_at"] <= row["last_run_at"]
    [run] = engine.ledger.list_runs("f1")
    assert (run["run_key"], run["status"], run["owner"]) == (executed.run_key, "done", engine.owner)
    assert run["started_at"] <= run["finished_at"]


def test_a_failing_durable_false_job_is_recorded_failed_and_not_retried(engine_factory):
    engine, events = engine_factory()
    engine.submit(fast(fail, "bad"))
    engine.submit(fast(exits, "exits"))
    engine.submit(fast(record, "ok"))
    wait_for(lambda: all(Event.JOB_REMOVED in types_for(events, job) for job in ("bad", "exits", "ok")))
    assert types_for(events, "bad") == [Event.JOB_CREATED, Event.JOB_ERROR, Event.JOB_REMOVED]
    error = next(e for e in events if e.type == Event.JOB_ERROR and e.job_id == "bad")
    assert "failing on purpose" in error.traceback
    assert (error.attempt, error.will_retry) == (1, False)
    row = engine.ledger.get_job("bad")
    assert (row["status"], row["runs"]) == ("failed", 1)
    assert "failing on purpose" in row["error"]
    assert [run["status"] for run in engine.ledger.list_runs("bad")] == ["failed"]
    assert "SystemExit" in engine.ledger.get_job("exits")["error"]
    assert engine.ledger.get_job("ok")["status"] == "done"
    assert RUNS.count(("bad", None)) == 1


def test_in_a_batch_nothing_is_stored_or_run_before_the_hand_over(engine_factory):
    """The consumer's path: submit_many answers Accepted and writes nothing;
    the job runs only once handed over (after its message is acked)."""
    engine, events = engine_factory()
    durable, quick = add(record, job_id="durable"), fast(record, "quick")
    results = engine.submit_many([durable, quick, quick])
    assert results[0] == "stored"
    assert isinstance(results[1], Accepted) and results[1] == "accepted"
    assert results[2] == "duplicate"  # the same message again (its ack lost) is not run twice
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "durable"))
    assert engine.ledger.get_job("quick") is None
    assert ("quick", "M") not in RUNS and types_for(events, "quick") == []
    assert results[1].hand(lambda: False) == "handed"
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "quick"))
    assert RUNS.count(("quick", "M")) == 1
    assert types_for(events, "quick") == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_REMOVED]
    assert engine.ledger.get_job("quick")["status"] == "done"


def test_a_durable_false_job_waits_for_room_in_the_pool_and_is_never_stored(engine_factory, proxy_factory):
    engine, events = engine_factory(proxy=proxy_factory(**{"executor.max_workers": 1}))
    engine.intake.fast.room = 1  # one batch in the pool fills it
    engine.submit(fast(wait_gate, "busy"))
    wait_for(lambda: ("busy", "started") in RUNS)
    [accepted] = engine.submit_many([fast(record, "waits")])
    handed = threading.Event()
    stop = threading.Event()
    consumer = threading.Thread(target=lambda: (accepted.hand(stop.is_set), handed.set()))
    consumer.start()
    try:
        assert not handed.wait(1.5)  # the consumer waits for room ...
        assert engine.ledger.get_job("waits") is None  # ... with the job nowhere but in memory
        assert engine.aps.get_job("waits") is None
        assert types_for(events, "waits") == []
        GATE.set()
        assert handed.wait(10)
    finally:
        stop.set()
        consumer.join(10)
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "waits"))
    assert RUNS[-1] == ("waits", "M")
    assert engine.ledger.get_job("waits")["status"] == "done"


def test_past_its_misfire_grace_a_durable_false_job_is_recorded_missed(engine_factory):
    engine, events = engine_factory()
    engine.submit(fast(record, "late", when=datetime.now(UTC) - timedelta(minutes=5), misfire_grace_time=1))
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "late"))
    assert types_for(events, "late") == [Event.JOB_CREATED, Event.JOB_MISSED, Event.JOB_REMOVED]
    assert ("late", "M") not in RUNS
    assert engine.ledger.get_job("late")["status"] == "missed"
    assert [run["status"] for run in engine.ledger.list_runs("late")] == ["missed"]


def test_the_id_of_a_finished_job_is_reused_and_a_live_ones_is_not_recorded_over(engine_factory):
    engine, events = engine_factory()
    engine.submit(add(record, job_id="reused"))
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "reused"))
    engine.submit(fast(fail, "reused"))
    wait_for(lambda: types_for(events, "reused").count(Event.JOB_REMOVED) == 2)
    row = engine.ledger.get_job("reused")
    assert (row["status"], json.loads(row["request"])["options"]) == ("failed", {"durable": False})
    assert [run["status"] for run in engine.ledger.list_runs("reused")] == ["failed"]

    later = datetime.now(UTC) + timedelta(hours=1)
    engine.submit(add(record, kind="date", job_id="live", when=later))
    engine.submit(fast(record, "live"))  # runs: nothing read before it does
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "live"))
    assert ("live", "M") in RUNS
    row = engine.ledger.get_job("live")  # the live job keeps its record
    assert (row["status"], row["kind"]) == ("scheduled", "date")
    assert engine.ledger.list_runs("live") == []


def test_without_a_fresh_heartbeat_a_durable_false_job_is_stored_like_any_other(engine_factory, monkeypatch):
    engine, events = engine_factory()
    monkeypatch.setattr(engine.membership, "renew", lambda: True)  # the renewal thread stalls
    engine.membership.renewed_at -= engine.membership.ttl
    assert engine.submit(fast(record, "fenced")) == "stored"
    assert engine.aps.get_job("fenced", jobstore="jobs") is not None
    assert engine.ledger.get_job("fenced")["status"] == "scheduled"


def test_many_durable_false_jobs_are_recorded_through_the_group_commit(engine_factory):
    engine, events = engine_factory()
    ids = [f"q{i}" for i in range(150)]
    for accepted in engine.submit_many([fast(record, job) for job in ids]):
        assert accepted.hand() == "handed"
    wait_for(lambda: all(Event.JOB_REMOVED in types_for(events, job) for job in ids), timeout=60)
    for job in ids:
        row = engine.ledger.get_job(job)
        assert (row["status"], row["runs"]) == ("done", 1)
        assert [run["status"] for run in engine.ledger.list_runs(job)] == ["done"]


def test_a_job_dropped_before_its_hand_over_runs_if_its_message_comes_back(engine_factory):
    """The consumer drops the jobs acked in a batch whose taking failed (the
    ack may not have reached the broker): not run, and not taken for a
    duplicate when their message is delivered again."""
    engine, events = engine_factory()
    request = fast(record, "again")
    [accepted] = engine.submit_many([request])
    accepted.drop()
    [again] = engine.submit_many([request])
    assert isinstance(again, Accepted)
    again.hand()
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "again"))
    assert RUNS == [("again", "M")]
    assert engine.submit_many([request]) == ["duplicate"]
