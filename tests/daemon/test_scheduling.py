"""The scheduler thread (:mod:`pyramid_scheduler.daemon.scheduling`) in-process: jobs loaded
ahead of their due time, handed over from memory, their rows written later.

A real engine on a real job store (SQLite file or PostgreSQL), as in
``test_engine.py``; the module's timing constants are widened where a test
needs a job held in memory long enough to act on it.
"""

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
import test_engine
from test_engine import RUNS, add, record, settled, types_for, wait_for

from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon import scheduling as due
from pyramid_scheduler.daemon.execution import run_key
from pyramid_scheduler.wire.messages import JobRequest

UTC = timezone.utc
proxy_factory = test_engine.proxy_factory
engine_factory = test_engine.engine_factory


@pytest.fixture
def long_window(monkeypatch):
    """Load jobs 3 s ahead, waking 2 s before the first one not held."""
    monkeypatch.setattr(due, "LOOKAHEAD", 3.0)
    monkeypatch.setattr(due, "LEAD", 2.0)


def held(engine, job_id):
    window = engine.aps._windows.get("jobs")
    return window is not None and any(job.id == job_id for job in window.jobs)


def rows(engine):
    """The ids in the queue's APScheduler table."""
    table = engine.stores["jobs"].jobs_t
    with engine.db.connect() as conn:
        return set(conn.execute(sa.select(table.c.id)).scalars())


def request(op, job_id):
    return JobRequest(op=op, id=job_id, queue="jobs")


def test_date_jobs_due_close_together_run_once_each_in_due_order(engine_factory):
    engine, events = engine_factory(**{"executor.max_workers": 1})
    start = datetime.now(UTC) + timedelta(seconds=0.5)
    # Due 3 ms apart, four at a time at the very same time; sent latest first.
    due_at = {f"d{i:02d}": start + timedelta(milliseconds=3 * (i // 4)) for i in range(40)}
    ids = sorted(due_at)
    # Held while they are stored: on a loaded machine 40 stores take longer
    # than the lead, and a job stored after it is due would be handed first.
    engine.aps.pause()
    for job_id in reversed(ids):
        engine.submit(add(record, kind="date", job_id=job_id, when=due_at[job_id]))
    engine.aps.resume()
    wait_for(lambda: all(Event.JOB_REMOVED in types_for(events, job_id) for job_id in ids))
    settled(engine)
    ran = [tag for tag, _ in RUNS]
    assert sorted(ran) == ids
    assert [due_at[tag] for tag in ran] == sorted(due_at.values())  # one worker: in the order handed over
    for job_id in ids:
        assert types_for(events, job_id) == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_REMOVED]
        assert engine.ledger.get_job(job_id)["status"] == "done"
    wait_for(lambda: not rows(engine))  # the rows are deleted, in batches
    assert engine.stores["jobs"].pending() == 0


def test_job_canceled_or_paused_after_being_loaded_ahead_does_not_run(engine_factory, long_window):
    engine, events = engine_factory()
    when = datetime.now(UTC) + timedelta(seconds=1.5)
    for job_id in ("gone", "paused", "kept"):
        engine.submit(add(record, kind="date", job_id=job_id, when=when))
    wait_for(lambda: held(engine, "gone") and held(engine, "paused"))
    assert engine.submit(request("cancel", "gone")) == "canceled"
    assert engine.submit(request("pause", "paused")) == "paused"
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "kept"))
    settled(engine)
    assert [tag for tag, _ in RUNS] == ["kept"]
    assert types_for(events, "gone") == [Event.JOB_CREATED, Event.JOB_CANCELED]
    assert engine.ledger.get_job("gone")["status"] == "canceled"
    assert engine.ledger.get_job("paused")["status"] == "paused"
    assert rows(engine) == {"paused"}
    assert engine.submit(request("resume", "paused")) == "resumed"  # late: within its grace, runs now
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "paused"))
    assert [tag for tag, _ in RUNS] == ["kept", "paused"]


def test_job_added_while_others_are_held_runs_on_time(engine_factory, long_window):
    engine, events = engine_factory()
    now = datetime.now(UTC)
    engine.submit(add(record, kind="date", job_id="later", when=now + timedelta(seconds=1.5)))
    wait_for(lambda: held(engine, "later"))
    engine.submit(add(record, kind="date", job_id="sooner", when=now + timedelta(seconds=0.5)))
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "later"))
    assert [tag for tag, _ in RUNS] == ["sooner", "later"]
    for job_id, offset in (("sooner", 0.5), ("later", 1.5)):
        [run] = engine.ledger.list_runs(job_id)
        assert run["started_at"] - (now.timestamp() + offset) < 0.5


def test_recurring_job_in_the_window_runs_at_each_fire_time_and_is_stored_moved_on(engine_factory, long_window):
    engine, events = engine_factory()
    # Half a second apart: on a loaded machine a run may take a quarter of one,
    # and the next fire would find it still running (max_instances).
    start = datetime.now(UTC) + timedelta(seconds=0.3)
    engine.submit(add(record, kind="interval", job_id="tick", when=start, seconds=0.5))
    wait_for(lambda: types_for(events, "tick").count(Event.JOB_EXECUTED) >= 5)
    keys = [run["run_key"] for run in engine.ledger.list_runs("tick")][:5]
    assert keys == [run_key("tick", start + timedelta(seconds=0.5 * i)) for i in range(5)]
    assert Event.JOB_MISSED not in types_for(events, "tick")
    engine.aps.pause()
    store = engine.stores["jobs"]
    store.flush()
    job = store.lookup_job("tick")
    last = max(run["scheduled_at"] for run in engine.ledger.list_runs("tick"))
    assert job.next_run_time.timestamp() == pytest.approx(last + 0.5)


def test_a_holder_whose_lease_lapsed_does_not_hand_over_a_job_it_loaded(engine_factory, long_window):
    engine, events = engine_factory()
    due_at = datetime.now(UTC) + timedelta(seconds=1)
    engine.submit(add(record, kind="date", job_id="fenced", when=due_at))
    wait_for(lambda: held(engine, "fenced"))
    engine.stores["jobs"].fence = lambda: False  # the lease lapses before the job is due
    wait_for(lambda: datetime.now(UTC) > due_at, timeout=5)
    settled(engine)
    assert RUNS == []
    assert rows(engine) == {"fenced"}
    assert engine.ledger.get_job("fenced")["status"] == "scheduled"


@pytest.mark.parametrize("kind", ["date", "interval"])
def test_rows_a_crashed_daemon_did_not_write_are_settled_without_a_second_run(
    engine_factory, proxy_factory, monkeypatch, kind
):
    """A run done, its row not yet written when the daemon died: after the
    restart, past the job's misfire grace, the run is neither run again nor
    recorded missed."""
    monkeypatch.setattr(due, "FLUSH_GAP", 60.0)
    monkeypatch.setattr(due, "FLUSH_MAX_AGE", 60.0)
    proxy = proxy_factory(misfire_grace_time=1)
    crashed, events = engine_factory(proxy=proxy)
    when = datetime.now(UTC) + timedelta(seconds=0.3)
    fields = {"seconds": 3600} if kind == "interval" else {}
    crashed.submit(add(record, kind=kind, job_id="once", when=when, **fields))
    # Due within FLUSH_GAP: the scheduler thread keeps the row of "once" pending.
    crashed.submit(add(record, kind="date", job_id="blocker", when=when + timedelta(seconds=30)))
    wait_for(lambda: Event.JOB_EXECUTED in types_for(events, "once"))
    store = crashed.stores["jobs"]
    assert store.pending() == 1
    store._pending.clear()  # what a kill -9 leaves: the row still due at the run just done
    crashed.stop(timeout=1)
    wait_for(lambda: datetime.now(UTC) > when + timedelta(seconds=1), timeout=5)  # past the misfire grace

    engine, events = engine_factory(proxy=proxy)
    settled(engine)
    assert RUNS.count(("once", "M")) == 1
    assert Event.JOB_MISSED not in types_for(events, "once")
    assert [run["status"] for run in engine.ledger.list_runs("once")] == ["done"]
    if kind == "date":
        assert rows(engine) == {"blocker"}
        assert engine.ledger.get_job("once")["status"] == "done"
    else:
        assert engine.aps.get_job("once", jobstore="jobs").next_run_time == when + timedelta(hours=1)


def test_a_job_changed_by_another_daemon_does_not_run_twice_at_once(proxy_factory, engine_factory):
    """A management request (here a reschedule) consumed by daemon B moves
    the job's claim to B while daemon A still runs it: B does not start the
    job's next fires until A's run ended (``max_instances`` across daemons),
    then runs them itself."""
    proxy = proxy_factory()
    first, _ = engine_factory(proxy)
    second, _ = engine_factory(proxy)
    every = {"kind": "interval", "job_id": "busy", "seconds": 1}
    first.submit(add(test_engine.wait_gate, when=datetime.now(UTC) + timedelta(seconds=0.2), **every))
    wait_for(lambda: ("busy", "started") in RUNS)
    spec = add(test_engine.wait_gate, when=datetime.now(UTC), **every).trigger
    assert second.submit(JobRequest(op="reschedule", id="busy", queue="jobs", trigger=spec)) == "rescheduled"
    # B holds it now, and it is due every second: nothing starts while A's run goes on.
    deadline = datetime.now(UTC) + timedelta(seconds=2.5)
    while datetime.now(UTC) < deadline:
        assert RUNS.count(("busy", "started")) == 1
    test_engine.GATE.set()
    wait_for(lambda: RUNS.count(("busy", "started")) >= 2)
    [started_first, *later] = second.ledger.list_runs("busy")
    assert started_first["owner"] == first.owner
    assert later and {run["owner"] for run in later} == {second.owner}
