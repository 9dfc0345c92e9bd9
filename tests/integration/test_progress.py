"""Progress and stopping with real ``pscheduler`` daemons (docs/progress.rst):
progress read from the test process, a running job stopped by ``cancel_job``
from the test process, and a run past its ``timeout``."""

from __future__ import annotations

import uuid

import pytest
from pyramid.config import Configurator

from integration.conftest import wait_until
from integration.sampleapp import progress
from pyramid_scheduler.api import Event, JobProgress

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def new_id(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize(("broker", "store"), [("sqlite", "sqlite"), ("redis", "postgresql")])
def test_progress_is_read_from_another_process(make_harness, broker, store):
    harness = make_harness(broker, store)
    proxy = harness.proxy()
    daemon = harness.start()
    job_id = new_id("steps")
    proxy.add_async_job(progress.steps, args=[harness.oracle, job_id, 40, 0.1], id=job_id)

    def midway():
        record = proxy.get_job(job_id)
        seen = record and record["progress"]
        return record if seen and 0 < seen["fraction"] < 1 and record["status"] == "running" else None

    record = wait_until(midway, "progress while the job runs", alive=(daemon,))
    assert record["progress"]["message"].startswith("step ")
    assert record["progress"]["run_key"].startswith(f"{job_id}@")

    record = harness.wait_job(proxy, job_id, {"done"}, alive=(daemon,))
    # The last report is always written, however soon after the one before.
    assert record["progress"]["fraction"] == 1.0
    assert record["progress"]["message"] == "step 40 of 40"
    assert record["progress"]["at"] >= record["created_at"]
    code, output = harness.run("job", job_id)  # pscheduler CONFIG job ID
    assert code == 0 and "progress: 100% step 40 of 40 (" in output
    # Throttled: far fewer events than the 40 reports, the last among them.
    reported = [row for row in harness.events(job_id) if row["type"] == "job.progress"]
    assert 2 <= len(reported) < 40
    assert [row["type"] for row in harness.events(job_id)][-2:] == ["job.executed", "job.removed"]


@pytest.mark.parametrize("how", ["check", "raise"])
def test_cancel_stops_a_running_job(harness, how):
    proxy = harness.proxy()
    daemon = harness.start()
    job_id = new_id(f"stop-{how}")
    proxy.add_async_job(progress.until_stopped, args=[harness.oracle, job_id, 60, how], id=job_id, retries=2)
    harness.wait_runs(job_id, 1, alive=(daemon,))

    proxy.cancel_job(job_id)
    harness.wait_runs(job_id, 2, alive=(daemon,))
    assert [row["phase"] for row in harness.runs(job_id)] == ["start", "stopped"]
    record = harness.wait_job(proxy, job_id, {"canceled"}, alive=(daemon,))
    # The run is recorded as stopped, and not retried.
    wait_until(lambda: proxy.get_runs(job_id)[-1]["status"] != "started", "the run's end", alive=(daemon,))
    (run,) = proxy.get_runs(job_id)
    assert run["status"] == "stopped"
    assert "canceled" in run["error"]
    assert record["retry_at"] is None
    wait_until(lambda: "job.canceled" in [r["type"] for r in harness.events(job_id)], "CANCELED", alive=(daemon,))
    assert "job.executed" not in [row["type"] for row in harness.events(job_id)]
    assert len(harness.runs(job_id)) == 2


def test_cancel_reaches_the_run_through_the_store_when_another_daemon_takes_it(make_harness):
    """Two daemons share the queue: whichever consumes the cancel, the one
    running the job stops it."""
    harness = make_harness("redis", "postgresql")
    proxy = harness.proxy()
    daemons = (harness.start(), harness.start())
    for daemon in daemons:
        harness.wait_active(proxy, daemon)
    stopped = []
    for index in range(4):  # each cancel goes to either daemon
        job_id = new_id(f"shared-{index}")
        proxy.add_async_job(progress.until_stopped, args=[harness.oracle, job_id, 60], id=job_id)
        harness.wait_runs(job_id, 1, alive=daemons)
        proxy.cancel_job(job_id)
        harness.wait_runs(job_id, 2, alive=daemons)
        stopped.append(harness.runs(job_id)[-1]["phase"])
    assert stopped == ["stopped"] * 4


def test_timeout_asks_the_run_to_stop_and_reports_it_timed_out(harness):
    proxy = harness.proxy()
    daemon = harness.start()
    job_id = new_id("timeout")
    proxy.add_async_job(progress.until_stopped, args=[harness.oracle, job_id, 60], id=job_id, timeout=1)
    record = harness.wait_job(proxy, job_id, {"failed"}, alive=(daemon,))
    assert [row["phase"] for row in harness.runs(job_id)] == ["start", "stopped"]
    (run,) = proxy.get_runs(job_id)
    assert run["status"] == "timed-out"
    assert "timed out" in record["error"]
    assert run["finished_at"] - run["started_at"] >= 1
    errors = [row for row in harness.events(job_id) if row["type"] == "job.error"]
    assert len(errors) == 1


def test_a_timed_out_run_that_raises_its_own_error_says_it_timed_out(harness):
    proxy = harness.proxy()
    daemon = harness.start()
    job_id = new_id("gives-up")
    proxy.add_async_job(progress.fails_when_stopped, args=[harness.oracle, job_id, 60], id=job_id, timeout=1)
    record = harness.wait_job(proxy, job_id, {"failed"}, alive=(daemon,))
    assert record["error"].startswith(f"job {job_id}: asked to stop (timed out)\n")
    assert f"RuntimeError: sampleapp job {job_id} gives up" in record["error"]
    assert [run["status"] for run in proxy.get_runs(job_id)] == ["timed-out"]


def test_a_web_process_that_subscribes_receives_the_progress_events(make_harness):
    harness = make_harness("redis", **{"events.subscribe": "true"})
    with Configurator(settings=harness.app_settings()) as config:
        config.include("pyramid_scheduler")
        notified = config.testing_add_subscriber(JobProgress)
    app = config.make_wsgi_app()  # ApplicationCreated: the subscriber starts
    scheduler = app.registry.scheduler
    harness.proxies.append(scheduler)
    assert scheduler._subscriber.ready.wait(30), "the event subscriber did not start"
    daemon = harness.start()
    harness.wait_active(scheduler, daemon)
    job_id = new_id("fanned")
    scheduler.add_async_job(progress.steps, args=[harness.oracle, job_id, 10, 0.1], id=job_id)
    harness.wait_job(scheduler, job_id, {"done"}, alive=(daemon,))
    wait_until(lambda: [e for e in notified if e.event.fraction == 1.0], "the last progress event in the web process")
    fractions = [e.event.fraction for e in notified if e.job_id == job_id]
    assert fractions == sorted(fractions) and 1 <= len(fractions) < 10
    last = notified[-1].event
    assert last.type == Event.JOB_PROGRESS and last.message == "step 10 of 10" and last.seq > 1
