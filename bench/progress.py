"""Progress reports: what :func:`pyramid_scheduler.report_progress` costs a job (issue 21).

``python -m bench --only progress``: one ``pscheduler`` on the embedded
SQLite default runs, by turns, :func:`loop` with ``report=True`` (a
``report_progress(done=i, total=N)`` call on every turn of a 10,000-turn
loop) and the same job with ``report=False``; each run times its own loop
(``time.perf_counter`` inside the job, so the enqueue and the daemon's
polling are not in it) and returns the seconds. The part gives the median of
each over the rounds, and the difference per call: the price of a call,
including the throttled writes (at most one store write and event per
0.5 s of the run).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench.systems import Ours, log

#: Calls of report_progress per run.
CALLS = 10_000


def loop(calls: int, report: bool) -> float:
    """The job: *calls* turns of a little arithmetic, each reporting its
    progress when *report*; the seconds the loop took."""
    from pyramid_scheduler import report_progress

    started = time.perf_counter()
    total = 0
    for done in range(1, calls + 1):
        total += done * done % 7
        if report:
            report_progress(done=done, total=calls, message="items")
    return time.perf_counter() - started


def measure(tmp: Path, calls: int, rounds: int) -> dict[str, Any]:
    """*rounds* runs of each job through one daemon; their timings."""
    system = Ours("sqlite", tmp)
    system.key = "progress"
    timings: dict[bool, list[float]] = {True: [], False: []}
    worker = system.start_worker()
    try:
        for _ in range(rounds):
            for report in (False, True):
                job_id = system.proxy.add_async_job(loop, args=[calls, report])
                record = system.proxy.wait(job_id, timeout=120)
                if record["status"] != "done":
                    raise RuntimeError(f"progress: job {job_id} ended {record['status']}: {record['error']}")
                timings[report].append(float(record["result"]))
    finally:
        worker.stop()
        system.close()
    without, with_ = statistics.median(timings[False]), statistics.median(timings[True])
    return {
        "broker": "sqlite",
        "calls": calls,
        "rounds": rounds,
        "without_ms": without * 1000,
        "with_ms": with_ * 1000,
        "us_per_call": (with_ - without) * 1e6 / calls,
    }


def rst(results: dict[str, Any]) -> str:
    """The part's table for docs/performance.rst (``docs/_bench/progress.rst``)."""
    result = results.get("progress")
    if not result:
        return "The progress part was not measured (``python -m bench --only progress``).\n"
    rows = [
        ("the job without report_progress", f"{result['without_ms']:.1f} ms"),
        (f"the job with {result['calls']:,} report_progress calls", f"{result['with_ms']:.1f} ms"),
        ("the price of one call", f"{result['us_per_call']:.2f} µs"),
    ]
    width = max(len(name) for name, _ in rows)
    rule = f"{'=' * width} {'=' * 12}"
    lines = [rule, f"{'run (median of ' + str(result['rounds']) + ')':<{width}} loop time", rule]
    lines += [f"{name:<{width}} {value}" for name, value in rows]
    lines += [rule, "", f"Measured {result.get('when', '')}.", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace, tmp: Path, results: dict[str, Any]) -> None:
    """The ``progress`` part of ``python -m bench``, into ``results["progress"]``."""
    result = results["progress"] = measure(tmp, CALLS, 3 if args.quick else 10)
    result["when"] = f"on {results['date']} with ``{results['command']}``"
    log(
        f"progress: {CALLS:,} report_progress calls: {result['with_ms']:.1f} ms with, "
        f"{result['without_ms']:.1f} ms without ({result['us_per_call']:.2f} us per call)"
    )
