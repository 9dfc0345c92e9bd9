"""Combined mode (``scheduler.combined = true``): the web process runs the
jobs itself, through the same consumer, engine and runner as pscheduler."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import webtest

from daemons import Daemon, free_port, write_ini
from integration.conftest import wait_until
from integration.sampleapp import jobs, main
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
    wait_until(
        lambda: [row["type"] for row in harness.events(job_id)] == ["job.created", "job.executed", "job.removed"],
        "the oracle's events",
    )
    assert {row["pid"] for row in harness.events(job_id)} == {os.getpid()}


def test_several_web_processes_all_run_jobs_and_the_others_take_over(harness):
    """Combined mode under a multi-process deployment: three ``pserve``
    processes of one application; each runs jobs as a daemon would, each job
    once, and when one dies the others take its work over."""
    settings = harness.app_settings(**{"scheduler.combined": "true"})
    workers = []
    for index in range(3):
        port = free_port()
        ini = write_ini(harness.tmp_path / f"web{index}.ini", settings)
        with ini.open("a", encoding="utf-8") as f:
            f.write(f"\n[server:main]\nuse = egg:waitress#main\nhost = 127.0.0.1\nport = {port}\n")
        worker = Daemon(
            [str(Path(sys.executable).parent / "pserve"), str(ini)],
            harness.tmp_path / f"web{index}.log",
            harness.tmp_path,
        )
        harness.daemons.append(worker)
        workers.append((worker, f"http://127.0.0.1:{port}"))

    def get(base: str, path: str) -> Any:
        with urllib.request.urlopen(base + path, timeout=5) as response:
            return json.load(response)

    def enqueue_everywhere(prefix: str, alive: list[tuple[Daemon, str]]) -> list[str]:
        tags = [f"{prefix}-{n}-{uuid.uuid4().hex[:6]}" for n in range(12)]
        for n, tag in enumerate(tags):
            worker, base = alive[n % len(alive)]
            wait_until(lambda base=base: _answers(base), f"{base} to answer", alive=(worker,))
            assert get(base, f"/enqueue?tag={tag}") == {"job_id": tag}
        return tags

    first = enqueue_everywhere("first", workers)
    proxy = harness.proxy()
    for tag in first:
        harness.wait_job(proxy, tag, {"done"})
    assert [len(harness.runs(tag)) for tag in first] == [1] * len(first)
    assert {run["pid"] for tag in first for run in harness.runs(tag)} <= {worker.pid for worker, _ in workers}
    (queue,) = proxy.get_daemons()
    assert sorted(row["pid"] for row in queue["daemons"]) == sorted(worker.pid for worker, _ in workers)

    # A date job stored by each process, then one of them killed before they are due.
    when = datetime.now(timezone.utc) + timedelta(seconds=2)
    dated = [f"dated-{n}-{uuid.uuid4().hex[:6]}" for n in range(6)]
    for job_id in dated:
        proxy.add_date_job(jobs.record, when, args=[harness.oracle, job_id], id=job_id)
    for job_id in dated:
        harness.wait_job(proxy, job_id, {"scheduled"})
    killed, *rest = workers
    killed[0].kill()
    second = enqueue_everywhere("second", rest)
    for tag in second + dated:
        harness.wait_job(proxy, tag, {"done"})
    survivors = {worker.pid for worker, _ in rest}
    assert {run["pid"] for tag in second + dated for run in harness.runs(tag)} <= survivors
    assert [len(harness.runs(tag)) for tag in second + dated] == [1] * len(second + dated)


def _answers(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/enqueue", timeout=2):
            pass
    except urllib.error.HTTPError:
        return True  # the app answers (400: no tag)
    except OSError:
        return False
    return True
