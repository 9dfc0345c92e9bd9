"""The ledger's queries (:mod:`pyramid_scheduler.store.ledger`) and its tables
(:mod:`pyramid_scheduler.store.tables`), on a real SQLite file and the real
PostgreSQL."""

import json

import pytest
import sqlalchemy as sa
from apscheduler.jobstores.base import ConflictingIdError

from pyramid_scheduler.store.ledger import JobRow
from pyramid_scheduler.store.records import RunEnd, RunStart
from store.helpers import job_request


def test_a_job_is_recorded_once_and_a_finished_jobs_id_can_be_reused(ledger):
    ledger.add_job(job_request("a1"))
    with pytest.raises(ConflictingIdError):  # live: the same id again is refused
        ledger.add_job(job_request("a1", mid="other"))
    ledger.set_status("a1", "jobs", "done")
    with pytest.raises(ConflictingIdError):  # the very message again: a duplicate
        ledger.add_job(job_request("a1"))
    ledger.add_job(job_request("a1", mid="again"))  # a new request for a finished id
    record = ledger.get_job("a1")
    assert (record["status"], record["mid"], json.loads(record["request"])["mid"]) == ("scheduled", "again", "again")


def test_start_run_starts_a_new_run_once_and_never_for_a_canceled_job(ledger):
    for job in ("s1", "s2"):
        ledger.add_job(job_request(job))
    assert ledger.start_run(RunStart("s1", "jobs", "s1@1", 1.0, "me")) == "start"
    assert ledger.get_job("s1")["status"] == "running"
    assert [(run["run_key"], run["status"], run["owner"]) for run in ledger.list_runs("s1")] == [
        ("s1@1", "started", "me")
    ]
    assert ledger.start_run(RunStart("s1", "jobs", "s1@1", 1.0, "other")) == "started"  # known: not started again
    ledger.set_status("s2", "jobs", "canceled")
    assert ledger.start_run(RunStart("s2", "jobs", "s2@1", 1.0, "me")) == "canceled"
    assert ledger.list_runs("s2") == [] and ledger.get_job("s2")["status"] == "canceled"


def test_finish_run_records_the_run_of_a_job_canceled_while_it_ran(ledger):
    for job in ("f1", "f2"):
        ledger.add_job(job_request(job))
        assert ledger.start_run(RunStart(job, "jobs", f"{job}@1", 1.0, "me")) == "start"
    ledger.set_status("f2", "jobs", "canceled")
    assert ledger.finish_run(RunEnd("f1", "f1@1", "done", True, result=[1])) is True
    assert ledger.finish_run(RunEnd("f2", "f2@1", "done", True, result=[2])) is False
    f1, f2 = ledger.get_job("f1"), ledger.get_job("f2")
    assert (f1["status"], f1["runs"], f1["result"]) == ("done", 1, "[1]")
    assert (f2["status"], f2["runs"], f2["result"]) == ("canceled", 1, "[2]")
    assert [run["status"] for run in ledger.list_runs("f2")] == ["done"]
    # A run never started (missed): its row is made by the end.
    missed = RunEnd("f1", "f1@2", "missed", True, error="late", scheduled_at=2.0, queue="jobs", owner="me")
    assert ledger.finish_run(missed) is False
    assert [(run["run_key"], run["status"]) for run in ledger.list_runs("f1")] == [("f1@1", "done"), ("f1@2", "missed")]


def test_a_result_that_is_not_json_is_kept_as_its_repr(ledger):
    ledger.add_job(job_request("x1"))
    ledger.start_run(RunStart("x1", "jobs", "x1@1", 1.0, "me"))
    assert ledger.finish_run(RunEnd("x1", "x1@1", "done", True, result={1, 2})) is True
    assert json.loads(ledger.get_job("x1")["result"]) == repr({1, 2})


def test_a_job_that_cannot_load_is_parked_then_scheduled_again_under_its_new_name(ledger):
    aps = sa.Table(
        f"{ledger.prefix}aps_jobs",
        sa.MetaData(),
        sa.Column("id", sa.String(200)),
        sa.Column("job_state", sa.LargeBinary),
    )
    aps.create(ledger.engine)
    for job in ("p1", "p2"):
        ledger.add_job(job_request(job))
    with ledger.engine.begin() as conn:
        conn.execute(aps.insert().values(id="p1", job_state=b"state"))
        assert ledger.park(conn, "p1", "cannot load: gone") is True
        assert ledger.park(conn, "p1", "cannot load: gone") is False  # parked once
        assert ledger.park(conn, "p2", "cannot load: gone") is True
    parked = {row["id"]: row for row in ledger.parked("jobs", aps)}
    assert {job: (row["job_state"], row["error"]) for job, row in parked.items()} == {
        "p1": (b"state", "cannot load: gone"),
        "p2": (None, "cannot load: gone"),  # no stored job: scheduled again from its request
    }
    assert json.loads(parked["p2"]["request"])["id"] == "p2"
    with ledger.engine.begin() as conn:
        ledger.unpark(conn, "p1", "integration.sampleapp.jobs:noop")
    record = ledger.get_job("p1")
    assert (record["status"], record["func"], record["error"]) == ("scheduled", "integration.sampleapp.jobs:noop", None)
    assert [row["id"] for row in ledger.parked("jobs", aps)] == ["p2"]


def test_declared_jobs_are_found_by_id_or_by_their_mark_and_redeclared(ledger):
    ledger.add_job(job_request("d1", mid="declared:1"))
    ledger.add_job(job_request("d2", mid="declared:2"))
    ledger.add_job(job_request("d3", queue="other", mid="declared:3"))
    ledger.add_job(job_request("plain"))
    rows = ledger.declared(["plain"], "declared:", ("jobs",))
    assert sorted(rows) == [
        JobRow("d1", "jobs", "declared:1", "scheduled", json.dumps(job_request("d1", mid="declared:1"))),
        JobRow("d2", "jobs", "declared:2", "scheduled", json.dumps(job_request("d2", mid="declared:2"))),
        JobRow("plain", "jobs", "m-plain", "scheduled", json.dumps(job_request("plain"))),
    ]
    ledger.set_status("d1", "jobs", "paused")
    changed = job_request(
        "d1", mid="declared:1b", func="integration.sampleapp.jobs:other", trigger={"type": "interval"}
    )
    ledger.redeclare(changed)
    record = ledger.get_job("d1")
    assert (record["status"], record["mid"], record["func"], record["kind"]) == (
        "scheduled",
        "declared:1b",
        "integration.sampleapp.jobs:other",
        "interval",
    )
    assert json.loads(record["request"]) == changed


def test_purge_forgets_finished_jobs_and_their_runs_but_keeps_live_and_parked_ones(ledger):
    for job in ("old", "live", "parked"):
        ledger.add_job(job_request(job))
        ledger.start_run(RunStart(job, "jobs", f"{job}@1", 1.0, "me"))
    ledger.finish_run(RunEnd("old", "old@1", "done", True))
    ledger.set_status("parked", "jobs", "parked")
    ledger.add_job(job_request("ttl", options={"ttl": 1000.0}))
    ledger.set_status("ttl", "jobs", "done")
    assert ledger.purge(older_than=ledger.get_job("old")["updated_at"] + 1) == 1
    assert ledger.get_job("old") is None and ledger.list_runs("old") == []
    assert [ledger.get_job(job)["status"] for job in ("live", "parked", "ttl")] == ["running", "parked", "done"]
