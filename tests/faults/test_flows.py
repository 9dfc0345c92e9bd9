"""Chains killed with ``kill -9``: a real ``pscheduler`` killed at a crash
point between two steps, a second one started after it; each step runs at
most once, and the chain goes on (or ends, canceled, with the reason)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from daemons import wait_until
from faults.test_crash_points import Scenario
from integration.sampleapp import flows

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(params=["sqlite", "postgresql"])
def scenario(request: Any, tmp_path: Any, drop_tables: Any) -> Iterator[Scenario]:
    """A fault scenario on the SQL broker, its job store on SQLite or PostgreSQL."""
    made = Scenario(tmp_path, store=request.param)
    settings = made.settings
    drop_tables.append((settings["scheduler.jobstore.url"], settings["scheduler.jobstore.tablename_prefix"]))
    yield made
    made.close()


def _chain(scenario: Any, tag: str) -> Any:
    proxy, oracle = scenario.scheduler, scenario.oracle
    return proxy.chain(
        proxy.step(flows.begin, oracle, f"{tag}-0", 1),
        proxy.step(flows.add, oracle, f"{tag}-1", 10),
        proxy.step(flows.add, oracle, f"{tag}-2", 100),
    )


def _ended(scenario: Any, job_id: str) -> dict[str, Any]:
    return wait_until(
        lambda: (r := scenario.scheduler.get_job(job_id)) and r["status"] not in ("scheduled", "running") and r,
        f"job {job_id} to end",
        60,
    )


def test_killed_after_a_step_made_the_next_one_runs_exactly_once(scenario):
    """Killed once step 0's success and step 1's job are committed, before
    step 1 is handed to the job store: the next daemon's recovery schedules
    step 1, which runs once, and step 2 after it."""
    first = scenario.daemon(crash_at="step-made").wait_consuming()
    flow = _chain(scenario, "made")
    assert first.wait(60) == -9, first.log()
    assert "crash point 'step-made' reached" in first.log()
    assert scenario.scheduler.get_job(flow.job_ids[1])["status"] == "scheduled"
    assert scenario.runs("made-1") == 0

    second = scenario.daemon().wait_consuming()
    last = _ended(scenario, flow.last)
    time.sleep(0.5)  # a second run, if there were one, would show up now
    assert last["status"] == "done" and last["result"] == 111, second.log()
    assert [scenario.runs(f"made-{index}") for index in range(3)] == [1, 1, 1]
    for job_id in flow.job_ids:
        assert len(scenario.ledger_runs(job_id)) == 1
    assert second.terminate() == 0, second.log()


def test_killed_before_a_steps_outcome_is_recorded_the_rest_is_canceled(scenario):
    """Killed when step 1's function returned, its outcome not recorded
    (the second ``finished``): step 1 is interrupted (not run again) and
    step 2 canceled with the reason."""
    first = scenario.daemon(crash_at="finished:2").wait_consuming()
    flow = _chain(scenario, "cut")
    assert first.wait(60) == -9, first.log()

    second = scenario.daemon().wait_consuming()
    last = _ended(scenario, flow.last)
    time.sleep(0.5)
    assert scenario.scheduler.get_job(flow.job_ids[1])["status"] == "interrupted"
    assert last["status"] == "canceled", second.log()
    assert last["error"].startswith(f"chain {flow.id}: step 1 ({flow.job_ids[1]}) ended interrupted: ")
    assert [scenario.runs(f"cut-{index}") for index in range(3)] == [1, 1, 0]
    assert second.terminate() == 0, second.log()
