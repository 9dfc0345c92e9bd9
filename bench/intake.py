"""Date-job intake: how fast daemons store a burst of date jobs (issue 19).

``python -m bench --only intake``: for each setup (Redis broker and
PostgreSQL job store with one daemon, then with ``pscheduler --processes
2``; the embedded SQLite default with one daemon, for reference), N
``add_date_job`` calls, each due at its own time tomorrow, fill the queue
while no daemon runs; then ``pscheduler`` starts and stores them. The rate
is the jobs stored less one, divided by the time from the first job record's
``created_at`` to the last's (the daemon's own clock, so the producer's
speed and the daemon's start-up are not in it); the CPU per job is the
daemon processes' CPU time (user + system) from the first record to the
last, per job stored meanwhile. The profile (:func:`profile_intake`) is
py-spy on one daemon storing such a burst.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import jobs
from bench.systems import Ours, Worker, log, service_up, wait_for

#: (key, broker, daemon processes): the setups measured, in this order.
SETUPS = (("redis-1", "redis", 1), ("redis-2", "redis", 2), ("sqlite-1", "sqlite", 1))
#: Seconds between two looks at the records stored.
POLL = 0.25


def fill(system: Ours, count: int) -> float:
    """Send *count* date jobs due tomorrow (each at its own time, within a
    day); seconds taken."""
    started = time.monotonic()
    tomorrow = time.time() + 86400
    for i in range(count):
        system.proxy.add_date_job(jobs.record, tomorrow + 86400 * i / count, args=["/dev/null", "i", 0.0])
    return time.monotonic() - started


def stored(system: Ours) -> tuple[int, float | None, float | None]:
    """How many job records are stored, and the first and last ``created_at``."""
    import sqlalchemy as sa

    ledger = system.proxy._ledger()
    jobs_t = ledger.jobs
    query = sa.select(sa.func.count(), sa.func.min(jobs_t.c.created_at), sa.func.max(jobs_t.c.created_at))
    with ledger.engine.connect() as conn:
        count, first, last = conn.execute(query).one()
    return int(count), first, last


def tenths(system: Ours) -> tuple[float, float]:
    """Jobs per second stored over the first and the last tenth of the
    records (NaN for fewer than 10,000)."""
    import sqlalchemy as sa

    ledger = system.proxy._ledger()
    with ledger.engine.connect() as conn:
        times = conn.execute(sa.select(ledger.jobs.c.created_at).order_by(ledger.jobs.c.created_at)).scalars().all()
    tenth = len(times) // 10
    if tenth < 1000:  # a few batches (each stored at once): no rate to speak of
        return float("nan"), float("nan")

    def rate(span: float) -> float:
        return (tenth - 1) / span if span > 0 else float("nan")

    return rate(times[tenth - 1] - times[0]), rate(times[-1] - times[-tenth])


def held(system: Ours) -> dict[str, int]:
    """Rows of APScheduler's table by the daemon that claimed them."""
    import sqlalchemy as sa

    from pyramid_scheduler.store.tables import aps_tablename

    ledger = system.proxy._ledger()
    name = aps_tablename(system.settings["scheduler.jobstore.tablename_prefix"], "jobs")
    table = sa.Table(name, sa.MetaData(), sa.Column("id"), sa.Column("claimed_by"))
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.claimed_by, sa.func.count()).group_by(table.c.claimed_by)).all()
    return {str(owner): int(n) for owner, n in rows}


def start(system: Ours, processes: int) -> Worker:
    argv = [sys.executable, "-m", "pyramid_scheduler.scripts", str(system.ini)]
    if processes > 1:
        argv += ["--processes", str(processes)]
    system.workers += 1
    return Worker(argv, system.tmp / f"{system.key}-{system.workers}.log")


def measure_intake(key: str, broker: str, processes: int, count: int, timeout: float, tmp: Path) -> dict[str, Any]:
    """Fill a queue with *count* date jobs, start *processes* daemons, and
    time their storing (see the module)."""
    system = Ours(broker, tmp)
    system.key = f"intake-{key}"
    result: dict[str, Any] = {"broker": broker, "processes": processes, "jobs": count}
    try:
        log(f"intake {key}: sending {count:,} date jobs due tomorrow, no daemon running")
        result["fill_s"] = fill(system, count)
        worker = start(system, processes)
        try:
            wait_for(lambda: not worker.alive() or stored(system)[0], 120, 0.02)
            first_count, cpu0 = stored(system)[0], worker.cpu_s()
            deadline = time.monotonic() + timeout
            while worker.alive() and time.monotonic() < deadline:
                if stored(system)[0] >= count:
                    break
                time.sleep(POLL)
            cpu1 = worker.cpu_s()
            done, first, last = stored(system)
            result["first_tenth_jobs_per_s"], result["last_tenth_jobs_per_s"] = tenths(system)
            if processes > 1:
                result["held"] = sorted(held(system).values(), reverse=True)
            if not worker.alive():
                raise RuntimeError(f"intake {key}: the daemon exited; see {worker.log_path}")
        finally:
            worker.stop()
    finally:
        system.close()
    span = (last or 0.0) - (first or 0.0)
    result["stored"] = done
    result["span_s"] = span
    result["jobs_per_s"] = (done - 1) / span if done > 1 and span > 0 else float("nan")
    result["cpu_ms_per_job"] = (cpu1 - cpu0) * 1000 / (done - first_count) if done > first_count else float("nan")
    if done < count:
        result["incomplete"] = f"{done:,} of {count:,} jobs stored in {timeout:g} s"
    log(
        f"intake {key}: {done:,} date jobs stored at {result['jobs_per_s']:,.0f} jobs/s, "
        f"{result['cpu_ms_per_job']:.2f} ms of daemon CPU per job"
    )
    return result


def run(args: argparse.Namespace, tmp: Path, results: dict[str, Any], out_dir: Path) -> None:
    """The ``intake`` part of ``python -m bench``: every setup into
    ``results["intake"]``, and the profile into *out_dir*."""
    count = args.intake
    runs = []
    for key, broker, processes in SETUPS:
        if broker != "sqlite" and not (service_up("redis") and service_up("postgresql")):
            results["skipped"][f"intake-{key}"] = "redis or postgresql not reachable"
            continue
        # The SQLite default is a reference: a tenth of the burst at most.
        n = count if broker != "sqlite" else min(count, max(1000, count // 10))
        runs.append(measure_intake(key, broker, processes, n, args.intake_timeout, tmp))
    results["intake"] = runs
    results["intake_run"] = (
        f"on {results['date']} with ``{results['command']}`` (load average {os.getloadavg()[0]:.1f} after it)"
    )
    if service_up("redis") and service_up("postgresql"):
        log("intake: profile of one daemon storing date jobs (py-spy)")
        print(profile_intake(min(count, 30000), out_dir, 3 if args.quick else 8))


def profile_intake(count: int, out: Path, seconds: float) -> str:
    """py-spy samples of the thread holding the GIL in a ``pscheduler``
    storing *count* date jobs from Redis into PostgreSQL, taken from its first
    stored record; the report, also in ``out/profile-intake.txt``."""
    import tempfile

    from bench.profile import breakdown, sample

    with tempfile.TemporaryDirectory() as tmpdir:
        system = Ours("redis", Path(tmpdir))
        system.key = "intake-profile"
        raw = out / "intake.collapsed"
        try:
            fill(system, count)
            worker = start(system, 1)
            try:
                wait_for(lambda: not worker.alive() or stored(system)[0], 120, 0.01)
                before, cpu0 = stored(system)[0], worker.cpu_s()
                spy = sample(worker.proc.pid, seconds, raw, gil=True)
                done, cpu = stored(system)[0] - before, worker.cpu_s() - cpu0
                if done >= count - before:
                    log("intake: the burst was stored before the sampling ended (samples of an idle daemon)")
            finally:
                worker.stop()
        finally:
            system.close()
    if spy.returncode != 0:
        return f"py-spy failed: {spy.stderr.strip()}"
    total, lines_of = breakdown(raw, top=50)
    lines = [
        f"pscheduler storing date jobs due tomorrow from a filled Redis queue (PostgreSQL job store): "
        f"{done:,} jobs stored in {seconds:g} s of sampling ({done / seconds:,.0f} jobs/s, slowed by the "
        f"sampling; {1000 * cpu / max(done, 1):.2f} ms of the daemon's CPU per job); {total} samples of the "
        f"thread holding the GIL (where the CPU goes; {100 * total / (250 * seconds):.0f} % of the time).",
        "",
        *lines_of["groups"],
        "",
        *lines_of["inclusive"],
    ]
    report = "\n".join(lines)
    (out / "profile-intake.txt").write_text(report + "\n", encoding="utf-8")
    return report


def rst(results: dict[str, Any]) -> list[str]:
    """The intake table and its target, as reST lines (none without the part)."""
    from bench.report import _fmt, _table

    runs = results.get("intake") or []
    if not runs:
        return []
    rows = [
        [
            {"redis": "Redis, PostgreSQL", "sqlite": "embedded SQLite"}[r["broker"]],
            str(r["processes"]),
            f"{r['stored']:,} of {r['jobs']:,}",
            _fmt(r["jobs_per_s"]),
            f"{_fmt(r.get('first_tenth_jobs_per_s'))} / {_fmt(r.get('last_tenth_jobs_per_s'))}",
            _fmt(r["cpu_ms_per_job"], 3),
            _fmt(r["fill_s"]),
        ]
        for r in runs
    ]
    lines = [".. rubric:: Date-job intake: a burst of date jobs due tomorrow, stored by the daemons", ""]
    lines += _table(
        [
            "broker, job store",
            "daemons",
            "jobs stored",
            "stored (jobs/s)",
            "first / last tenth (jobs/s)",
            "daemon CPU (ms/job)",
            "send (s)",
        ],
        rows,
    )
    incomplete = [f"{r['broker']} × {r['processes']}: {r['incomplete']}" for r in runs if r.get("incomplete")]
    if incomplete:
        lines += ["Incomplete: " + "; ".join(incomplete) + ".", ""]
    if results.get("intake_run"):
        lines += [f"Measured {results['intake_run']}.", ""]
    lines += [".. rubric:: Target of issue 19 in this run", ""]
    rows = [
        [name, text, "—" if met is None else ("met" if met else "**not met**")] for name, text, met in targets(results)
    ]
    return lines + _table(["target", "measured", ""], rows, "40 45 15")


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """Issue 19's intake target for this run: ≥ 2,000 jobs/s by one daemon
    on Redis + PostgreSQL, and more with two."""
    runs = {(r["broker"], r["processes"]): r for r in results.get("intake") or []}
    one, two = runs.get(("redis", 1)), runs.get(("redis", 2))
    out: list[tuple[str, str, bool | None]] = []
    if one is None:
        return out
    from bench.report import _fmt

    size = f"{one['jobs']:,}"
    rate = one["jobs_per_s"]
    out.append(
        (
            f"{size} date jobs stored at ≥ 2,000 jobs/s by one daemon (Redis, PostgreSQL)",
            f"{_fmt(rate)} jobs/s ({_fmt(one['cpu_ms_per_job'], 3)} ms of CPU per job)",
            None if rate != rate else rate >= 2000 and not one.get("incomplete"),
        )
    )
    if two is not None:
        out.append(
            (
                "more with two daemons (--processes 2)",
                f"{_fmt(two['jobs_per_s'])} jobs/s ({two['jobs_per_s'] / rate:.2f}× one daemon)",
                None if two["jobs_per_s"] != two["jobs_per_s"] else two["jobs_per_s"] > rate,
            )
        )
    return out
