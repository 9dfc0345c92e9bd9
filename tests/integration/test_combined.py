"""Combined mode (``scheduler.combined = true``): the web process runs the
jobs itself, through the same consumer, engine and runner as pscheduler."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import webtest

from integration.conftest import wait_until
from integration.sampleapp import main
from pyramid_scheduler.api import Event, JobExecuted

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def combined(harness) -> Iterator[tuple[webtest.TestApp, Any]]:
    wsgi = main({}, **harness.app_settings(**{"scheduler.combined": "true"}))
    try:
        yield webtest.TestApp(wsgi), wsgi.registry
    finally:
        wsgi.registry.scheduler.shutdown()


def test_view_enqueues_a_job_that_runs_in_process(harness, combined):
    app, registry = combined
    events: list[Event] = []
    subscribed: list[JobExecuted] = []
    registry.scheduler.add_listener(events.append)
    registry.registerHandler(subscribed.append, (JobExecuted,))

    job_id = f"web-{uuid.uuid4().hex[:8]}"
    response = app.get("/enqueue", {"tag": job_id})
    assert response.json == {"job_id": job_id}

    def executed() -> list[Event]:
        return [e for e in events if e.type == Event.JOB_EXECUTED and e.job_id == job_id]

    (done,) = wait_until(executed, f"JOB_EXECUTED for {job_id}")
    mine = [e for e in events if e.get("job_id") == job_id]
    types = [e.type for e in mine]
    assert types.index(Event.JOB_CREATED) < types.index(Event.JOB_EXECUTED)
    assert types[0] == Event.JOB_CREATED
    assert done.retval == {"tag": job_id, "pid": os.getpid(), "marker": harness.marker}
    assert done.job["func"] == "integration.sampleapp.jobs:record"
    assert done.run_key.startswith(f"{job_id}@")

    # It ran here, in a worker thread of this process, with the registry current.
    (run,) = harness.runs(job_id)
    assert (run["pid"], run["marker"]) == (os.getpid(), harness.marker)
    assert run["thread"] != "MainThread"
    record = harness.wait_job(registry.scheduler, job_id, {"done"})
    assert record["result"] == done.retval
    # Pyramid subscribers get the event too.
    wait_until(lambda: [e for e in subscribed if e.job_id == job_id], "the JobExecuted subscriber")
    # The sample application's own listener (sampleapp.oracle) saw the same order.
    wait_until(lambda: [row["type"] for row in harness.events(job_id)]
               == ["job.created", "job.executed", "job.removed"], "the oracle's events")
    assert {row["pid"] for row in harness.events(job_id)} == {os.getpid()}
