"""Fixed-delay interval jobs and ``reschedule_job(id)`` with a real
``pscheduler``: the spacing of recorded runs, and a date job pushed back by
its own delay. Nothing is asserted about how long anything took, only about
what happened before what: each run starts at least an interval after the
previous one ended, which holds however slow the machine is."""

from __future__ import annotations

import uuid

import pytest

from integration.conftest import wait_until
from integration.sampleapp import jobs

pytestmark = [pytest.mark.integration]


def test_each_run_starts_an_interval_after_the_previous_one_ended(harness):
    proxy = harness.proxy()
    daemon = harness.start()
    tag = f"delay-{uuid.uuid4().hex[:8]}"
    # Each run takes longer than the interval: on a fixed-rate grid the runs
    # would be due while the previous one still runs.
    job_id = proxy.add_interval_job(jobs.slow, seconds=1, args=[harness.oracle, tag, 1.5], fixed_delay=True, id=tag)
    rows = harness.wait_runs(tag, count=6, alive=(daemon,))  # three starts, three ends
    rows = [row for row in rows if row["phase"] in ("start", "end")][:6]
    assert [row["phase"] for row in rows] == ["start", "end"] * 3  # never overlapping
    for end, start in zip(rows[1::2], rows[2::2], strict=False):
        assert start["at"] - end["at"] >= 1.0
    # Nothing recorded missed for a run held back while the previous one ran.
    assert all(run["status"] == "done" for run in proxy.get_runs(job_id) if run["status"] != "started")
    record = proxy.get_job(job_id)
    assert record["trigger"]["fixed_delay"] is True
    times = proxy.preview_job(job_id, 2)
    assert (times[1] - times[0]).total_seconds() == 1.0


def test_reschedule_with_no_schedule_pushes_a_date_job_back_by_its_delay(harness):
    proxy = harness.proxy()
    daemon = harness.start()
    tag = f"watchdog-{uuid.uuid4().hex[:8]}"
    # A delay long enough that the job is still waiting under any load.
    job_id = proxy.add_date_job(jobs.record, seconds=60, args=[harness.oracle, tag], id=tag)
    first = harness.wait_job(proxy, job_id, {"scheduled"}, alive=(daemon,))
    assert first["trigger"]["delay"] == 60.0
    due = proxy.preview_job(job_id, 1)[0]
    proxy.reschedule_job(job_id)  # 60 s from now again: later than before
    wait_until(lambda: proxy.preview_job(job_id, 1)[0] > due, "the job to be due later", alive=(daemon,))
    record = proxy.get_job(job_id)
    assert (record["status"], record["trigger"]["delay"]) == ("scheduled", 60.0)
    assert harness.runs(tag) == []
    proxy.run_job_now(job_id)
    harness.wait_job(proxy, job_id, {"done"}, alive=(daemon,))
    assert len(harness.runs(tag)) == 1
