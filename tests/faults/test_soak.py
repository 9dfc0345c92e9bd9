"""A soak: many run-now jobs through one ``pscheduler``, printing its
resident memory (``VmRSS``) at start, after a warm-up and at the end.

Redis broker and PostgreSQL job store: the daemon's own memory is then what
is measured. With the SQLite default, the job store's and the broker's
SQLite page caches live inside the daemon and grow with their files, which
would hide (or pass for) a leak of the daemon's.

``SOAK_JOBS`` (default 200) sets the count; the target is under 50 MB of
growth for 100,000 (``SOAK_JOBS=100000 nice -n 10 python3 dev.py test
tests/faults/test_soak.py``). The check is proportionate: 10 MB plus 40 MB
per 100,000 jobs, measured from the end of the warm-up (the first tenth).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pyramid.config import Configurator

from conftest import make_settings
from daemons import Daemon, wait_until, write_ini
from integration.sampleapp import jobs

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(4 * 3600)]

JOBS = int(os.environ.get("SOAK_JOBS", "200"))
BUDGET_MB = 10 + 40 * JOBS / 100_000


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_soak_run_now_jobs_rss_stays_flat(tmp_path: Path, drop_tables: Any) -> None:
    var = tmp_path / "var"
    var.mkdir()
    settings = make_settings(var, "redis", "postgresql", **{"executor.max_workers": "4"})
    drop_tables.append((settings["scheduler.jobstore.url"], settings["scheduler.jobstore.tablename_prefix"]))
    ini = write_ini(tmp_path / "daemon.ini", settings)
    config = Configurator(settings=settings)
    config.include("pyramid_scheduler")
    config.commit()
    scheduler = config.registry.scheduler
    ledger = scheduler._ledger()

    def done() -> int:
        with ledger.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(ledger.runs).where(ledger.runs.c.status == "done")
                ).scalar_one()
            )

    def wait_done(count: int, what: str) -> None:
        wait_until(lambda: done() >= count, what, timeout=600, interval=0.5, alive=(daemon,))

    daemon = Daemon.start(ini)
    try:
        daemon.wait_consuming()
        start = rss_mb(daemon.pid)
        began = time.monotonic()
        warm_up = max(1, JOBS // 10)
        warm = 0.0
        sent = 0
        # Publish in batches that the daemon keeps up with, so the broker's
        # backlog (not the daemon) does not hold the jobs.
        batch = 500
        while sent < JOBS:
            for _ in range(min(batch, JOBS - sent)):
                scheduler.add_async_job(jobs.noop, args=[sent], id=f"soak-{sent}")
                sent += 1
            wait_done(sent - batch, f"{sent - batch} runs done")
            if sent % 5000 < batch:
                print(
                    f"[soak] sent={sent} RSS={rss_mb(daemon.pid):.1f} MB after {time.monotonic() - began:.0f}s",
                    flush=True,
                )
            if not warm and sent >= warm_up:
                wait_done(warm_up, "the warm-up")
                warm = rss_mb(daemon.pid)
        wait_done(JOBS, f"all {JOBS} runs done")
        elapsed = time.monotonic() - began
        time.sleep(1)
        end = rss_mb(daemon.pid)
        print(
            f"\n[soak redis+postgresql] jobs={JOBS} done={done()} in {elapsed:.0f}s "
            f"({JOBS / elapsed:.0f}/s) RSS start={start:.1f} MB after warm-up={warm:.1f} MB "
            f"end={end:.1f} MB growth since warm-up={end - warm:.1f} MB (budget {BUDGET_MB:.1f} MB)"
        )
        assert done() == JOBS
        assert end - warm < BUDGET_MB
        assert daemon.terminate() == 0, daemon.log()[-3000:]
    finally:
        daemon.close()
        scheduler.shutdown()
