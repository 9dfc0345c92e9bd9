"""The run ledger's writes several at once (:mod:`pyramid_scheduler.store.runwrites`)
and the group commit that hands them in (:mod:`pyramid_scheduler.store.runs`),
on a real SQLite file and the real PostgreSQL."""

import threading

import pytest
import sqlalchemy as sa

from conftest import wait_for
from pyramid_scheduler.store.records import RunAfter, RunEnd, RunStart
from pyramid_scheduler.store.runs import RunWriter
from store.helpers import job_request, statement_threads


def start(job):
    return RunStart(job, "jobs", f"{job}@1", 1.0, "me")


def end(job, status="done", result=None, error=None):
    return RunEnd(job, f"{job}@1", status, True, result=result, error=error)


def test_several_run_starts_and_ends_are_written_together_or_none(ledger):
    for job in ("w1", "w2", "w3"):
        ledger.add_job(job_request(job))
    assert ledger.write_runs([start("w1"), start("w2")], []) == {"w1@1", "w2@1"}
    statements = statement_threads(ledger.engine)
    done = [end(job, result={"ok": 1}) for job in ("w1", "w2")]
    assert ledger.write_runs([start("w3")], done) == {"w1@1", "w2@1", "w3@1"}
    # PostgreSQL: one statement; else a transaction (mark, insert, a runs and a jobs UPDATE).
    assert len(statements) == (1 if ledger.engine.dialect.name == "postgresql" else 4)
    assert [ledger.get_job(job)["status"] for job in ("w1", "w2", "w3")] == ["done", "done", "running"]
    assert [(r["runs"], r["result"]) for r in map(ledger.get_job, ("w1", "w2"))] == [(1, '{"ok": 1}')] * 2
    # w3's run is known: nothing of the batch is written, and one by one says why.
    ledger.add_job(job_request("w4"))
    with pytest.raises(sa.exc.IntegrityError):
        ledger.write_runs([start("w4"), start("w3")], [])
    assert ledger.get_job("w4")["status"] == "scheduled" and ledger.list_runs("w4") == []
    assert ledger.start_run(start("w3")) == "started"
    # w3 canceled while it ran, w5 canceled before its start: not the common
    # case. Each run is written with its job or not at all; theirs are not.
    ledger.add_job(job_request("w5"))
    ledger.set_status("w3", "jobs", "canceled")
    ledger.set_status("w5", "jobs", "canceled")
    written = ledger.write_runs([start("w4"), start("w5")], [end("w3", result={"ok": 1})])
    # PostgreSQL writes what it can (one statement, run by run); else nothing (one transaction).
    postgresql = ledger.engine.dialect.name == "postgresql"
    assert written == ({"w4@1"} if postgresql else set())
    assert ledger.list_runs("w3")[0]["status"] == "started" and ledger.list_runs("w5") == []
    assert (ledger.get_job("w4")["status"], [r["run_key"] for r in ledger.list_runs("w4")]) == (
        ("running", ["w4@1"]) if postgresql else ("scheduled", [])
    )
    assert ledger.write_runs([], []) == set()
    assert ledger.finish_run(end("w3")) is False
    assert ledger.get_job("w3")["status"] == "canceled"
    assert ledger.start_run(start("w5")) == "canceled"


def test_run_ends_alike_are_written_by_one_statement_and_the_rest_each_by_their_own(ledger):
    jobs = ["e1", "e2", "e3", "e4", "e5"]
    for job in jobs:
        ledger.add_job(job_request(job))
    ledger.write_runs([start(job) for job in jobs], [])
    threads = statement_threads(ledger.engine)
    ledger.write_runs([], [end("e1"), end("e2"), end("e3"), end("e4", result=[4]), end("e5", "failed", error="boom")])
    assert len(threads) == 6  # e1-e3 alike; e4; e5: a runs and a jobs UPDATE each
    records = {job: ledger.get_job(job) for job in jobs}
    assert {job: (r["status"], r["runs"], r["result"], r["error"]) for job, r in records.items()} == {
        "e1": ("done", 1, "null", None),
        "e2": ("done", 1, "null", None),
        "e3": ("done", 1, "null", None),
        "e4": ("done", 1, "[4]", None),
        "e5": ("failed", 1, None, "boom"),
    }
    assert [ledger.list_runs(job)[0]["status"] for job in jobs] == ["done"] * 4 + ["failed"]
    assert ledger.list_runs("e5")[0]["error"] == "boom"


def test_ends_with_their_own_results_are_one_statement_on_postgresql(ledger):
    jobs = ["d1", "d2", "d3", "d4"]
    for job in jobs:
        ledger.add_job(job_request(job))
    ledger.write_runs([start(job) for job in jobs], [])
    ledger.set_status("d4", "jobs", "canceled")  # canceled while it ran: written by its own end
    results = {"d1": {"n": 1}, "d2": [2, "two"], "d3": None, "d4": 4}
    statements = statement_threads(ledger.engine)
    written = ledger.write_runs([], [end(job, result=results[job]) for job in jobs])
    postgresql = ledger.engine.dialect.name == "postgresql"
    # PostgreSQL: one statement for all, but the canceled job's; else a transaction per result, all or none.
    assert written == ({"d1@1", "d2@1", "d3@1"} if postgresql else set())
    if postgresql:
        assert len(statements) == 1
        records = {job: ledger.get_job(job) for job in jobs}
        assert {job: (r["status"], r["runs"], r["result"]) for job, r in records.items()} == {
            "d1": ("done", 1, '{"n": 1}'),
            "d2": ("done", 1, '[2, "two"]'),
            "d3": ("done", 1, "null"),
            "d4": ("canceled", 0, None),
        }
        assert [ledger.list_runs(job)[0]["status"] for job in jobs] == ["done"] * 3 + ["started"]


def test_retried_and_interrupted_ends_keep_their_jobs_live_with_the_next_attempt(ledger):
    for job in ("r1", "r2", "r3"):
        ledger.add_job(job_request(job))
    ledger.write_runs([start(job) for job in ("r1", "r2", "r3")], [])
    retried = [RunEnd(job, f"{job}@1", "failed", True, error="boom", retry_at=99.0) for job in ("r1", "r2")]
    cut = RunEnd("r3", "r3@1", "interrupted", False, error="daemon gone")
    assert ledger.write_runs([], [*retried, cut]) == {"r1@1", "r2@1", "r3@1"}
    records = [ledger.get_job(job) for job in ("r1", "r2", "r3")]
    assert [(r["status"], r["attempt"], r["retry_at"], r["runs"], r["error"]) for r in records] == [
        ("scheduled", 2, 99.0, 1, "boom"),
        ("scheduled", 2, 99.0, 1, "boom"),
        ("scheduled", 1, None, 0, "daemon gone"),
    ]
    assert [ledger.list_runs(job)[0]["status"] for job in ("r1", "r2", "r3")] == ["failed", "failed", "interrupted"]


# -- the group commit ----------------------------------------------------------------


def test_run_writer_idle_lets_the_worker_write_its_own_start_and_end(ledger):
    ledger.add_job(job_request("i1"))
    writer = RunWriter(ledger)
    writer.start()
    try:
        threads = statement_threads(ledger.engine)
        assert writer.start_run(start("i1")) == "start"
        assert writer.finish_run(end("i1", result=7)) is True
        assert threads and set(threads) == {threading.current_thread().name}
    finally:
        writer.stop()
    assert (ledger.get_job("i1")["status"], ledger.get_job("i1")["result"]) == ("done", "7")


def through_a_held_writer(ledger, records):
    """Hand *records* (starts and ends, one per job) to a run writer: the
    first written by its own thread and held there until the others are
    queued behind it; return each job's answer and the thread of each
    statement written."""
    writer = RunWriter(ledger)
    writer.start()
    gate, held = threading.Event(), threading.Event()

    def hold(*_):
        if threading.current_thread().name == "holder" and not gate.is_set():
            held.set()
            gate.wait(10)

    threads = statement_threads(ledger.engine)
    sa.event.listen(ledger.engine, "before_cursor_execute", hold)
    answers = {}

    def write(record):
        if isinstance(record, RunStart):
            answers[record.job_id] = writer.start_run(record)
        elif isinstance(record, RunAfter):
            answers[record.job_id] = writer.record_after(record)
        else:
            answers[record.job_id] = writer.finish_run(record)

    try:
        holder = threading.Thread(target=write, args=(records[0],), name="holder")
        holder.start()
        assert held.wait(10)  # the holder writes its own, and is held in it
        others = [threading.Thread(target=write, args=(record,), name=f"w-{record.job_id}") for record in records[1:]]
        for thread in others:
            thread.start()
        wait_for(lambda: writer._pending == len(others))  # all queued behind the holder
        gate.set()
        for thread in (holder, *others):
            thread.join(10)
            assert not thread.is_alive()
    finally:
        sa.event.remove(ledger.engine, "before_cursor_execute", hold)
        writer.stop()
    assert "pscheduler-runs" in threads and not any(name.startswith("w-") for name in threads)
    return answers, threads


def test_run_writer_busy_takes_the_writes_waiting_behind_it_together(ledger):
    jobs = [f"q{i}" for i in range(6)]
    for job in jobs:
        ledger.add_job(job_request(job))
    answers, threads = through_a_held_writer(ledger, [start(job) for job in jobs])
    assert answers == {job: "start" for job in jobs}
    # One batch for all five: one statement on PostgreSQL, else an UPDATE and an INSERT.
    assert threads.count("pscheduler-runs") == (1 if ledger.engine.dialect.name == "postgresql" else 2)
    assert [ledger.get_job(job)["status"] for job in jobs] == ["running"] * len(jobs)


def test_run_writer_writes_what_its_batch_left_one_by_one_with_the_ledgers_answer(ledger):
    jobs = ["k0", "k1", "x1", "k2", "x2", "k3"]
    for job in jobs:
        ledger.add_job(job_request(job))
    for job in ("x1", "x2"):
        ledger.set_status(job, "jobs", "canceled")
    answers, threads = through_a_held_writer(ledger, [start(job) for job in jobs])
    assert answers == {"k0": "start", "k1": "start", "x1": "canceled", "k2": "start", "x2": "canceled", "k3": "start"}
    if ledger.engine.dialect.name == "postgresql":
        # The batch's statement, then each canceled job's own start (which writes nothing).
        assert threads.count("pscheduler-runs") == 3
    assert [ledger.get_job(job)["status"] for job in jobs] == [
        "running",
        "running",
        "canceled",
        "running",
        "canceled",
        "running",
    ]
    assert [len(ledger.list_runs(job)) for job in jobs] == [1, 1, 0, 1, 0, 1]


def test_run_writer_records_a_missed_run_on_the_ledgers_own_path_beside_a_batch(ledger):
    jobs = ["m0", "m1", "m2", "late"]
    for job in jobs:
        ledger.add_job(job_request(job))
    missed = RunEnd("late", "late@1", "missed", True, error="too late", scheduled_at=5.0, queue="jobs", owner="me")
    answers, _ = through_a_held_writer(ledger, [start("m0"), start("m1"), missed, start("m2")])
    assert answers == {"m0": "start", "m1": "start", "late": True, "m2": "start"}
    # A run never started: its end makes its row, and closes its job.
    assert ledger.get_job("late")["status"] == "missed"
    assert [(r["run_key"], r["status"], r["scheduled_at"], r["owner"]) for r in ledger.list_runs("late")] == [
        ("late@1", "missed", 5.0, "me")
    ]
    assert [ledger.get_job(job)["status"] for job in ("m0", "m1", "m2")] == ["running"] * 3


def after(job, status="done", result=None, error=None, **fields):
    request = job_request(job, options={"durable": False}, **fields)
    return RunAfter(request, f"{job}@1", 1.0, 2.0, 3.0, "me", status, result=result, error=error)


def test_records_after_their_runs_are_written_with_the_batch_and_by_their_own_when_they_must(ledger):
    """durable=False jobs: each job's record, final, and its run's, written
    once the run is over; several at once beside the batch's other writes,
    and one by one when an id is known (reused if finished, never over a
    live job or the same message)."""
    for job in ("s0", "s1", "live"):
        ledger.add_job(job_request(job))
    ledger.add_job(job_request("old"))
    ledger.finish_run(RunEnd("old", "old@0", "done", True, scheduled_at=0.5, queue="jobs", owner="me"))
    ledger.add_job(job_request("again"))  # the same message, recorded before
    records = [
        start("s0"),
        after("a1", result={"ok": 1}),
        start("s1"),
        after("a2", "failed", error="boom"),
        after("a3", "missed", error="too late"),
    ]
    answers, threads = through_a_held_writer(ledger, records)
    assert answers == {"s0": "start", "a1": True, "s1": "start", "a2": True, "a3": True}
    rows = {job: ledger.get_job(job) for job in ("a1", "a2", "a3")}
    assert {job: (r["status"], r["runs"], r["result"], r["error"], r["kind"]) for job, r in rows.items()} == {
        "a1": ("done", 1, '{"ok": 1}', None, "now"),
        "a2": ("failed", 1, None, "boom", "now"),
        "a3": ("missed", 0, None, "too late", "now"),
    }
    assert rows["a1"]["created_at"] == 2.0 and rows["a1"]["last_run_at"] >= 3.0
    [run] = ledger.list_runs("a1")
    assert (run["status"], run["scheduled_at"], run["started_at"], run["owner"]) == ("done", 1.0, 3.0, "me")
    assert run["finished_at"] >= 3.0

    answers, _ = through_a_held_writer(ledger, [after("n1"), after("old", mid="m-new"), after("live", mid="m-new")])
    assert answers == {"n1": True, "old": True, "live": False}
    assert (ledger.get_job("old")["status"], [r["run_key"] for r in ledger.list_runs("old")]) == ("done", ["old@1"])
    assert ledger.get_job("live")["status"] == "scheduled" and ledger.list_runs("live") == []
    again = after("again")
    assert ledger.record_after([again]) == set()  # same mid as the stored one: it ran twice
    assert ledger.get_job("again")["status"] == "scheduled"
