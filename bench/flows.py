"""``python -m bench.flows``: what a chain step's hand-over costs next to a plain run-now job.

One ``pscheduler`` per broker (the embedded SQLite default; Redis with the
PostgreSQL job store when both answer). Two measures, one after the other,
small sizes, one run:

* **plain**: ``add_async_job`` of :func:`bench.jobs.record`, one at a time
  (each waits for the one before to start): the time from just before the
  call to the job's start (the run-now latency of :mod:`bench.run`, unloaded);
* **chain**: one ``scheduler.chain`` of :func:`bench.jobs.step` steps: for
  each step after the first, the time from the end of the step before (its
  result) to its own start -- the hand-over: the next step recorded in the
  transaction of the previous one's end, stored due in the job store, taken
  by the scheduler (:mod:`pyramid_scheduler.store.flows`).

Writes ``bench/flows.json`` and prints the figures (milliseconds).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import jobs
from bench.systems import ROOT, Ours, log, service_up, summary, wait_for

JSON_OUT = ROOT / "bench" / "flows.json"


def measure(broker: str, steps: int, tmp: Path) -> dict[str, Any]:
    system = Ours(broker, tmp)
    proxy = system.proxy
    worker = system.start_worker()
    try:
        warm = str(tmp / f"{broker}-warm")
        system.enqueue(warm, "w", time.time())
        wait_for(lambda: jobs.read(warm), 120)

        plain = str(tmp / f"{broker}-plain")
        for index in range(steps):
            proxy.add_async_job(jobs.record, args=[plain, f"p{index}", time.time()])
            wait_for(lambda index=index: len(jobs.read(plain)) > index, 60, 0.002)
        plain_lat = [started - sent for _, sent, started in jobs.read(plain)]

        chained = str(tmp / f"{broker}-chain")
        first = proxy.step(jobs.step, time.time(), chained, "s0")
        flow = proxy.chain(first, *(proxy.step(jobs.step, chained, f"s{index}") for index in range(1, steps + 1)))
        wait_for(lambda: len(jobs.read(chained)) > steps, 120, 0.01)
        rows = sorted(jobs.read(chained), key=lambda row: int(row[0][1:]))
        hand_over = [started - sent for _, sent, started in rows[1:]]
        assert proxy.get_job(flow.last)["status"] == "done"
    finally:
        worker.stop()
        system.close()
    return {"plain_run_now": summary(plain_lat), "chain_hand_over": summary(hand_over)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="plain jobs, and chain steps after the first")
    parser.add_argument("--sqlite-only", action="store_true", help="not Redis with PostgreSQL")
    parser.add_argument("--out", type=Path, default=JSON_OUT, help=f"the JSON file (default {JSON_OUT})")
    args = parser.parse_args(argv)
    services = service_up("redis") and service_up("postgresql") and not args.sqlite_only
    brokers = ["sqlite"] + (["redis"] if services else [])
    results: dict[str, Any] = {"steps": args.steps, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory() as tmp:
        for broker in brokers:
            log(f"flows: {broker}, {args.steps} plain run-now jobs, then a chain of {args.steps + 1} steps")
            results[broker] = figures = measure(broker, args.steps, Path(tmp))
            for name, row in figures.items():
                log(f"  {name}: p50 {row['p50']:.1f} ms, p90 {row['p90']:.1f} ms, max {row['max']:.1f} ms")
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
