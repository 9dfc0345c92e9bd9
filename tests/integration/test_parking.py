"""A stored job whose function was renamed by a deploy: ``pscheduler`` parks
it (never deletes it), says so, and runs it once the code is back or
``scheduler.func_aliases`` names the new function."""

from __future__ import annotations

import importlib
import shutil
import sys
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from integration.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASK = """
from integration.sampleapp.jobs import record


def {name}(oracle, tag):
    return record(oracle, tag)
"""


def test_renamed_function_parks_the_job_and_an_alias_runs_it(make_harness, tmp_path, monkeypatch):
    module = f"movable_{uuid.uuid4().hex[:8]}"
    source = tmp_path / f"{module}.py"  # the daemons run in tmp_path, so they import it too
    source.write_text(TASK.format(name="task"))
    monkeypatch.syspath_prepend(str(tmp_path))
    harness = make_harness(allowed_modules=f"integration.sampleapp {module}")
    proxy = harness.proxy()
    job_id = f"deploy-{uuid.uuid4().hex[:6]}"

    first = harness.start()
    proxy.add_date_job(
        importlib.import_module(module).task,
        date=datetime.now(timezone.utc) + timedelta(seconds=8),
        args=[harness.oracle, job_id],
        id=job_id,
    )
    harness.wait_job(proxy, job_id, {"scheduled"}, alive=(first,))
    assert first.terminate() == 0
    assert harness.runs(job_id) == [], "the job ran before the deploy; nothing to test"

    # The deploy renames the function; the job is due while the new code runs.
    source.write_text(TASK.format(name="task_v2"))
    shutil.rmtree(tmp_path / "__pycache__", ignore_errors=True)
    sys.modules.pop(module, None)
    second = harness.start()
    record = harness.wait_job(proxy, job_id, {"parked"}, alive=(second,))
    assert f"{module}:task" in record["error"], record
    assert harness.runs(job_id) == []
    # The listener records the event just after the ledger says "parked".
    wait_until(
        lambda: "job.parked" in [event["type"] for event in harness.events(job_id)], "JOB_PARKED", alive=(second,)
    )
    assert second.terminate() == 0
    assert proxy.get_job(job_id)["status"] == "parked"  # kept across restarts

    aliased = harness.write_ini(harness.app_settings(**{"scheduler.func_aliases": f"{module}:task = {module}:task_v2"}))
    third = harness.start(ini=aliased)
    record = harness.wait_job(proxy, job_id, {"done"}, alive=(third,))
    assert record["func"] == f"{module}:task_v2"
    assert len(harness.runs(job_id)) == 1
    types = wait_until(
        lambda: (lambda t: t if "job.removed" in t else None)([event["type"] for event in harness.events(job_id)]),
        "JOB_REMOVED",
        alive=(third,),
    )
    assert types == ["job.created", "job.parked", "job.restored", "job.executed", "job.removed"]
    assert third.terminate() == 0
