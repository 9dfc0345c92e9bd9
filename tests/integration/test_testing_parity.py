"""pyramid_scheduler.testing and a real ``pscheduler`` tell the same story.

One scenario -- a job whose first run fails and is retried, a cron job and
an interval job whose every run fell due while no daemon ran (caught up with
``catch_up="skip"`` and ``"all"``), a job canceled before it ran -- goes
through the testing kit on its fake clock and through a real daemon on real
time; each job's event types, in order, are the same in both.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pyramid.config import Configurator

from integration.conftest import wait_until
from integration.sampleapp import failing, jobs

pytestmark = [pytest.mark.integration]

UTC = timezone.utc
JOBS = ("flaky", "cron-skip", "interval-all", "canceled")


def send_scenario(scheduler: Any, oracle: str, now: datetime) -> datetime:
    """Add the scenario's jobs through *scheduler* at *now*; the time by
    which every run of the recurring jobs has fallen due."""
    start = datetime.fromtimestamp(math.ceil(now.timestamp()) + 2, UTC)  # a whole second, for the cron job
    end = start + timedelta(seconds=2.5)  # three fire times: start, +1 s, +2 s
    scheduler.add_async_job(failing.flaky, args=[oracle, "flaky", 1], id="flaky", retries=2, retry_delay=1)
    scheduler.add_cron_job(
        jobs.record, second="*", start_date=start, end_date=end, args=[oracle, "cron-skip"], id="cron-skip"
    )
    scheduler.add_interval_job(
        jobs.record,
        seconds=1,
        start_date=start,
        end_date=end,
        args=[oracle, "interval-all"],
        id="interval-all",
        catch_up="all",
    )
    scheduler.add_interval_job(jobs.record, hours=1, args=[oracle, "canceled"], id="canceled")
    scheduler.cancel_job("canceled")
    return end + timedelta(seconds=1)


def through_the_testing_kit(tmp_path: Any) -> dict[str, list[str]]:
    config = Configurator(settings={"scheduler.allowed_modules": "integration.sampleapp"})
    config.include("pyramid_scheduler.testing")
    scheduler = config.make_wsgi_app().registry.scheduler
    after = send_scenario(scheduler, str(tmp_path / "kit-oracle.sqlite"), scheduler.now())
    scheduler.clock.set(after)  # no daemon ran meanwhile
    scheduler.run_pending()
    scheduler.clock.advance(seconds=5)  # the retry
    assert {job_id: scheduler.get_job(job_id)["status"] for job_id in JOBS} == {
        "flaky": "done",
        "cron-skip": "done",
        "interval-all": "done",
        "canceled": "canceled",
    }
    return {job_id: [e.type for e in scheduler.events if e.get("job_id") == job_id] for job_id in JOBS}


def through_a_daemon(harness: Any) -> dict[str, list[str]]:
    proxy = harness.proxy()
    after = send_scenario(proxy, harness.oracle, datetime.now(UTC))
    wait_until(lambda: time.time() > after.timestamp(), "every run of the recurring jobs to fall due")
    daemon = harness.start()
    for job_id, status in (
        ("flaky", "done"),
        ("cron-skip", "done"),
        ("interval-all", "done"),
        ("canceled", "canceled"),
    ):
        harness.wait_job(proxy, job_id, {status}, alive=(daemon,))
    assert daemon.terminate() == 0  # its events all delivered
    return {job_id: [row["type"] for row in harness.events(job_id)] for job_id in JOBS}


def test_the_testing_kit_and_a_daemon_emit_the_same_events(harness, tmp_path):
    kit = through_the_testing_kit(tmp_path)
    assert kit == {
        "flaky": ["job.created", "job.error", "job.retry", "job.executed", "job.removed"],
        "cron-skip": ["job.created", "job.missed", "job.missed", "job.executed", "job.removed"],
        "interval-all": ["job.created", "job.executed", "job.executed", "job.executed", "job.removed"],
        "canceled": ["job.created", "job.canceled"],
    }
    assert through_a_daemon(harness) == kit
