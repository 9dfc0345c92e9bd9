"""The per-queue job stores (:mod:`pyramid_scheduler.store.jobstores`): the
ledger row written with the job, jobs that cannot load parked and restored,
the scheduler thread's deferred writes, fencing -- on a real SQLite file and
the real PostgreSQL."""

import pickle
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from apscheduler.job import Job
from apscheduler.jobstores.base import ConflictingIdError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger

from pyramid_scheduler.daemon.catchup import CatchUpJob
from pyramid_scheduler.store.jobstores import QueueJobStore
from pyramid_scheduler.store.memory import MemoryQueueStore
from pyramid_scheduler.store.tables import aps_tablename
from store.helpers import job_request, statement_threads

UTC = timezone.utc
NOOP = "integration.sampleapp.jobs:noop"
LATER = datetime(2030, 1, 1, tzinfo=UTC)


def make_job(scheduler, job_id, when=LATER, func=NOOP):
    return Job(
        scheduler,
        id=job_id,
        func=func,
        trigger=DateTrigger(when),
        executor="default",
        args=[1],
        kwargs={},
        name=job_id,
        misfire_grace_time=None,
        coalesce=True,
        max_instances=1,
        next_run_time=when,
    )


@pytest.fixture
def stores(ledger):
    """make(**options): a started QueueJobStore of queue ``jobs`` on *ledger*,
    and what its callbacks were handed."""
    scheduler = BackgroundScheduler(timezone=UTC)
    made = []
    seen = {"added": [], "parked": []}

    def make(**options):
        store = QueueJobStore(
            ledger,
            "jobs",
            aps_tablename(ledger.prefix, "jobs"),
            on_added=lambda job, request: seen["added"].append((job.id, request["id"])),
            on_parked=lambda *parked: seen["parked"].append(parked),
            allowed=("integration.sampleapp",),
            **options,
        )
        store.start(scheduler, "jobs")
        made.append(store)
        return store

    make.scheduler = scheduler
    make.seen = seen
    yield make
    for store in made:
        store.shutdown()


def store_row(store, job_id, state, when=LATER):
    with store.engine.begin() as conn:
        conn.execute(store.jobs_t.insert().values(id=job_id, next_run_time=when.timestamp(), job_state=state))


def test_a_job_is_stored_with_its_ledger_row_or_not_at_all(stores, ledger):
    store = stores()
    with store.adding(job_request("a1")):
        store.add_job(make_job(stores.scheduler, "a1"))
    assert ledger.get_job("a1")["status"] == "scheduled"
    assert store.lookup_job("a1").func_ref == NOOP
    assert stores.seen["added"] == [("a1", "a1")]
    # The same id again: refused, and its request is not recorded either.
    ledger.set_status("a1", "jobs", "done")
    with pytest.raises(ConflictingIdError), store.adding(job_request("a1", mid="second")):
        store.add_job(make_job(stores.scheduler, "a1"))
    assert ledger.get_job("a1")["mid"] == "m-a1"
    # Re-adding a known job (no request) writes only the job store's row.
    store.remove_job("a1")
    store.add_job(make_job(stores.scheduler, "a1"))
    assert ledger.get_job("a1")["mid"] == "m-a1" and stores.seen["added"] == [("a1", "a1")]


def test_jobs_are_stored_together_with_their_ledger_rows_or_none_is(stores, ledger):
    store = stores(owner="daemon-1")
    scheduler = stores.scheduler
    inserts = statement_threads(store.engine)
    added = [(make_job(scheduler, job_id), job_request(job_id)) for job_id in ("t1", "t2", "t3")]
    assert store.add_jobs(added) is True  # no window loaded yet: the scheduler thread is told
    assert len(inserts) == 2  # one INSERT per table for the three
    assert [ledger.get_job(job_id)["status"] for job_id in ("t1", "t2", "t3")] == ["scheduled"] * 3
    assert stores.seen["added"] == [("t1", "t1"), ("t2", "t2"), ("t3", "t3")]  # CREATED in order
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(store.jobs_t.c.id, store.jobs_t.c.claimed_by)).all()
    assert sorted(rows) == [("t1", "daemon-1"), ("t2", "daemon-1"), ("t3", "daemon-1")]
    assert store.lookup_job("t2").next_run_time == LATER
    # A known id among them: nothing of theirs is stored.
    again = [(make_job(scheduler, "t4"), job_request("t4")), (make_job(scheduler, "t1"), job_request("t1", mid="x"))]
    with pytest.raises(sa.exc.IntegrityError):
        store.add_jobs(again)
    assert ledger.get_job("t4") is None and store.lookup_job("t4") is None
    assert ledger.get_job("t1")["mid"] == "m-t1" and len(stores.seen["added"]) == 3


def test_jobs_added_due_after_the_windows_bound_leave_the_window_alone(stores):
    """The scheduler thread loads its window again at the bound (the first
    next run time after it): a job added due then or later need not make it
    load sooner; one due before must, and so must any while it loads."""
    store = stores()
    scheduler = stores.scheduler

    def add(job_id, when):
        return store.add_jobs([(make_job(scheduler, job_id, when=when), job_request(job_id))])

    assert add("bound", LATER) is True
    jobs, following = store.load_window(LATER - timedelta(days=1))
    assert jobs == [] and following == LATER
    changes = store.changes
    assert add("after", LATER + timedelta(days=1)) is False
    assert add("at", LATER) is False
    assert store.changes == changes
    assert add("before", LATER - timedelta(hours=1)) is True
    assert store.changes == changes + 1
    # A window with nothing after it has no bound: every job added is told.
    store.load_window(LATER + timedelta(days=2))
    assert add("later", LATER + timedelta(days=3)) is True


def test_a_job_that_cannot_load_is_parked_not_deleted_and_restored_under_its_alias(stores, ledger):
    store = stores()
    gone = "integration.sampleapp.jobs:renamed_away"
    ledger.add_job(job_request("p1", func=gone))
    state = make_job(stores.scheduler, "p1").__getstate__()
    store_row(store, "p1", pickle.dumps({**state, "func": gone}), when=datetime(2000, 1, 1, tzinfo=UTC))
    store_row(store, "junk", b"not a pickle", when=datetime(2000, 1, 1, tzinfo=UTC))
    assert store.get_due_jobs(datetime.now(UTC)) == []
    assert ledger.get_job("p1")["status"] == "parked"
    assert sorted(job_id for job_id, _, _ in stores.seen["parked"]) == ["junk", "p1"]
    assert "renamed_away" in ledger.get_job("p1")["error"]
    with store.engine.connect() as conn:  # kept, with no next run time
        rows = conn.execute(sa.select(store.jobs_t.c.id, store.jobs_t.c.next_run_time)).all()
    assert sorted(rows) == [("junk", None), ("p1", None)]
    assert store.get_due_jobs(datetime.now(UTC)) == [] and len(stores.seen["parked"]) == 2  # reported once

    renamed = stores(aliases={gone: NOOP})
    restored, missing = renamed.restore_parked()
    assert [(job.id, job.func_ref) for job in restored] == [("p1", NOOP)]
    assert missing == []  # junk has no ledger row: not the ledger's parked job
    record = ledger.get_job("p1")
    assert (record["status"], record["func"], record["error"]) == ("scheduled", NOOP, None)
    assert renamed.lookup_job("p1").next_run_time is not None


def test_the_scheduler_threads_writes_wait_for_a_flush_that_every_other_read_makes_first(stores, ledger):
    store = stores()
    for job_id in ("d1", "d2"):
        store.add_job(make_job(stores.scheduler, job_id))
    moved = make_job(stores.scheduler, "d1", when=LATER + timedelta(days=1))
    store.defer_update(moved)
    store.defer_remove("d2")
    assert store.pending() == 2
    changes = store.changes
    jobs, following = store.load_window(LATER + timedelta(days=2))  # not flushed: as handed over
    assert [job.id for job in jobs] == ["d1", "d2"] and following is None
    assert [job.id for job in store.get_all_jobs()] == ["d1"]  # flushed, then read
    assert store.pending() == 0 and store.changes == changes
    assert store.lookup_job("d1").next_run_time == LATER + timedelta(days=1)


def test_a_fenced_store_hands_out_no_due_job(stores):
    holding = [True]
    store = stores(fence=lambda: holding[0])
    store.add_job(make_job(stores.scheduler, "f1", when=datetime(2000, 1, 1, tzinfo=UTC)))
    holding[0] = False
    assert store.get_due_jobs(datetime.now(UTC)) == []
    assert store.get_next_run_time() > datetime.now(UTC)  # polled, not spun on
    holding[0] = True
    assert [job.id for job in store.get_due_jobs(datetime.now(UTC))] == ["f1"]


def test_the_memory_store_hands_its_jobs_over_as_catch_up_jobs():
    added = []
    store = MemoryQueueStore(on_added=lambda job, request: added.append((job.id, request["id"])))
    scheduler = BackgroundScheduler(timezone=UTC)
    store.start(scheduler, "jobs")
    with store.adding(job_request("m1")):
        store.add_job(make_job(scheduler, "m1"))
    store.add_job(make_job(scheduler, "m2"))  # no request: re-added, not reported
    assert added == [("m1", "m1")]
    assert {type(job) for job in store.get_all_jobs()} == {CatchUpJob}
