"""The cost of the flow limits (:doc:`flow`): ``python -m bench.limits``.

One ``pscheduler`` on Redis with its job store on PostgreSQL, in one run,
three ways in turn on the same daemon: no-op run-now jobs with no limit,
with a concurrency key (``max_concurrency`` above the daemon's threads, so
that no run waits: the cost of taking and giving back a slot), and with a
rate limit above the drain rate (no run waits: the cost of reserving a
start). For each: the drain rate (the daemon paused while the queue fills)
and the run-now latency at a steady :data:`~bench.systems.RATE` per second
(``started - sent``). The figures are printed as JSON, and go into
docs/performance.rst by hand.

Small by default (``--drain 1000 --latency 200``): on a shared machine,
read the differences between the three, not the absolute rates.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import jobs
from bench.scaleout import check, drain, latency
from bench.systems import Ours, log, wait_for

#: The job options of each way; the limits never hold a run back.
WAYS: dict[str, dict[str, Any]] = {
    "none": {},
    "concurrency_key": {"max_concurrency": 1000, "concurrency_key": "bench"},
    "rate_limit": {"rate_limit": "1000000/s", "rate_key": "bench"},
}


def measure(sizes: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    system = Ours("redis", tmp, **{"limits.poll": "0.1"})
    system.key = "limits"
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "ways": {}}
    worker = system.start_worker()
    try:
        wait_for(lambda: not worker.alive() or system.live_daemons() >= 1, 90, 0.1)
        warm = str(tmp / "warm.txt")
        for _ in range(20):
            system.enqueue(warm, "w", time.time())
        wait_for(lambda: not worker.alive() or len(jobs.read(warm)) >= 20, 90, 0.05)
        check([worker], "limits")
        for way, options in WAYS.items():

            def enqueue(path: str, tag: str, sent: float, options: dict[str, Any] = options) -> None:
                system.proxy.add_async_job(jobs.record, args=[path, tag, sent], **options)

            result = {
                "drain": drain([worker], enqueue, str(tmp / f"{way}-drain.txt"), sizes.drain, sizes, False),
                "latency": latency([worker], enqueue, str(tmp / f"{way}-latency.txt"), sizes.latency, sizes.grace),
            }
            check([worker], way)
            out["ways"][way] = result
            log(
                f"limits {way}: drain {result['drain']['jobs_per_s']:.0f} jobs/s, "
                f"run-now p50 {result['latency']['p50']:.2f} ms, p99 {result['latency']['p99']:.2f} ms"
            )
    finally:
        worker.stop()
        system.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--drain", type=int, default=1000, help="jobs per drain")
    parser.add_argument("--latency", type=int, default=200, help="jobs per latency series")
    parser.add_argument("--fill-timeout", type=float, default=120.0)
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--grace", type=float, default=30.0)
    sizes = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(sizes, Path(tmp)), indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
