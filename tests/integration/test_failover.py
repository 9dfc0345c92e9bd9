"""Daemons that die: stored jobs survive ``kill -9``, and a standby daemon
takes over the queue from a dead one."""

from __future__ import annotations

import signal
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from integration.conftest import DEADLINE, wait_until
from integration.sampleapp import jobs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEASE_TTL = 3.0  # conftest.make_settings


def tag(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def test_stored_date_job_survives_kill_9_and_runs_once(harness):
    proxy = harness.proxy()
    first = harness.start()
    harness.wait_active(proxy, first)
    date_id = tag("date")
    run_date = datetime.now(timezone.utc) + timedelta(seconds=4)
    proxy.add_date_job(jobs.record, run_date, args=[harness.oracle, date_id], id=date_id)
    harness.wait_job(proxy, date_id, {"scheduled"}, alive=(first,))

    first.kill()
    assert harness.runs(date_id) == []
    second = harness.start()
    record = harness.wait_job(proxy, date_id, {"done"}, alive=(second,))
    assert record["runs"] == 1

    # Exactly once: a job sent after it, and run after it, finds one run only.
    after_id = tag("after")
    proxy.add_async_job(jobs.record, args=[harness.oracle, after_id], id=after_id)
    harness.wait_job(proxy, after_id, {"done"}, alive=(second,))
    (run,) = harness.runs(date_id)
    assert run["pid"] == second.pid
    assert run["at"] >= run_date.timestamp() - 0.05
    assert proxy.get_job(date_id)["runs"] == 1


def test_standby_takes_over_from_a_killed_daemon(harness):
    proxy = harness.proxy()
    active = harness.start()
    harness.wait_active(proxy, active)
    standby = harness.start()
    harness.wait_log(standby, "another daemon runs queues jobs; standing by")

    first = [tag("first") for _ in range(5)]
    for job_id in first:
        proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id)
    for job_id in first:
        harness.wait_job(proxy, job_id, {"done"}, alive=(active, standby))
    assert {run["pid"] for job_id in first for run in harness.runs(job_id)} == {active.pid}
    assert "running queues" not in standby.log()  # it never started scheduling

    active.kill()
    then = [tag("then") for _ in range(3)]
    for job_id in then:
        proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id)
    for job_id in then:
        harness.wait_job(proxy, job_id, {"done"}, timeout=LEASE_TTL * 2 + DEADLINE, alive=(standby,))
    assert {run["pid"] for job_id in then for run in harness.runs(job_id)} == {standby.pid}
    harness.wait_active(proxy, standby)
    assert "lease on queues jobs acquired; taking over" in standby.log()
    # Each job ran once, all told.
    assert sorted(run["tag"] for run in harness.runs()) == sorted(first + then)


def test_standby_takes_over_from_a_stopped_daemon_which_then_exits(make_harness):
    """A leader that is paused (SIGSTOP: its process still exists) loses its
    lease once it expires; resumed, it finds the lease gone and exits 3
    without running anything.

    On Redis and PostgreSQL: with SQLite files, a process stopped in the middle
    of a write transaction holds the file's lock until it is resumed, so the
    producer (broker file) or the standby (job-store file) would wait for it."""
    harness = make_harness(broker="redis", store="postgresql")
    proxy = harness.proxy()
    active = harness.start()
    harness.wait_active(proxy, active)
    standby = harness.start()
    harness.wait_log(standby, "standing by")

    active.send(signal.SIGSTOP)
    stopped_at = time.time()
    job_id = tag("during")
    proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id)
    harness.wait_job(proxy, job_id, {"done"}, timeout=LEASE_TTL * 2 + DEADLINE, alive=(standby,))
    (run,) = harness.runs(job_id)
    assert run["pid"] == standby.pid
    assert run["at"] >= stopped_at + LEASE_TTL - 0.5  # it waited for the lease to expire

    active.send(signal.SIGCONT)
    assert active.wait() == 3, active.log()
    assert "lost the lease on queues jobs to another daemon; stopping" in active.log()
    harness.wait_active(proxy, standby)
    assert {run["pid"] for run in harness.runs()} == {standby.pid}


def test_resumed_former_leader_does_not_lose_a_due_job(harness):
    """Fencing must cover the job store, not just the run: a paused leader
    that resumes after losing its lease must leave due jobs to the new one."""
    proxy = harness.proxy()
    old = harness.start()
    harness.wait_active(proxy, old)
    new = harness.start()
    harness.wait_log(new, "standing by")

    # The old leader stores a date job, then is paused before it is due.
    date_id = tag("date")
    run_date = time.time() + 2 * LEASE_TTL
    proxy.add_date_job(jobs.record, run_date, args=[harness.oracle, date_id], id=date_id)
    harness.wait_job(proxy, date_id, {"scheduled"}, alive=(old,))
    old.send(signal.SIGSTOP)
    # The new leader takes over and loads the job; it is paused too, just
    # before the job comes due.
    harness.wait_active(proxy, new, timeout=LEASE_TTL * 2 + DEADLINE)
    wait_until(lambda: time.time() > run_date - 0.5, "the job to come nearly due")
    new.send(signal.SIGSTOP)
    wait_until(lambda: time.time() > run_date + 0.5, "the job to be due")
    # The old leader wakes first: its lease is gone, so it must not touch the job.
    old.send(signal.SIGCONT)
    assert old.wait() == 3, old.log()
    new.send(signal.SIGCONT)

    record = harness.wait_job(proxy, date_id, {"done", "failed", "missed"}, timeout=15, alive=(new,))
    assert record["status"] == "done"
    assert [run["pid"] for run in harness.runs(date_id)] == [new.pid]
