"""Flow control's cost on the drain: priorities and expiry (issue 22).

``python -m bench --only flow``: for each setup (the embedded SQLite
default; Redis broker and PostgreSQL job store when they are up), three
drains of N run-now jobs queued while no daemon runs, each on a fresh queue
and job store, in one run: *plain* (no flow option), *priority* (priorities
0 to 9 mixed, ``i % 10``: the worker pool orders every batch) and *expires*
(each job with ``expires=3600``: checked at the door and at the run's
start). The rate is the jobs started less one, divided by the time from the
first start to the last (the daemon's own work, not the producer's); the
CPU per job is the daemon's CPU time over the same span. The priority drain
also counts the *inversions*: pairs of consecutive starts where a lower
priority started before a higher one sent earlier (runs taken before the
whole backlog was in the pool, and the aging, make some).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import jobs
from bench.systems import Ours, log, service_up, wait_for

#: (key, broker): the setups measured, in this order.
SETUPS = (("sqlite", "sqlite"), ("redis", "redis"))
#: What each drain adds to ``add_async_job``, by its name.
LANES: dict[str, Callable[[int], dict[str, Any]]] = {
    "plain": lambda i: {},
    "priority": lambda i: {"priority": i % 10},
    "expires": lambda i: {"expires": 3600},
}


def drain(broker: str, lane: str, count: int, timeout: float, tmp: Path) -> dict[str, Any]:
    """Queue *count* jobs of *lane* with no daemon, start one, and time its drain."""
    system = Ours(broker, tmp)
    path = str(tmp / f"flow-{broker}-{lane}.txt")
    options = LANES[lane]
    try:
        for i in range(count):
            system.proxy.add_async_job(jobs.record, args=[path, f"p{options(i).get('priority', 0)}", 0.0], **options(i))
        worker = system.start_worker()
        try:
            wait_for(lambda: not worker.alive() or jobs.read(path), 120, 0.02)
            cpu0, first = worker.cpu_s(), len(jobs.read(path))
            wait_for(lambda: not worker.alive() or len(jobs.read(path)) >= count, timeout, 0.05)
            cpu1 = worker.cpu_s()
        finally:
            worker.stop()
        rows = jobs.read(path)
    finally:
        system.close()
    starts = sorted(row[2] for row in rows)
    done = len(starts)
    span = starts[-1] - starts[0] if done > 1 else 0.0
    result = {
        "jobs": count,
        "done": done,
        "jobs_per_s": (done - 1) / span if span > 0 else float("nan"),
        "cpu_ms_per_job": (cpu1 - cpu0) * 1000 / (done - first) if done > first else float("nan"),
    }
    if lane == "priority":
        order = [int(tag[1:]) for tag, _sent, _started in sorted(rows, key=lambda row: row[2])]
        result["inversions"] = sum(1 for a, b in zip(order, order[1:], strict=False) if a < b)
    return result


def run(args: argparse.Namespace, tmp: Path, results: dict[str, Any]) -> None:
    """Measure every setup whose services are up into ``results["flow"]``."""
    count = args.flow
    figures: dict[str, Any] = {}
    for key, broker in SETUPS:
        if broker == "redis" and not (service_up("redis") and service_up("postgresql")):
            results["skipped"][f"flow-{key}"] = "redis or postgresql not reachable"
            continue
        figures[key] = {}
        for lane in LANES:
            log(f"flow {key}: drain of {count} run-now jobs, {lane}")
            figures[key][lane] = drain(broker, lane, count, args.drain_timeout, tmp)
            log(
                f"flow {key} {lane}: {figures[key][lane]['done']}/{count} at "
                f"{figures[key][lane]['jobs_per_s']:.0f} jobs/s, {figures[key][lane]['cpu_ms_per_job']:.2f} ms CPU/job"
            )
    results["flow"] = {"jobs": count, "setups": figures}
