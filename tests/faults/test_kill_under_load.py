"""``kill -9`` of ``pscheduler``, several times, while mixed run-now, date and
interval jobs flow in; then the books must balance.

Oracle: the ids that ``add_*_job`` returned (kept by the test), the runs the
job functions wrote to their own SQLite file, and the job records. After the
last daemon has drained everything: lost = 0 (every accepted job has a final
record), duplicate runs = 0 (no one-off job ran twice), every run key unique.

``FAULT_JOBS`` (default 400) and ``FAULT_KILLS`` (default 3) scale it.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pyramid.config import Configurator

from conftest import make_settings
from daemons import Daemon, wait_until, write_ini
from integration.sampleapp import jobs

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

JOBS = int(os.environ.get("FAULT_JOBS", "400"))
KILLS = int(os.environ.get("FAULT_KILLS", "3"))
FINAL = {"done", "failed", "missed", "canceled", "interrupted", "parked"}


@pytest.mark.parametrize(
    ("broker", "store"),
    [
        ("sqlite", "sqlite"),
        ("redis", "postgresql"),
        ("rabbitmq", "postgresql"),
    ],
)
def test_kill_9_under_load_loses_nothing(tmp_path: Path, drop_tables: Any, broker: str, store: str) -> None:
    var = tmp_path / "var"
    var.mkdir()
    oracle = str(tmp_path / "oracle.sqlite")
    settings = make_settings(var, broker, store, **{"executor.max_workers": "4"})
    settings["sampleapp.oracle"] = oracle
    drop_tables.append((settings["scheduler.jobstore.url"], settings["scheduler.jobstore.tablename_prefix"]))
    ini = write_ini(tmp_path / "daemon.ini", settings)
    config = Configurator(settings=settings)
    config.include("pyramid_scheduler")
    config.commit()
    scheduler = config.registry.scheduler
    rng = random.Random(JOBS)
    accepted: dict[str, str] = {}
    daemons: list[Daemon] = []
    started = time.monotonic()

    def produce() -> None:
        for n in range(JOBS):
            kind = rng.choices(["now", "date", "interval"], [6, 3, 1])[0]
            tag = f"{kind}-{n}"
            now = datetime.now(timezone.utc)
            if kind == "now":
                scheduler.add_async_job(jobs.record, args=[oracle, tag], id=tag)
            elif kind == "date":
                scheduler.add_date_job(
                    jobs.record, now + timedelta(seconds=rng.uniform(0, 4)), args=[oracle, tag], id=tag
                )
            else:
                scheduler.add_interval_job(
                    jobs.record, args=[oracle, tag], id=tag, seconds=1, end_date=now + timedelta(seconds=3.5)
                )
            accepted[tag] = kind
            time.sleep(0.01)

    try:
        daemons.append(Daemon.start(ini))
        producer = threading.Thread(target=produce)
        producer.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.8, 2.0))
            daemons[-1].kill()
            daemons.append(Daemon.start(ini))
        producer.join()

        unsettled: dict[str, str] = {}

        def settled() -> bool:
            records = {job["id"]: job for job in scheduler.get_jobs(limit=JOBS * 2)}
            unsettled.clear()
            unsettled.update(
                {
                    tag: records[tag]["status"] if tag in records else "no record"
                    for tag in accepted
                    if tag not in records or records[tag]["status"] not in FINAL
                }
            )
            return not unsettled

        try:
            wait_until(settled, "every accepted job to reach a final state", 120, interval=0.5)
        except BaseException:
            print(f"unsettled: {collections.Counter(unsettled.values())} e.g. {list(unsettled.items())[:10]}")
            for daemon in daemons:
                print(f"===== pscheduler pid {daemon.pid} exit {daemon.proc.returncode}\n{daemon.log()[-5000:]}")
            raise
        time.sleep(1)  # a duplicate run, if any, would land now
        elapsed = time.monotonic() - started

        records = {job["id"]: job for job in scheduler.get_jobs(limit=JOBS * 2)}
        ran = collections.Counter(run["tag"] for run in jobs.runs(oracle))
        statuses = collections.Counter(records[tag]["status"] for tag in accepted)
        lost = [tag for tag in accepted if tag not in records or records[tag]["status"] not in FINAL]
        one_off = [tag for tag, kind in accepted.items() if kind != "interval"]
        duplicates = [tag for tag in one_off if ran[tag] > 1]
        unrun_done = [tag for tag in one_off if records[tag]["status"] == "done" and ran[tag] != 1]
        ledger = scheduler._ledger()
        with ledger.engine.connect() as conn:
            keys = conn.execute(sa.select(ledger.runs.c.run_key)).scalars().all()
        print(
            f"\n[{broker}+{store}] accepted={len(accepted)} kills={KILLS} statuses={dict(statuses)} "
            f"runs={sum(ran.values())} lost={len(lost)} duplicate_runs={len(duplicates)} "
            f"elapsed={elapsed:.1f}s"
        )
        assert lost == []
        assert duplicates == []
        assert unrun_done == []
        assert len(keys) == len(set(keys))
        assert statuses["done"] >= len(accepted) * 0.8, statuses
        assert daemons[-1].terminate() == 0, daemons[-1].log()
    finally:
        for daemon in daemons:
            daemon.close()
        scheduler.shutdown()
