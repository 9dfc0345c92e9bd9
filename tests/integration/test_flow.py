"""Priorities and expiry (docs/flow.rst) with a real ``pscheduler``.

One worker (``executor.max_workers = 1``) is held by a job that hangs until
the test releases it; the jobs sent meanwhile wait for that worker, and the
order in which they start (the oracle's rows, in the order they were
written) is what the test reads: never how long anything took.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from conftest import wait_for
from integration.sampleapp import failing, jobs

pytestmark = pytest.mark.slow


def tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def hold_the_worker(harness, proxy, daemon) -> str:
    """Start a job that hangs until :func:`release`; return its id."""
    hang_id = tag("hang")
    proxy.add_async_job(failing.hangs, args=[harness.oracle, hang_id], id=hang_id)
    harness.wait_runs(hang_id, alive=(daemon,))
    return hang_id


def release(harness) -> None:
    failing.release_file(harness.oracle).write_text("go")


def stored(proxy, job_ids) -> None:
    """Wait until the daemon has stored every job of *job_ids* (and so handed
    it to the worker pool, where it waits for the worker)."""
    wait_for(lambda: all(proxy.get_job(job_id) for job_id in job_ids), timeout=30)
    time.sleep(0.3)  # from the record's commit to the pool: a few statements


@pytest.mark.parametrize("broker", ["sqlite", "rabbitmq"])
def test_the_higher_priority_starts_first(make_harness, broker):
    harness = make_harness(broker, **{"executor.max_workers": "1", "priority.jobs": "3"})
    proxy = harness.proxy()
    daemon = harness.start()
    hold_the_worker(harness, proxy, daemon)

    low = [tag("low") for _ in range(2)]
    default = tag("default")  # the queue's default, 3: between the others
    high = tag("high")
    for job_id in low:
        proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id, priority=1)
    proxy.add_async_job(jobs.record, args=[harness.oracle, default], id=default)
    proxy.add_async_job(jobs.record, args=[harness.oracle, high], id=high, priority=9)
    stored(proxy, [*low, default, high])
    release(harness)

    for job_id in [*low, default, high]:
        harness.wait_job(proxy, job_id, {"done"}, alive=(daemon,))
    order = [run["tag"] for run in harness.runs() if run["tag"] in {*low, default, high}]
    assert order == [high, default, *low]


def test_a_run_that_waited_past_the_aging_goes_first(make_harness):
    harness = make_harness(**{"executor.max_workers": "1", "priority_aging": "3"})
    proxy = harness.proxy()
    daemon = harness.start()
    hold_the_worker(harness, proxy, daemon)

    old, low, high = tag("old"), tag("low"), tag("high")
    proxy.add_async_job(jobs.record, args=[harness.oracle, old], id=old, priority=0)
    stored(proxy, [old])
    time.sleep(3.5)  # the first one has now waited past scheduler.priority_aging
    proxy.add_async_job(jobs.record, args=[harness.oracle, low], id=low, priority=0)
    proxy.add_async_job(jobs.record, args=[harness.oracle, high], id=high, priority=9)
    stored(proxy, [low, high])
    release(harness)

    for job_id in (old, low, high):
        harness.wait_job(proxy, job_id, {"done"}, alive=(daemon,))
    # Aged first; then by priority (first come first served would run low before high).
    assert [run["tag"] for run in harness.runs() if run["tag"] in {old, low, high}] == [old, high, low]


def test_date_jobs_due_together_start_higher_priority_first(make_harness):
    harness = make_harness(**{"executor.max_workers": "1"})
    proxy = harness.proxy()
    daemon = harness.start()
    harness.wait_active(proxy, daemon)
    at = datetime.now(timezone.utc) + timedelta(seconds=3)
    low, high = tag("low"), tag("high")
    proxy.add_date_job(jobs.record, at, args=[harness.oracle, low], id=low, priority=0)
    proxy.add_date_job(jobs.record, at, args=[harness.oracle, high], id=high, priority=9)
    for job_id in (low, high):
        harness.wait_job(proxy, job_id, {"done"}, alive=(daemon,))
    # One worker, free when they fall due: the first handed over starts first.
    assert [run["tag"] for run in harness.runs() if run["tag"] in {low, high}] == [high, low]


def test_priorities_hold_through_kill_9(make_harness):
    # The jobs waiting for the held worker are in no table but the ledger when
    # the daemon dies; the next daemon schedules them again from their
    # records, priorities included, and runs the higher one first.
    harness = make_harness(**{"executor.max_workers": "1"})
    proxy = harness.proxy()
    daemon = harness.start()
    hang_id = hold_the_worker(harness, proxy, daemon)
    low, high = tag("low"), tag("high")
    proxy.add_async_job(jobs.record, args=[harness.oracle, low], id=low, priority=1)
    proxy.add_async_job(jobs.record, args=[harness.oracle, high], id=high, priority=8)
    stored(proxy, [low, high])
    daemon.kill()

    again = harness.start()
    for job_id in (low, high):
        harness.wait_job(proxy, job_id, {"done"}, alive=(again,))
    assert [run["tag"] for run in harness.runs() if run["tag"] in {low, high}] == [high, low]
    assert proxy.get_job(hang_id)["status"] == "interrupted"


@pytest.mark.parametrize("broker", ["sqlite", "redis", "rabbitmq"])
def test_a_run_now_job_behind_a_busy_worker_expires(make_harness, broker):
    harness = make_harness(broker, **{"executor.max_workers": "1"})
    proxy = harness.proxy()
    daemon = harness.start()
    hold_the_worker(harness, proxy, daemon)

    late, patient = tag("late"), tag("patient")
    proxy.add_async_job(jobs.record, args=[harness.oracle, late], id=late, expires=1.0)
    proxy.add_async_job(jobs.record, args=[harness.oracle, patient], id=patient, expires=timedelta(hours=1))
    time.sleep(1.5)  # past the first one's expiry
    release(harness)

    record = harness.wait_job(proxy, late, {"expired"}, alive=(daemon,))
    assert "not started by its expiry" in record["error"]
    assert [run["status"] for run in proxy.get_runs(late)] == ["expired"]
    harness.wait_job(proxy, patient, {"done"}, alive=(daemon,))
    assert harness.runs(late) == []
    assert f"job {late} (queue jobs): run {late}@" in daemon.log()


def test_a_date_job_whose_expiry_passes_while_the_daemon_is_down_expires(harness):
    proxy = harness.proxy()
    daemon = harness.start()
    harness.wait_active(proxy, daemon)
    job_id = tag("date")
    at = datetime.now(timezone.utc) + timedelta(seconds=2)
    proxy.add_date_job(jobs.record, at, args=[harness.oracle, job_id], id=job_id, expires=at + timedelta(seconds=1))
    harness.wait_job(proxy, job_id, {"scheduled"}, alive=(daemon,))
    assert daemon.terminate() == 0
    wait_for(lambda: datetime.now(timezone.utc) > at + timedelta(seconds=1.5), timeout=10)

    again = harness.start()
    record = harness.wait_job(proxy, job_id, {"expired"}, alive=(again,))
    assert record["runs"] == 0 and harness.runs(job_id) == []
    assert [event["type"] for event in harness.events(job_id)][-2:] == ["job.expired", "job.removed"]


def test_a_message_past_its_expiry_is_expired_at_the_door(harness):
    proxy = harness.proxy()
    job_id = tag("door")
    proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id, expires=0.2)
    time.sleep(0.5)  # no daemon yet: the message waits in the broker past its expiry
    daemon = harness.start()
    record = harness.wait_job(proxy, job_id, {"expired"}, alive=(daemon,))
    assert harness.runs(job_id) == [] and record["runs"] == 0
