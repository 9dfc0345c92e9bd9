"""Each named crash point (``PYRAMID_SCHEDULER_CRASH_AT``), with a real
``pscheduler`` killed there by SIGKILL and a second one started after it:
the outcome must match the table in docs/guarantees.rst every time.

``FAULT_TRIALS`` (default 1) repeats every case; the long run is
``FAULT_TRIALS=20 python3 dev.py test tests/faults``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pyramid.config import Configurator

from conftest import make_settings
from daemons import Daemon, wait_until, write_ini
from integration.sampleapp import jobs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRIALS = int(os.environ.get("FAULT_TRIALS", "1"))

# point -> (the job to send: "date" 2 s ahead or "now", {policy: (runs, final status)}, brokers);
# policy "retries" is the default policy with a job sent with retries=1.
OUTCOMES: dict[str, tuple[str, dict[str, tuple[int, str]], tuple[str, ...]]] = {
    "taken": ("now", {"record": (1, "done")}, ("redis",)),
    "received": ("date", {"record": (1, "done")}, ("sqlite", "redis", "rabbitmq")),
    "persisted": ("date", {"record": (1, "done")}, ("sqlite",)),
    "submitted": ("now", {"record": (1, "done")}, ("sqlite",)),
    "started": ("now", {"record": (0, "interrupted"), "rerun": (1, "done"), "retries": (1, "done")}, ("sqlite",)),
    "finished": ("now", {"record": (1, "interrupted"), "rerun": (2, "done"), "retries": (2, "done")}, ("sqlite",)),
}
CASES = [
    (point, broker, policy, trial)
    for point, (_, table, brokers) in OUTCOMES.items()
    for broker in brokers
    for policy in table
    for trial in range(TRIALS)
]


class Scenario:
    def __init__(self, tmp_path: Path, broker: str = "sqlite", **extra: str) -> None:
        var = tmp_path / "var"
        var.mkdir()
        self.oracle = str(tmp_path / "oracle.sqlite")
        self.settings = make_settings(var, broker, **extra)
        self.settings.update({"sampleapp.oracle": self.oracle, "sampleapp.marker": "fault-suite"})
        self.ini = write_ini(tmp_path / "daemon.ini", self.settings)
        config = Configurator(settings=self.settings)
        config.include("pyramid_scheduler")
        config.commit()
        self.scheduler = config.registry.scheduler
        self.daemons: list[Daemon] = []

    def daemon(self, crash_at: str | None = None) -> Daemon:
        env = {"PYRAMID_SCHEDULER_CRASH_AT": crash_at} if crash_at else {}
        daemon = Daemon.start(self.ini, env=env)
        self.daemons.append(daemon)
        return daemon

    def runs(self, tag: str) -> int:
        return len(jobs.runs(self.oracle, tag))

    def ledger_runs(self, job_id: str) -> list[dict[str, Any]]:
        ledger = self.scheduler._ledger()
        with ledger.engine.connect() as conn:
            rows = conn.execute(
                sa.select(ledger.runs).where(ledger.runs.c.job_id == job_id).order_by(ledger.runs.c.scheduled_at)
            )
            return [dict(row._mapping) for row in rows]

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.close()
        self.scheduler.shutdown()


@pytest.fixture
def scenario_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Scenario] = []

    def make(**extra: str) -> Scenario:
        made.append(Scenario(tmp_path, **extra))
        return made[-1]

    yield make
    for scenario in made:
        scenario.close()


@pytest.mark.parametrize(("point", "broker", "policy", "trial"), CASES)
def test_crash_point(scenario_factory: Any, point: str, broker: str, policy: str, trial: int) -> None:
    scenario = scenario_factory(broker=broker, interrupted="record" if policy == "retries" else policy)
    options: dict[str, Any] = {"retries": 1, "retry_delay": 0} if policy == "retries" else {}
    kind, table, _ = OUTCOMES[point]
    expected_runs, expected_status = table[policy]
    tag = f"{point}-{broker}-{policy}-{trial}"

    first = scenario.daemon(crash_at=point).wait_consuming()
    if kind == "date":
        when = datetime.now(timezone.utc) + timedelta(seconds=2)
        job_id = scenario.scheduler.add_date_job(jobs.record, when, args=[scenario.oracle, tag], id=tag, **options)
    else:
        job_id = scenario.scheduler.add_async_job(jobs.record, args=[scenario.oracle, tag], id=tag, **options)
    code = first.wait(60)
    assert code == -9, f"the daemon should have killed itself at {point!r}:\n{first.log()}"
    assert f"crash point {point!r} reached" in first.log()

    second = scenario.daemon().wait_consuming()
    record = wait_until(
        lambda: (r := scenario.scheduler.get_job(job_id)) and r["status"] not in ("scheduled", "running") and r,
        f"job {job_id} to finish",
        60,
    )
    time.sleep(0.5)  # a duplicate run, if there were one, would show up now
    assert scenario.runs(tag) == expected_runs, second.log()
    assert record["status"] == expected_status, (record, second.log())
    runs = scenario.ledger_runs(job_id)
    assert len({run["run_key"] for run in runs}) == len(runs)
    if point in ("started", "finished"):
        assert runs[0]["status"] == "interrupted"
        assert "stopped before the run finished" in (scenario.scheduler.get_job(job_id)["error"] or second.log())
    assert second.terminate() == 0, second.log()
