"""The engine in-process: storage, run ledger, event order, recovery, leases.

Requests are handed to :meth:`Engine.submit` as the consumer would after
decoding; the job store is a real SQLite file (or PostgreSQL).
"""

import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from pyramid.config import Configurator
from pyramid.threadlocal import get_current_registry

from conftest import make_settings, wait_for
from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon.aps import pool_of
from pyramid_scheduler.daemon.engine import Engine
from pyramid_scheduler.daemon.execution import run_key
from pyramid_scheduler.store.lease import Lease
from pyramid_scheduler.store.records import RunEnd, RunStart
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
            assert engine.try_acquire()
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


def test_interrupted_run_is_reported_not_rerun(engine_factory, proxy_factory):
    proxy = proxy_factory()
    crashed, _ = engine_factory(proxy=proxy)
    when = datetime.now(UTC) + timedelta(seconds=1)
    crashed.submit(add(record, kind="date", job_id="i1", when=when))
    # What a crash mid-run leaves: APScheduler already removed the date job,
    # the ledger has the run "started" by the dead daemon.
    crashed.aps.pause()
    crashed.aps.remove_job("i1", jobstore="jobs")
    key = run_key("i1", when)
    assert crashed.ledger.start_run(RunStart("i1", "jobs", key, when.timestamp(), "dead-daemon")) == "start"
    crashed.stop(timeout=1)

    engine, events = engine_factory(proxy=proxy)
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "i1"))
    assert types_for(events, "i1") == [Event.JOB_INTERRUPTED, Event.JOB_REMOVED]
    assert engine.ledger.get_job("i1")["status"] == "interrupted"
    assert engine.aps.get_job("i1", jobstore="jobs") is None  # nothing left to run it
    settled(engine)
    assert ("i1", "M") not in RUNS


def test_due_but_never_started_run_runs_after_restart(engine_factory, proxy_factory):
    proxy = proxy_factory()
    crashed, _ = engine_factory(proxy=proxy)
    crashed.aps.pause()
    crashed.submit(add(record, kind="date", job_id="o1", when=datetime.now(UTC)))
    # Submitted and removed by APScheduler, but the daemon died before the run started.
    crashed.aps.remove_job("o1", jobstore="jobs")
    crashed.stop(timeout=1)
    assert RUNS == []

    engine, events = engine_factory(proxy=proxy)
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "o1"))
    assert RUNS == [("o1", "M")]
    assert types_for(events, "o1") == [Event.JOB_EXECUTED, Event.JOB_REMOVED]


def test_run_now_job_waiting_for_a_worker_runs_after_a_restart(engine_factory, proxy_factory):
    proxy = proxy_factory(**{"executor.max_workers": 1})
    crashed, _ = engine_factory(proxy=proxy)
    crashed.submit(add(wait_gate, job_id="busy"))
    wait_for(lambda: ("busy", "started") in RUNS)
    crashed.submit(add(record, job_id="queued"))
    # A run-now job is stored as its record alone and handed to the pool:
    # APScheduler's table never holds it.
    assert crashed.ledger.get_job("queued")["status"] == "scheduled"
    assert crashed.aps.get_job("queued") is None
    # The daemon goes away while the job waits for the busy worker.
    crashed.stop(timeout=0.2)
    GATE.set()

    engine, events = engine_factory(proxy=proxy)
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "queued"))
    pool_of(crashed.executor).shutdown(wait=True)  # what the stopped daemon's pool had, it has done
    settled(engine)
    assert RUNS.count(("queued", "M")) == 1
    assert types_for(events, "queued") == [Event.JOB_EXECUTED, Event.JOB_REMOVED]
    assert [run["status"] for run in engine.ledger.list_runs("queued")] == ["done"]


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


def test_run_now_job_is_not_handed_to_the_pool_without_a_fresh_lease(engine_factory, monkeypatch):
    engine, events = engine_factory()
    renew = engine.lease.renew
    monkeypatch.setattr(engine.lease, "renew", lambda: True)  # the renewal thread stalls
    engine.lease.renewed_at -= engine.lease.ttl  # as after a pause past the lease
    engine.submit(add(record, job_id="fenced"))
    # Stored where the holder of the lease will find it, and not run here.
    assert engine.aps.get_job("fenced", jobstore="jobs") is not None
    settled(engine)
    assert RUNS == []
    assert renew()
    engine.aps.wakeup()
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "fenced"))
    assert RUNS == [("fenced", "M")]


def test_run_now_job_refused_by_the_lease_check_is_stored_back(engine_factory, proxy_factory, monkeypatch):
    proxy = proxy_factory(**{"executor.max_workers": 1})
    engine, events = engine_factory(proxy=proxy)
    engine.submit(add(wait_gate, job_id="busy"))
    wait_for(lambda: ("busy", "started") in RUNS)
    engine.submit(add(record, job_id="later"))
    # The lease lapses while "later" waits for the worker: its run is refused
    # and the job goes back to the job store instead of being dropped.
    monkeypatch.setattr(engine.lease, "valid", lambda: False)
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


def _park_one(engine_factory, proxy_factory, tmp_path, monkeypatch, job_id):
    """A date job stored, then its function renamed and the daemon restarted:
    (module name, proxy, the restarted engine, its events) once it is parked."""
    name = f"vanishing_{time.time_ns()}"
    module = tmp_path / f"{name}.py"
    module.write_text("def later(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    proxy = proxy_factory()
    first, _ = engine_factory(proxy=proxy)
    request = JobRequest(
        op="add",
        id=job_id,
        queue="jobs",
        func=f"{name}:later",
        args=[1],
        trigger=trigger_spec("date", UTC, run_date=datetime.now(UTC)),
    )
    first.aps.pause()  # stored and due, not yet run
    first.submit(request)
    first.stop(timeout=1)
    module.write_text("def renamed(x):\n    return x * 10\n")
    sys.modules.pop(name, None)

    engine, events = engine_factory(proxy=proxy)
    wait_for(
        lambda: engine.ledger.get_job(job_id)["status"] == "parked" and Event.JOB_PARKED in types_for(events, job_id)
    )
    engine.stop(timeout=1)
    return name, module, proxy, engine, events


def test_unloadable_stored_job_is_parked_not_deleted(engine_factory, proxy_factory, tmp_path, monkeypatch):
    _, _, _, engine, events = _park_one(engine_factory, proxy_factory, tmp_path, monkeypatch, "p1")
    record = engine.ledger.get_job("p1")
    assert "later" in record["error"]
    table = engine.stores["jobs"].jobs_t
    with engine.db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 1
    parked = [e for e in events if e.get("job_id") == "p1"]
    assert [e.type for e in parked] == [Event.JOB_PARKED]  # once, however often it is read
    assert "later" in parked[0].reason and parked[0].job["func"].endswith(":later")
    # Housekeeping keeps a parked job, however old: it is waiting for its code.
    assert engine.ledger.purge(time.time() + 10**6) == 0
    assert engine.ledger.get_job("p1")["status"] == "parked"


def test_parked_job_runs_under_its_alias(engine_factory, proxy_factory, tmp_path, monkeypatch):
    name, _, proxy, _, _ = _park_one(engine_factory, proxy_factory, tmp_path, monkeypatch, "p2")
    aliased = proxy_factory(func_aliases=f"{name}:later = {name}:renamed")
    engine, events = engine_factory(proxy=aliased)
    wait_for(lambda: engine.ledger.get_job("p2")["status"] == "done" and Event.JOB_REMOVED in types_for(events, "p2"))
    record = engine.ledger.get_job("p2")
    assert record["func"] == f"{name}:renamed" and record["result"] == "10" and record["error"] is None
    assert types_for(events, "p2") == [Event.JOB_RESTORED, Event.JOB_EXECUTED, Event.JOB_REMOVED]
    # New messages naming the old function are renamed on arrival too.
    engine.submit(
        JobRequest(
            op="add",
            id="p3",
            queue="jobs",
            func=f"{name}:later",
            args=[2],
            trigger=trigger_spec("now", UTC, run_date=datetime.now(UTC)),
        )
    )
    wait_for(lambda: engine.ledger.get_job("p3")["status"] == "done")
    assert engine.ledger.get_job("p3")["result"] == "20"


def test_parked_job_runs_once_its_code_is_back(engine_factory, proxy_factory, tmp_path, monkeypatch):
    name, module, proxy, _, _ = _park_one(engine_factory, proxy_factory, tmp_path, monkeypatch, "p4")
    module.write_text("def later(x):\n    return x + 1\n")
    sys.modules.pop(name, None)
    engine, events = engine_factory(proxy=proxy)
    wait_for(lambda: engine.ledger.get_job("p4")["status"] == "done" and Event.JOB_REMOVED in types_for(events, "p4"))
    assert engine.ledger.get_job("p4")["result"] == "2"
    assert types_for(events, "p4") == [Event.JOB_RESTORED, Event.JOB_EXECUTED, Event.JOB_REMOVED]


def test_parked_job_can_be_canceled(engine_factory, proxy_factory, tmp_path, monkeypatch):
    _, _, proxy, _, _ = _park_one(engine_factory, proxy_factory, tmp_path, monkeypatch, "p5")
    engine, events = engine_factory(proxy=proxy)
    assert engine.submit(JobRequest(op="cancel", id="p5", queue="jobs")) == "canceled"
    assert engine.ledger.get_job("p5")["status"] == "canceled"
    table = engine.stores["jobs"].jobs_t
    with engine.db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 0
    wait_for(lambda: Event.JOB_CANCELED in types_for(events, "p5"))
    assert types_for(events, "p5")[-1] == Event.JOB_CANCELED


def test_lease_one_holder_takeover_and_fencing(engine_factory, proxy_factory):
    proxy = proxy_factory()
    holder, _ = engine_factory(proxy=proxy)
    standby, _ = engine_factory(proxy=proxy, start=False)
    assert not standby.try_acquire()
    assert holder.lease_valid()
    epoch = holder.lease.epochs["jobs"]

    # A holder that stops renewing loses its lease after the ttl ...
    paused = Lease(holder.ledger, ("jobs",), "paused-daemon", ttl=0.5)
    holder.stop(timeout=1)  # releases
    assert paused.try_acquire()
    assert not standby.try_acquire()
    wait_for(lambda: not paused.valid(), timeout=5)  # ... and knows it (fencing): it runs nothing more
    assert standby.try_acquire()
    assert standby.lease.epochs["jobs"] > epoch
    assert not paused.renew()


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


def test_a_holder_whose_lease_lapsed_takes_no_due_job_from_the_store(engine_factory, proxy_factory):
    """Fencing covers the job store: APScheduler removes a date job as it
    takes it, so a holder that was paused past its lease must leave a due
    job to the daemon that took the lease over."""
    proxy = proxy_factory()
    old, _ = engine_factory(proxy=proxy)
    new, _ = engine_factory(proxy=proxy, start=False)
    leases = old.ledger.leases
    with old.ledger.engine.begin() as conn:  # the old holder's lease expires ...
        conn.execute(leases.update().values(expires_at=0.0))
    assert new.try_acquire()  # ... and is taken over,
    old.lease.renewed_at -= old.lease.ttl  # while the old holder was paused.
    old.submit(add(record, kind="date", job_id="fenced", when=datetime.now(UTC)))
    assert old.lease_lost.wait(5)  # its next renewal finds the lease gone
    assert ("fenced", "M") not in RUNS
    assert old.stores["jobs"].lookup_job("fenced") is not None
    assert old.ledger.get_job("fenced")["status"] == "scheduled"
    new.start()
    wait_for(lambda: old.ledger.get_job("fenced")["status"] == "done")
    assert RUNS == [("fenced", "M")]


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


def test_many_runs_recorded_through_the_group_commit_are_each_recorded_once(engine_factory):
    engine, events = engine_factory()
    ids = [f"g{i}" for i in range(150)]
    assert set(engine.submit_many([add(record, job_id=job) for job in ids])) == {"stored"}
    wait_for(lambda: all(Event.JOB_REMOVED in types_for(events, job) for job in ids), timeout=60)
    for job in ids:
        record_ = engine.ledger.get_job(job)
        assert (record_["status"], record_["runs"]) == ("done", 1)
        assert [run["status"] for run in engine.ledger.list_runs(job)] == ["done"]
