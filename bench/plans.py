"""The run writer's cost per job as its tables grow from empty in one
PostgreSQL session, with the package's plan per statement and with
PostgreSQL's default plan cache: ``python -m bench.plans``.

Each round stores run-now job records (one multi-row ``INSERT`` of 64, as
the consumer does), then writes their run starts and the previous batch's
run ends through :meth:`pyramid_scheduler.store.ledger.Ledger.write_runs`, a few at a time, as the
run writer does with ten workers busy; it prints the wall time per job of
those writes for each slice of ``--step`` jobs.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import sqlalchemy as sa

from pyramid_scheduler.store.db import create_db_engine
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.records import RunEnd, RunStart

URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def request(job_id: str) -> dict[str, Any]:
    return {
        "id": job_id,
        "queue": "jobs",
        "func": "bench.jobs:noop",
        "trigger": {"type": "now"},
        "mid": f"m-{job_id}",
        "args": [],
        "kwargs": {},
        "options": {},
    }


def grow(plan_cache_mode: str, jobs: int, step: int, batch: int) -> list[tuple[int, float]]:
    """(jobs so far, ms of run writes per job over the last *step* jobs)."""
    engine = create_db_engine(URL)
    if plan_cache_mode != "force_custom_plan":  # undo the package's session setting

        @sa.event.listens_for(engine, "connect")
        def _mode(dbapi_conn: Any, record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute(f"SET plan_cache_mode = {plan_cache_mode}")
            cursor.close()
            dbapi_conn.commit()

    ledger = Ledger(engine, f"plans{os.getpid()}_")
    figures, spent, previous = [], 0.0, []
    try:
        for first in range(0, jobs, 64):
            ids = [f"j{i}" for i in range(first, first + 64)]
            ledger.add_jobs([request(job) for job in ids])
            for start in range(0, len(ids), batch):
                starts = ids[start : start + batch]
                ends = [RunEnd(job, f"{job}@1", "done", True) for job in previous]
                began = time.perf_counter()
                ledger.write_runs([RunStart(job, "jobs", f"{job}@1", 1.0, "bench") for job in starts], ends)
                spent += time.perf_counter() - began
                previous = starts
            if (first + 64) % step == 0:
                figures.append((first + 64, spent / step * 1e3))
                spent = 0.0
    finally:
        ledger.metadata.drop_all(engine)
        engine.dispose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.plans", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=21504)
    parser.add_argument("--step", type=int, default=3072, help="jobs per printed figure (a multiple of 64)")
    parser.add_argument("--batch", type=int, default=5, help="run starts (and ends) per write")
    args = parser.parse_args()
    modes = ("force_custom_plan", "auto")
    results = {mode: grow(mode, args.jobs, args.step, args.batch) for mode in modes}
    print(
        f"run starts and ends written {args.batch} + {args.batch} at a time, PostgreSQL ({URL}); "
        "ms per job (start and end) as the tables grow from empty in one session"
    )
    print(f"{'jobs':>8}  {'plan per statement':>18}  {'default plan cache':>18}")
    for (count, ours), (_, default) in zip(*results.values(), strict=True):
        print(f"{count:>8,}  {ours:>18.3f}  {default:>18.3f}")


if __name__ == "__main__":
    main()
