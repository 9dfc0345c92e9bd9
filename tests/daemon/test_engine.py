"""The engine in-process: its start and stop, the run ledger, event order, leases.

Requests are handed to :meth:`Engine.submit` as the consumer would after
decoding; the job store is a real SQLite file (or PostgreSQL).
"""

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from pyramid.config import Configurator
from pyramid.threadlocal import get_current_registry

from conftest import make_settings, wait_for
from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon.engine import Engine
from pyramid_scheduler.daemon.execution import run_key
from pyramid_scheduler.store.records import RunEnd
from pyramid_scheduler.triggers.build import trigger_spec
from pyramid_scheduler.wire.messages import JobRequest

UTC = timezone.utc
RUNS: list = []
GATE = threading.Event()


def record(tag):
    RUNS.append((tag, get_current_registry().settings.get("marker")))
    return {"tag": tag}


def fail(tag):
    RUNS.append((tag, None))
    raise RuntimeError(f"failing on purpose: {tag}")


def wait_gate(tag):
    RUNS.append((tag, "started"))
    GATE.wait(10)
    return tag


def exits(tag):
    raise SystemExit(3)


@pytest.fixture
def proxy_factory(tmp_var, store_kind, drop_tables):
    made = []
    settings = {**make_settings(tmp_var, store=store_kind), "marker": "M"}
    drop_tables.append((settings["scheduler.jobstore.url"], settings["scheduler.jobstore.tablename_prefix"]))

    def make(**extra):
        with Configurator(settings={**settings, **{f"scheduler.{k}": str(v) for k, v in extra.items()}}) as config:
            config.include("pyramid_scheduler")
        made.append(config.registry.scheduler)
        return config.registry.scheduler

    RUNS.clear()
    GATE.clear()
    yield make
    GATE.set()
    for proxy in made:
        proxy.close()


@pytest.fixture
def engine_factory(proxy_factory):
    engines = []

    def make(proxy=None, start=True, **extra):
        proxy = proxy or proxy_factory(**extra)
        engine = Engine(proxy)
        events = []
        proxy.add_listener(events.append)
        if start:
            engine.join()
            engine.start()
        engines.append(engine)
        return engine, events

    yield make
    for engine in engines:
        engine.stop(timeout=2)


def add(func, kind="now", when=None, job_id=None, queue="jobs", **fields):
    when = when or datetime.now(UTC)
    spec = (
        trigger_spec(kind, UTC, run_date=when)
        if kind in ("now", "date")
        else trigger_spec(kind, UTC, start_date=when, **fields)
    )
    ref = f"test_engine:{func.__name__}"
    return JobRequest(
        op="add", id=job_id or f"j{time.time_ns()}", queue=queue, func=ref, args=[job_id or "x"], trigger=spec
    )


def types_for(events, job_id):
    return [e.type for e in events if e.get("job_id") == job_id]


def settled(engine):
    """Wait until the scheduler thread has looked at the due jobs twice more
    and no run is pending or going: what was going to run by now has run."""
    rounds = engine.aps.rounds

    def looked_again():
        engine.aps.wakeup()  # it sleeps until the next due job otherwise
        return engine.aps.rounds >= rounds + 2 and not engine.runner.pending and not engine.running_count()

    wait_for(looked_again)


def test_run_now_job_runs_with_registry_and_events_in_order(engine_factory):
    engine, events = engine_factory()
    request = add(record, job_id="a1")
    assert engine.submit(request) == "stored"
    wait_for(lambda: len(types_for(events, "a1")) == 3)
    assert RUNS == [("a1", "M")]
    assert types_for(events, "a1") == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_REMOVED]
    executed = [e for e in events if e.type == Event.JOB_EXECUTED][0]
    assert executed.retval == {"tag": "a1"}
    assert executed.run_key.startswith("a1@")
    record_ = engine.ledger.get_job("a1")
    assert record_["status"] == "done" and record_["runs"] == 1


def test_failing_job_and_sys_exit_are_recorded_not_fatal(engine_factory):
    engine, events = engine_factory()
    engine.submit(add(fail, job_id="f1"))
    engine.submit(add(exits, job_id="f2"))
    engine.submit(add(record, job_id="ok"))
    wait_for(lambda: all(len(types_for(events, j)) == 3 for j in ("f1", "f2", "ok")))
    assert types_for(events, "f1") == [Event.JOB_CREATED, Event.JOB_ERROR, Event.JOB_REMOVED]
    assert types_for(events, "f2") == [Event.JOB_CREATED, Event.JOB_ERROR, Event.JOB_REMOVED]
    error = [e for e in events if e.type == Event.JOB_ERROR and e.job_id == "f1"][0]
    assert "failing on purpose" in error.traceback
    assert engine.ledger.get_job("f1")["status"] == "failed"
    assert "SystemExit" in engine.ledger.get_job("f2")["error"]
    assert engine.ledger.get_job("ok")["status"] == "done"


def test_cancel_during_a_run_waits_for_the_run_event(engine_factory):
    engine, events = engine_factory()
    # First run in 0.3 s, the next in an hour: none falls due while the gate holds it.
    engine.submit(
        add(wait_gate, kind="interval", job_id="c1", seconds=3600, when=datetime.now(UTC) + timedelta(seconds=0.3))
    )
    wait_for(lambda: ("c1", "started") in RUNS)
    engine.submit(JobRequest(op="cancel", id="c1", queue="jobs"))
    assert engine.ledger.get_job("c1")["status"] == "canceled"
    assert Event.JOB_CANCELED not in types_for(events, "c1")
    GATE.set()
    wait_for(lambda: Event.JOB_CANCELED in types_for(events, "c1"))
    assert types_for(events, "c1") == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_CANCELED]
    assert engine.aps.get_job("c1") is None
    assert engine.ledger.get_job("c1")["status"] == "canceled"
    assert engine.submit(JobRequest(op="cancel", id="c1", queue="jobs")) == "cancel-ignored"


def test_a_canceled_id_reused_gets_its_full_event_sequence(engine_factory):
    engine, events = engine_factory()
    engine.submit(add(record, kind="date", job_id="r1", when=datetime.now(UTC) + timedelta(hours=1)))
    assert engine.submit(JobRequest(op="cancel", id="r1", queue="jobs")) == "canceled"
    assert engine.submit(add(record, job_id="r1")) == "stored"
    wait_for(
        lambda: types_for(events, "r1").count(Event.JOB_CREATED) == 2 and Event.JOB_REMOVED in types_for(events, "r1")
    )
    assert types_for(events, "r1") == [
        Event.JOB_CREATED,
        Event.JOB_CANCELED,
        Event.JOB_CREATED,
        Event.JOB_EXECUTED,
        Event.JOB_REMOVED,
    ]


def test_late_date_job_is_missed_visibly(engine_factory):
    engine, events = engine_factory(misfire_grace_time=1)
    engine.submit(add(record, kind="date", job_id="late", when=datetime.now(UTC) - timedelta(minutes=5)))
    engine.submit(add(record, kind="date", job_id="recent", when=datetime.now(UTC) - timedelta(seconds=0.2)))
    wait_for(lambda: len(types_for(events, "late")) == 3 and len(types_for(events, "recent")) == 3)
    assert types_for(events, "late") == [Event.JOB_CREATED, Event.JOB_MISSED, Event.JOB_REMOVED]
    missed = [e for e in events if e.type == Event.JOB_MISSED][0]
    assert "misfire grace" in missed.reason
    assert engine.ledger.get_job("late")["status"] == "missed"
    assert ("late", "M") not in RUNS and ("recent", "M") in RUNS


def test_two_engines_both_run_jobs_and_one_holds_the_lease(engine_factory, proxy_factory):
    """Every daemon of a queue executes; one at a time holds the lease and
    does the single-owner work, and another takes it once it is released."""
    proxy = proxy_factory()
    first, _ = engine_factory(proxy=proxy)
    second, _ = engine_factory(proxy=proxy)
    assert first.coordinating and not second.coordinating
    assert first.lease_valid() and second.lease_valid()
    assert first.membership.live() == {first.owner, second.owner}
    first.submit(add(record, job_id="on-first", args=["on-first"]))
    second.submit(add(record, job_id="on-second", args=["on-second"]))
    wait_for(lambda: all(first.ledger.list_runs(job_id, "done") for job_id in ("on-first", "on-second")))
    assert sorted(RUNS) == [("on-first", "M"), ("on-second", "M")]
    runs = {job_id: first.ledger.list_runs(job_id, "done", 1)[0]["owner"] for job_id in ("on-first", "on-second")}
    assert runs == {"on-first": first.owner, "on-second": second.owner}
    epoch = first.lease.epochs["jobs"]
    first.stop(timeout=1)  # leaves and releases the lease ...
    assert second.membership.live() == {second.owner}
    wait_for(lambda: second.coordinating, timeout=5)  # ... which the other takes at its next heartbeat
    assert second.lease.epochs["jobs"] > epoch


def test_async_job_has_no_deadline(engine_factory):
    engine, events = engine_factory(misfire_grace_time=1)
    request = add(record, job_id="slow-daemon", when=datetime.now(UTC) - timedelta(hours=2))
    engine.submit(request)
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "slow-daemon"))
    assert types_for(events, "slow-daemon") == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_REMOVED]


def late_interval(job_id, sent_ago, end_ago, seconds=1):
    """An interval job accepted *sent_ago* seconds ago whose schedule ended
    *end_ago* seconds ago: the daemon reads it only now."""
    sent = datetime.now(UTC) - timedelta(seconds=sent_ago)
    spec = trigger_spec("interval", UTC, end_date=sent + timedelta(seconds=sent_ago - end_ago), seconds=seconds)
    return JobRequest(
        op="add",
        id=job_id,
        queue="jobs",
        func="test_engine:record",
        args=[job_id],
        trigger=spec,
        sent_at=sent.isoformat(),
    )


def test_recurring_job_read_after_its_end_runs_late_or_is_missed(engine_factory):
    """A message that waited on the broker past its schedule's end is neither
    stored without a next run (forever 'scheduled') nor dropped; the fire
    times it waited through are each recorded missed (catch_up 'skip')."""
    engine, events = engine_factory(misfire_grace_time=60)
    engine.submit(late_interval("within-grace", sent_ago=10, end_ago=5))
    engine.submit(late_interval("past-grace", sent_ago=600, end_ago=500))
    wait_for(
        lambda: (
            Event.JOB_REMOVED in types_for(events, "within-grace")
            and Event.JOB_REMOVED in types_for(events, "past-grace")
        )
    )
    # Fire times 1..5 s after acceptance: the last runs, the 4 before it are coalesced.
    assert types_for(events, "within-grace") == [
        Event.JOB_CREATED,
        *[Event.JOB_MISSED] * 4,
        Event.JOB_EXECUTED,
        Event.JOB_REMOVED,
    ]
    assert engine.ledger.get_job("within-grace")["status"] == "done"
    assert types_for(events, "past-grace") == [Event.JOB_CREATED, *[Event.JOB_MISSED] * 100, Event.JOB_REMOVED]
    assert len(engine.ledger.list_runs("past-grace", "missed", 1000)) == 100
    assert engine.ledger.get_job("past-grace")["status"] == "missed"


def test_a_daemon_whose_heartbeat_lapsed_takes_no_due_job_and_stops(engine_factory, proxy_factory):
    """Fencing: a daemon paused past its heartbeat is dead to the others;
    resumed, it takes no due job from the store (it holds its claim, but may
    not use it), finds its row expired at its next renewal and stops, and
    another daemon runs the job it had stored."""
    proxy = proxy_factory()
    old, _ = engine_factory(proxy=proxy)
    new, _ = engine_factory(proxy=proxy, start=False)
    daemons = old.ledger.daemons
    with old.ledger.engine.begin() as conn:  # the old daemon's heartbeat expires ...
        conn.execute(daemons.update().where(daemons.c.owner == old.owner).values(expires_at=0.0))
    old.membership.renewed_at -= old.membership.ttl  # ... while it was paused.
    old.submit(add(record, kind="date", job_id="fenced", when=datetime.now(UTC)))
    assert old.lease_lost.wait(5)  # its next renewal finds its row expired
    assert not old.membership.renew()  # for good
    assert ("fenced", "M") not in RUNS
    assert old.stores["jobs"].lookup_job("fenced") is not None
    assert old.ledger.get_job("fenced")["status"] == "scheduled"
    new.join()
    new.start()
    wait_for(lambda: old.ledger.list_runs("fenced", "done"))
    assert RUNS == [("fenced", "M")]
    assert new.ledger.list_runs("fenced", "done", 1)[0]["owner"] == new.owner


def test_last_run_blocked_by_a_running_one_closes_the_job(engine_factory):
    """max_instances=1 and the last fire time comes while the previous run is
    still going: that run is missed, the job ends 'missed', and REMOVED comes
    after the running run's EXECUTED."""
    engine, events = engine_factory()
    now = datetime.now(UTC)
    engine.submit(
        add(
            wait_gate,
            kind="interval",
            job_id="blocked",
            when=now - timedelta(seconds=0.4),
            seconds=0.5,
            end_date=now + timedelta(seconds=0.7),
        )
    )
    wait_for(lambda: Event.JOB_MISSED in types_for(events, "blocked"))
    assert Event.JOB_REMOVED not in types_for(events, "blocked")
    GATE.set()
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "blocked"))
    assert types_for(events, "blocked") == [Event.JOB_CREATED, Event.JOB_MISSED, Event.JOB_EXECUTED, Event.JOB_REMOVED]
    assert engine.ledger.get_job("blocked")["status"] == "missed"


def test_a_last_run_already_recorded_closes_the_job_without_running(engine_factory):
    """As after a crash between recording the last run and closing its job:
    the run is not run again, and the job ends with that run's outcome."""
    engine, events = engine_factory()
    when = datetime.now(UTC) + timedelta(seconds=1)
    engine.submit(add(record, kind="date", job_id="closed", when=when))
    engine.ledger.finish_run(
        RunEnd(
            "closed",
            run_key("closed", when),
            "missed",
            False,
            error="earlier daemon",
            scheduled_at=when.timestamp(),
            queue="jobs",
            owner="earlier",
        )
    )
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "closed"))
    assert types_for(events, "closed") == [Event.JOB_CREATED, Event.JOB_REMOVED]
    assert engine.ledger.get_job("closed")["status"] == "missed"
    assert ("closed", "M") not in RUNS


def test_many_runs_recorded_through_the_group_commit_are_each_recorded_once(engine_factory):
    engine, events = engine_factory()
    ids = [f"g{i}" for i in range(150)]
    assert set(engine.submit_many([add(record, job_id=job) for job in ids])) == {"stored"}
    wait_for(lambda: all(Event.JOB_REMOVED in types_for(events, job) for job in ids), timeout=60)
    for job in ids:
        record_ = engine.ledger.get_job(job)
        assert (record_["status"], record_["runs"]) == ("done", 1)
        assert [run["status"] for run in engine.ledger.list_runs(job)] == ["done"]
