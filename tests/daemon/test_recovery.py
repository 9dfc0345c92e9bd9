"""Recovery (:mod:`pyramid_scheduler.daemon.recovery`): what a daemon left
unfinished is settled at the next one's start, and parked jobs come back.

Two engines on one real job store (a SQLite file or PostgreSQL): the first
stopped where a crash would leave it, the second started after it.
"""

import sys
import time
from datetime import datetime, timedelta

import sqlalchemy as sa
import test_engine
from test_engine import GATE, RUNS, UTC, add, record, settled, types_for, wait_gate

from conftest import wait_for
from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon.aps import pool_of
from pyramid_scheduler.daemon.execution import run_key
from pyramid_scheduler.store.records import RunStart
from pyramid_scheduler.triggers.build import trigger_spec
from pyramid_scheduler.wire.messages import JobRequest

proxy_factory = test_engine.proxy_factory
engine_factory = test_engine.engine_factory


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
    assert crashed.ledger.start_run(RunStart("i1", "jobs", key, when.timestamp(), crashed.owner)) == "start"
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
