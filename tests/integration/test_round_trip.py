"""The core round trip, on every broker and job store: a web-side proxy sends
jobs of each kind, a real ``pscheduler`` runs them, the oracle and the job
records show it."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from integration.conftest import wait_until
from integration.sampleapp import jobs

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def tag(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def event_types(harness, job_id):
    return [row["type"] for row in harness.events(job_id)]


def test_round_trip(make_harness, broker_kind, store_kind):
    harness = make_harness(broker_kind, store_kind)
    proxy = harness.proxy()
    daemon = harness.start()
    alive = (daemon,)
    oracle = harness.oracle

    # Sent before the daemon is up: the broker holds it.
    now_id, date_id, every_id, cron_id = tag("now"), tag("date"), tag("every"), tag("cron")
    assert proxy.add_async_job(jobs.record, args=[oracle, now_id], id=now_id) == now_id
    # The others once it runs, so that the date is still ahead when it is stored.
    harness.wait_active(proxy, daemon)
    run_date = datetime.now(timezone.utc) + timedelta(seconds=1)
    assert proxy.add_date_job(jobs.record, run_date, args=[oracle, date_id], id=date_id) == date_id
    assert proxy.add_interval_job(jobs.record, args=[oracle, every_id], seconds=1, id=every_id) == every_id
    assert proxy.add_cron_job(jobs.record, args=[oracle, cron_id], second="*", id=cron_id) == cron_id

    # The run-now job: done, its result recorded, run with the registry current.
    record = harness.wait_job(proxy, now_id, {"done"}, alive=alive)
    assert record["kind"] == "now"
    assert record["runs"] == 1
    assert record["queue"] == "jobs"
    assert record["func"] == "integration.sampleapp.jobs:record"
    assert record["result"] == {"tag": now_id, "pid": daemon.pid, "marker": harness.marker}
    assert record["error"] is None

    # The date job: done, not before its date.
    record = harness.wait_job(proxy, date_id, {"done"}, alive=alive)
    assert record["kind"] == "date" and record["runs"] == 1
    (date_run,) = harness.runs(date_id)
    assert date_run["at"] >= run_date.timestamp() - 0.05

    # The interval and cron jobs run repeatedly until canceled.
    harness.wait_runs(every_id, 2, alive=alive)
    assert proxy.get_job(every_id)["status"] in {"scheduled", "running"}
    assert proxy.cancel_job(every_id) == every_id
    harness.wait_runs(cron_id, 1, alive=alive)
    assert proxy.cancel_job(cron_id, queue="jobs") == cron_id
    canceled = {job_id: harness.wait_job(proxy, job_id, {"canceled"}, alive=alive) for job_id in (every_id, cron_id)}
    assert canceled[every_id]["kind"] == "interval" and canceled[every_id]["runs"] >= 2
    assert canceled[cron_id]["kind"] == "cron" and canceled[cron_id]["runs"] >= 1

    # A sentinel due two intervals after the later cancel: by the time it has
    # run, an interval or cron job that was still scheduled would have run
    # twice more. At most one run (one already submitted when the cancel
    # arrived) may start after the cancel was processed.
    canceled_at = max(record["updated_at"] for record in canceled.values())
    sentinel = tag("sentinel")
    proxy.add_date_job(jobs.record, canceled_at + 2.2, args=[oracle, sentinel], id=sentinel)
    harness.wait_job(proxy, sentinel, {"done"}, alive=alive)
    for job_id, record in canceled.items():
        late = [run for run in harness.runs(job_id) if run["at"] > record["updated_at"]]
        assert len(late) <= 1, f"{job_id} kept running after it was canceled: {late}"
        assert proxy.get_job(job_id)["status"] == "canceled"

    # Every run happened in the daemon, with the application's registry current.
    everything = harness.runs()
    assert {run["tag"] for run in everything} == {now_id, date_id, every_id, cron_id, sentinel}
    assert {(run["pid"], run["marker"]) for run in everything} == {(daemon.pid, harness.marker)}

    # The daemon's listener saw each job's events in order.
    def ordered() -> bool:
        return (
            event_types(harness, now_id) == ["job.created", "job.executed", "job.removed"]
            and event_types(harness, date_id) == ["job.created", "job.executed", "job.removed"]
            and all(
                (types := event_types(harness, job_id)) and types[-1] == "job.canceled"
                for job_id in (every_id, cron_id)
            )
        )

    wait_until(ordered, "each job's events", alive=alive)
    for job_id in (every_id, cron_id):
        types = event_types(harness, job_id)
        assert types[0] == "job.created"
        assert set(types[1:-1]) == {"job.executed"}
        assert types.count("job.executed") == len(harness.runs(job_id))
    assert {row["pid"] for row in harness.events()} == {daemon.pid}

    # The INI file's logging configuration is the one in use.
    assert re.search(
        r"SAMPLELOG \S+ \S+ INFO \[pyramid_scheduler\.daemon\.engine\]\[\w+\] scheduler jobs running "
        r"queues jobs",
        daemon.log(),
    )
    assert daemon.alive
