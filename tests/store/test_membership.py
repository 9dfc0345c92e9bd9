"""Every daemon executes (:mod:`pyramid_scheduler.store.membership`,
:mod:`pyramid_scheduler.store.claims`): heartbeats, a dead daemon declared
once and for good, claims on the jobs of a queue's table, and runs fenced by
the declaration -- on a real SQLite file and the real PostgreSQL."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from pyramid_scheduler.store import membership as membership_module
from pyramid_scheduler.store.jobstores import QueueJobStore
from pyramid_scheduler.store.membership import Membership
from pyramid_scheduler.store.records import RunStart
from pyramid_scheduler.store.tables import aps_tablename


@pytest.fixture
def clock(monkeypatch):
    """The heartbeats' clock, at 1000.0 until moved (``clock[0] += seconds``)."""
    clock = [1000.0]
    monkeypatch.setattr(membership_module, "now", lambda: clock[0])
    return clock


def daemon(ledger, name, queues=("jobs",)):
    member = Membership(ledger, queues, f"otherhost:1:{name}", ttl=3)
    member.join()
    return member


def test_a_daemon_is_declared_dead_once_its_heartbeat_expired_and_never_renews_again(ledger, clock):
    lead, other = daemon(ledger, "lead"), daemon(ledger, "other")
    assert lead.live() == {lead.owner, other.owner}
    clock[0] += 2
    assert lead.renew() and lead.dead() == []  # other's heartbeat is 2 s old: alive
    clock[0] += 1.5
    assert lead.renew()  # (lead has renewed steadily for 3.5 s: more than a ttl)
    assert lead.dead() == [other.owner]  # 3.5 s: declared dead ...
    assert lead.live() == {lead.owner}
    assert not other.renew()  # ... for good: it must stop
    assert not other.valid()
    lead.forget([other.owner])
    assert [row["owner"] for row in ledger.list_daemons()] == [lead.owner]


def test_a_lone_daemon_cut_off_for_longer_than_its_ttl_carries_on(ledger, clock):
    """No one declared it dead, so no one took anything over: it renews."""
    lone = daemon(ledger, "lone")
    clock[0] += 60
    assert not lone.valid()  # it knows it may not start runs meanwhile ...
    assert lone.renew() and lone.valid()  # ... and carries on once back


def test_after_an_outage_no_one_is_declared_dead_before_the_others_could_renew(ledger, clock):
    """A database outage longer than the ttl expires every heartbeat: the
    first daemon back waits a ttl of steady renewals before declaring anyone."""
    lead, other = daemon(ledger, "lead"), daemon(ledger, "other")
    clock[0] += 10  # the database was away
    assert lead.renew()
    assert lead.dead() == []  # other's heartbeat expired during the outage, as lead's did
    clock[0] += 1
    assert other.renew()  # other is back too
    clock[0] += 2.5
    assert lead.renew() and lead.dead() == []
    for _ in range(2):  # other stops renewing for good; lead goes on
        clock[0] += 2
        assert lead.renew()
    assert lead.dead() == [other.owner]


def test_a_renewal_and_a_declaration_never_both_succeed(ledger, clock):
    lead, other = daemon(ledger, "lead"), daemon(ledger, "other")
    clock[0] += 4
    assert other.renew()  # renewed just before the lease holder looks
    assert lead.dead() == []
    assert other.owner in lead.live()


def test_a_clean_stop_is_known_at_once_and_other_queues_are_not_mine_to_declare(ledger, clock):
    lead = daemon(ledger, "lead", ("jobs",))
    leaving = daemon(ledger, "leaving", ("jobs", "reports"))
    elsewhere = daemon(ledger, "elsewhere", ("reports",))
    leaving.leave()
    clock[0] += 10
    assert lead.dead() == [leaving.owner]  # elsewhere serves none of lead's queues
    assert elsewhere.owner in lead.live()


def test_a_gone_process_of_this_host_is_declared_dead_at_once(ledger):
    import socket

    lead = daemon(ledger, "lead")
    gone = Membership(ledger, ("jobs",), f"{socket.gethostname()}:999999999:gone", ttl=3)
    gone.join()
    assert lead.dead() == [gone.owner]


def store_for(ledger, owner):
    store = QueueJobStore(ledger, "jobs", aps_tablename(ledger.prefix, "jobs"), owner=owner)
    store.jobs_t.create(ledger.engine, checkfirst=True)
    return store


def put_row(store, job_id, when, claimed_by):
    with store.engine.begin() as conn:
        conn.execute(
            store.jobs_t.insert().values(
                id=job_id, next_run_time=when.timestamp(), job_state=pickle.dumps({}), claimed_by=claimed_by
            )
        )


def claimed(store):
    with store.engine.connect() as conn:
        return dict(conn.execute(sa.select(store.jobs_t.c.id, store.jobs_t.c.claimed_by)).all())


def test_a_look_claims_the_due_jobs_no_live_daemon_holds_and_leaves_the_others(ledger):
    mine, theirs = daemon(ledger, "mine"), daemon(ledger, "theirs")
    dead = daemon(ledger, "dead")
    dead.leave()
    store = store_for(ledger, mine.owner)
    now = datetime.now(timezone.utc)
    put_row(store, "free", now, None)
    put_row(store, "of-the-dead", now, dead.owner)
    put_row(store, "theirs", now, theirs.owner)
    put_row(store, "later", now + timedelta(hours=1), None)
    with store.engine.begin() as conn:
        assert store.claims.take_due(conn, now.timestamp() + 1) is False
    assert claimed(store) == {
        "free": mine.owner,
        "of-the-dead": mine.owner,
        "theirs": theirs.owner,  # a live daemon's: left alone
        "later": None,  # not due: claimed when it is, by whoever looks first
    }


def test_writes_back_only_rows_still_held(ledger):
    """A daemon whose job another took over does not write its stale copy back."""
    mine, theirs = daemon(ledger, "mine"), daemon(ledger, "theirs")
    store = store_for(ledger, mine.owner)
    now = datetime.now(timezone.utc)
    put_row(store, "taken", now, theirs.owner)
    store.defer_remove("taken")
    store.flush()
    assert claimed(store) == {"taken": theirs.owner}


def test_a_run_starts_only_while_its_daemon_is_not_declared_dead(ledger):
    alive, dead = daemon(ledger, "alive"), daemon(ledger, "dead")
    ledger.serve_as(alive.owner)
    for job_id in ("a", "b"):
        ledger.add_job(
            {"id": job_id, "queue": "jobs", "func": "m:f", "trigger": {"type": "now"}, "mid": job_id, "args": []}
        )
    dead.leave()
    assert ledger.start_run(RunStart("a", "jobs", "a@1", 1.0, dead.owner)) == "fenced"
    assert ledger.list_runs("a") == []
    assert ledger.start_run(RunStart("b", "jobs", "b@1", 1.0, alive.owner)) == "start"
    assert [run["owner"] for run in ledger.list_runs("b")] == [alive.owner]
    assert ledger.get_job("a")["status"] == "scheduled"


def test_a_queue_table_of_an_earlier_release_gains_the_claim_column(ledger):
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    tablename = aps_tablename(ledger.prefix, "jobs")
    SQLAlchemyJobStore(engine=ledger.engine, tablename=tablename).jobs_t.create(ledger.engine)
    store = QueueJobStore(ledger, "jobs", tablename, owner="otherhost:1:new")
    store.start(None, "jobs")
    with ledger.engine.connect() as conn:
        assert "claimed_by" in {column["name"] for column in sa.inspect(conn).get_columns(tablename)}
