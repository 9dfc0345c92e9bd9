"""Run the benchmark suite: ``python -m bench`` (``--help`` for the options).

One run measures, on this machine, pyramid_scheduler on Redis and RabbitMQ
(PostgreSQL job store) and on the embedded SQLite default (SQLite job store),
the raw broker loops with the same payload (:mod:`bench.raw`) and Celery with
the same broker (:mod:`bench.celery_app`), then several daemons and
processes against Celery, Dramatiq and huey (:mod:`bench.scaleout`), and writes ``bench/results.json``,
``docs/_bench/results.rst`` (included by docs/performance.rst) and the PNG
plots next to it. The method is described in docs/performance.rst.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import jobs
from bench.systems import (
    AMQP_URL,
    DOCS_OUT,
    JSON_OUT,
    POSTGRES_URL,
    RATE,
    REDIS_URL,
    REFERENCE,
    CeleryApp,
    Ours,
    Raw,
    System,
    Worker,
    log,
    service_up,
    sleep_until,
    summary,
    timed,
    wait_for,
)


def enqueue_figures(costs: list[float]) -> dict[str, Any]:
    figures = summary(costs)
    figures["calls_per_s"] = len(costs) / sum(costs) if costs else float("nan")
    return figures


def wait_count(path: str, count: int, timeout: float, worker: Worker) -> list[tuple[str, float, float]]:
    def enough() -> bool:
        return not worker.alive() or len(jobs.read(path)) >= count

    wait_for(enough, timeout, 0.1)
    return jobs.read(path)


def restart(factory: Callable[[], System], system: System, worker: Worker, warm: Path) -> tuple[System, Worker]:
    """Drop *system*'s queue and store, start a fresh one and wait for its
    worker to run a first job."""
    worker.stop()
    system.close()
    system = factory()
    worker = system.start_worker()
    system.enqueue(str(warm), "w", time.time())
    wait_count(str(warm), 1, 120, worker)
    return system, worker


def measure(factory: Callable[[], System], sizes: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Enqueue cost (worker stopped, filling the queue), drain of that queue,
    run-now latency at a steady rate (also with ``durable=False`` where the
    system has it), date-job lateness.

    A drain still running after ``--drain-timeout`` is reported as the rate
    so far; its queue and job store are then dropped and the later parts
    start on fresh ones. Jobs not started ``--grace`` seconds after the last
    one was due count as missing.
    """
    system = factory()
    result: dict[str, Any] = {"name": system.name}
    drain_path = str(tmp / f"{system.key}-drain.txt")
    log(f"{system.key}: enqueue {sizes.drain} run-now jobs (at most {sizes.fill_timeout:g} s), worker stopped")
    costs = timed(system.enqueue, drain_path, "d", sizes.drain, sizes.fill_timeout)
    result["enqueue"] = enqueue_figures(costs)
    result["enqueue_costs_ms"] = [round(c * 1000, 4) for c in costs[:: max(1, len(costs) // 2000)]]
    expected = len(costs)
    if system.has_tx:
        tx = timed(system.enqueue_tx, drain_path, "t", sizes.enqueue_tx, sizes.fill_timeout / 4)
        result["enqueue_tx"] = enqueue_figures(tx)
        expected += len(tx)
    log(f"{system.key}: enqueue p50 {result['enqueue']['p50']:.3f} ms; drain {expected} jobs")
    worker = system.start_worker()
    try:
        # CPU per job: the worker's CPU time from its first job to the end of the drain.
        wait_for(lambda: not worker.alive() or jobs.read(drain_path), 120, 0.02)
        cpu0, first = worker.cpu_s(), len(jobs.read(drain_path))
        rows = wait_count(drain_path, expected, sizes.drain_timeout, worker)
        cpu1 = worker.cpu_s()
        starts = sorted(row[2] for row in rows)
        done = len(starts)
        rate = (done - 1) / (starts[-1] - starts[0]) if done > 1 and starts[-1] > starts[0] else float("nan")
        cpu_ms = (cpu1 - cpu0) * 1000 / (done - first) if done > first else float("nan")
        result["drain"] = {"jobs": expected, "done": done, "jobs_per_s": rate, "cpu_ms_per_job": cpu_ms}
        log(f"{system.key}: drained {done}/{expected} at {rate:.0f} jobs/s")
        if not worker.alive():
            raise RuntimeError(f"{system.key}: the worker exited; see {worker.log_path}")
        if expected < sizes.drain:
            result["incomplete"] = f"drain: {expected:,} jobs queued in {sizes.fill_timeout:g} s, not {sizes.drain:,}"
        if done < expected:
            result["incomplete"] = (
                f"{result['incomplete'] + '; ' if 'incomplete' in result else ''}drain: "
                f"{done:,} of {expected:,} queued jobs run in {sizes.drain_timeout:g} s"
            )
            system, worker = restart(factory, system, worker, tmp / f"{system.key}-warm1.txt")

        lanes = [("latency", "run-now", system.enqueue)]
        if system.has_fast:
            lanes.append(("latency_fast", "run-now durable=False", system.enqueue_fast))
        for key, what, enqueue in lanes:
            lat_path = str(tmp / f"{system.key}-{key}.txt")
            log(f"{system.key}: {what} latency, {sizes.latency} jobs at {RATE:g}/s")
            begin = time.time() + 0.2
            for i in range(sizes.latency):
                sleep_until(begin + i / RATE)
                enqueue(lat_path, "l", time.time())
            rows = wait_count(lat_path, sizes.latency, sizes.grace, worker)
            latencies = [started - sent for _tag, sent, started in rows]
            result[key] = summary(latencies)
            result[key]["missing"] = sizes.latency - len(rows)
            result[f"{key}_ms"] = sorted(round(x * 1000, 3) for x in latencies)
            log(f"{system.key}: {what} latency p50 {result[key]['p50']:.3f} ms")
            if len(rows) < sizes.latency:
                result.setdefault("incomplete", "")
                result["incomplete"] += (
                    f"{'; ' if result['incomplete'] else ''}{what}: {sizes.latency - len(rows):,} "
                    f"of {sizes.latency:,} jobs not started {sizes.grace:g} s after the last was sent"
                )
                system, worker = restart(factory, system, worker, tmp / f"{system.key}-warm-{key}.txt")

        if system.has_date:
            date_path = str(tmp / f"{system.key}-date.txt")
            # Send them ahead of time: 3× the enqueue time, plus (capped) 1.5× the
            # time the worker's drain rate says it needs to take them in.
            per_call = max(result["enqueue"]["p50"], 0.2) / 1000
            intake = 1.5 * sizes.date / rate if rate == rate and rate > 0 else sizes.lead_max
            base = time.time() + 2 + 3 * per_call * sizes.date + min(intake, sizes.lead_max)
            log(f"{system.key}: date-job lateness, {sizes.date} jobs over {sizes.date_span:g}s")
            for i in range(sizes.date):
                system.enqueue_at(date_path, "a", base + sizes.date_span * i / sizes.date)
            sleep_until(base + sizes.date_span)
            rows = wait_count(date_path, sizes.date, sizes.grace, worker)
            lateness = [started - when for _tag, when, started in rows]
            result["date"] = summary(lateness)
            result["date"]["missing"] = sizes.date - len(rows)
            result["date"]["early"] = sum(1 for x in lateness if x < 0)
            result["date_ms"] = sorted(round(x * 1000, 3) for x in lateness)
    finally:
        worker.stop()
        system.close()
    return result


# -- before/after the Redis client fix --------------------------------------------------


def client_fix_figures(tmp: Path, count: int) -> dict[str, Any]:
    """Enqueue cost on Redis with the channel's shared client (as shipped,
    "after") and with Kombu's own ``conn_or_acquire`` (a new redis client per
    operation, "before"), in this process with no worker running. The two
    alternate call by call, so both see the same machine."""
    from kombu.transport import redis as kombu_redis

    from pyramid_scheduler.brokers.redis import Channel

    system = Ours("redis", tmp)
    path = str(tmp / "fix.txt")
    shipped = Channel.__dict__["conn_or_acquire"]
    costs: dict[str, list[float]] = {"before": [], "after": []}
    try:
        timed(system.enqueue, path, "w", 200)  # warm up the pool
        for i in range(2 * count):
            label = "before" if i % 2 == 0 else "after"
            Channel.conn_or_acquire = kombu_redis.Channel.conn_or_acquire if label == "before" else shipped  # type: ignore[method-assign]
            costs[label] += timed(system.enqueue, path, "w", 1)
    finally:
        Channel.conn_or_acquire = shipped  # type: ignore[method-assign]
        system.close()
    return {label: enqueue_figures(values) for label, values in costs.items()}


# -- scale: pending date jobs in the PostgreSQL job store -------------------------------


def bulk_load(system: Ours, template_id: str, count: int) -> float:
    """Copy the job the daemon stored (*template_id*) *count* times, each
    with its own id and a date 1 to 2 days ahead, into the APScheduler table
    and the ledger with PostgreSQL ``COPY``, then ``VACUUM ANALYZE`` both and
    ``CHECKPOINT``. Seconds taken."""
    import copy
    import pickle
    from datetime import timedelta

    import psycopg

    from pyramid_scheduler.store.tables import aps_tablename

    started = time.monotonic()
    prefix = system.settings["scheduler.jobstore.tablename_prefix"]
    aps, ledger = aps_tablename(prefix, "jobs"), f"{prefix}jobs"
    dsn = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        found = conn.execute(f'select job_state from "{aps}" where id = %s', (template_id,)).fetchone()
        assert found is not None, f"the template job {template_id} is not in {aps}"
        state_bytes = found[0]
        columns = ["id", "queue", "func", "kind", "status", "mid", "request", "created_at", "updated_at", "runs"]
        ledger_row = conn.execute(
            f'select {", ".join(columns)} from "{ledger}" where id = %s', (template_id,)
        ).fetchone()
        assert ledger_row is not None, f"the template job {template_id} is not in {ledger}"
        state = pickle.loads(state_bytes)
        request = json.loads(ledger_row[6])
        base = datetime.now(timezone.utc) + timedelta(days=1)
        with conn.cursor() as cur:
            with cur.copy(f'COPY "{aps}" (id, next_run_time, job_state) FROM STDIN') as out:
                for i in range(count):
                    job_id = f"pending-{i}"
                    when = base + timedelta(seconds=86400 * i / count)
                    trigger = copy.copy(state["trigger"])
                    trigger.run_date = when
                    item = dict(state, id=job_id, trigger=trigger, next_run_time=when)
                    out.write_row((job_id, when.timestamp(), pickle.dumps(item, pickle.HIGHEST_PROTOCOL)))
            with cur.copy(f'COPY "{ledger}" ({", ".join(columns)}) FROM STDIN') as out:
                for i in range(count):
                    job_id = f"pending-{i}"
                    when = base + timedelta(seconds=86400 * i / count)
                    req = dict(
                        request,
                        id=job_id,
                        mid=uuid.uuid4().hex,
                        trigger=dict(request["trigger"], run_date=when.isoformat()),
                    )
                    out.write_row((job_id, *ledger_row[1:5], req["mid"], json.dumps(req), *ledger_row[7:]))
    # Settle the load before measuring: statistics, visibility map, and the
    # WAL written by COPY flushed, so no autovacuum or checkpoint lands on it.
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in (f'vacuum analyze "{aps}"', f'vacuum analyze "{ledger}"', "checkpoint"):
            try:
                conn.execute(statement)
            except psycopg.Error as exc:  # CHECKPOINT needs a superuser (or pg_checkpoint)
                log(f"scale: {statement}: {exc}")
    return time.monotonic() - started


def measure_scale(n: int, sizes: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    system = Ours("redis", tmp)
    system.key = f"scale-{n}"
    result: dict[str, Any] = {"n": n}
    try:
        worker = system.start_worker()
        template = system.proxy.add_date_job(jobs.record, time.time() + 86400 * 3, args=["/dev/null", "x", 0.0])
        wait_for(lambda: system.proxy.get_job(template), 60)
        worker.stop()
        result["load_s"] = bulk_load(system, template, n - 1)

        worker = system.start_worker()
        wait_for(lambda: not worker.alive() or system.active(), 120, 0.01)
        result["lease_s"] = time.time() - worker.started
        if not worker.alive():
            raise RuntimeError(f"scale {n}: the daemon exited; see {worker.log_path}")
        try:
            # Start-up: until the daemon takes in jobs, i.e. after its recovery
            # pass over the stored jobs (a probe job's record appears).
            probe = system.proxy.add_async_job(jobs.record, args=["/dev/null", "p", 0.0])
            wait_for(lambda: system.proxy.get_job(probe), 120, 0.01)
            result["startup_s"] = time.time() - worker.started
            # Add cost: the producer call, and the daemon's time to store a burst.
            ids: list[str] = []
            costs = []
            first = time.time()
            for _ in range(sizes.scale_adds):
                start = time.perf_counter()
                ids.append(
                    system.proxy.add_date_job(jobs.record, time.time() + 86400 * 2, args=["/dev/null", "x", 0.0])
                )
                costs.append(time.perf_counter() - start)
            wait_for(lambda: system.proxy.get_job(ids[-1]), 60, 0.01)
            result["add"] = summary(costs)
            result["store_ms_per_job"] = (time.time() - first) * 1000 / sizes.scale_adds
            # Lateness of date jobs that fire among the pending ones.
            path = str(tmp / f"scale-{n}-date.txt")
            base = time.time() + 2
            for i in range(sizes.scale_fires):
                system.enqueue_at(path, "a", base + 2 * i / sizes.scale_fires)
            sleep_until(base + 2)
            rows = wait_count(path, sizes.scale_fires, 15, worker)
            result["date"] = summary([started - when for _tag, when, started in rows])
            result["date"]["missing"] = sizes.scale_fires - len(rows)
            result["rss_mb"] = worker.rss_mb()
        finally:
            worker.stop()
    finally:
        system.close()
    log(
        f"scale {n}: start-up {result['startup_s']:.2f}s, add p50 {result['add']['p50']:.2f} ms, "
        f"store {result['store_ms_per_job']:.2f} ms/job, lateness p50 {result['date']['p50']:.1f} ms, "
        f"RSS {result['rss_mb']:.0f} MB"
    )
    return result


# -- output -----------------------------------------------------------------------------


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in (
        "pyramid_scheduler",
        "kombu",
        "redis",
        "amqp",
        "pika",
        "celery",
        "dramatiq",
        "huey",
        "APScheduler",
        "SQLAlchemy",
        "psycopg",
    ):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass

    import redis

    try:
        found["redis-server"] = str(redis.Redis.from_url(REDIS_URL).info("server")["redis_version"])
    except redis.RedisError:
        pass
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            found["postgresql"] = str(conn.execute(sa.text("show server_version")).scalar())
        engine.dispose()
    except Exception:  # noqa: BLE001 - informational
        pass
    try:
        import pika

        from bench.raw import pika_url

        conn = pika.BlockingConnection(pika.URLParameters(pika_url(AMQP_URL)))
        found["rabbitmq"] = conn._impl.server_properties.get("version", b"?")  # type: ignore[attr-defined]
        if isinstance(found["rabbitmq"], bytes):
            found["rabbitmq"] = found["rabbitmq"].decode()
        conn.close()
    except Exception:  # noqa: BLE001 - informational
        pass
    found["sqlite"] = __import__("sqlite3").sqlite_version
    found["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
        f"at the start, bench run at nice {os.nice(0)}"
    )
    return found


def run_part(part: str, args: argparse.Namespace, tmp: Path, results: dict[str, Any], out_dir: Path) -> None:
    """Measure one part (``ours-redis``, ``raw-sqlite``, ``fix``, ``scale``, ...) into *results*."""
    quick = args.quick
    classes: dict[str, type[System]] = {"ours": Ours, "raw": Raw, "celery": CeleryApp}
    kind, _, broker = part.partition("-")
    needs = {"redis": ["redis", "postgresql"], "rabbitmq": ["rabbitmq", "postgresql"], "sqlite": []}
    if kind in classes:
        missing = [s for s in needs[broker] if not (kind == "raw" and s == "postgresql") and not service_up(s)]
        if kind == "celery" and broker == "sqlite":
            return
        if missing:
            results["skipped"][part] = f"{', '.join(missing)} not reachable"
            log(f"{part}: skipped ({results['skipped'][part]})")
            return
        cls = classes[kind]
        results["systems"][part] = measure(
            lambda cls=cls, broker=broker: cls(broker, tmp),  # type: ignore[misc]
            args,
            tmp,
        )
    elif part == "fix":
        if service_up("redis") and service_up("postgresql"):
            results["client_fix"] = client_fix_figures(tmp, 500 if quick else 3000)
            log(
                f"fix: enqueue p50 {results['client_fix']['before']['p50']:.3f} ms before, "
                f"{results['client_fix']['after']['p50']:.3f} ms after"
            )
    elif part == "profile":
        if service_up("redis") and service_up("postgresql"):
            from bench import profile

            log("profile: enqueue (cProfile) and the daemon's drain (py-spy) on Redis")
            profile.profile_enqueue(300 if quick else 2000, out_dir)
            # Enough jobs that the drain outlasts the sampling (py-spy slows it):
            # samples of an idle daemon would say nothing.
            for gil in (False, True):
                profile.profile_daemon(300 if quick else 6000, out_dir, 1 if quick else 5, gil)
    elif part == "scale-out":
        if not (service_up("redis") and service_up("postgresql")):
            results["skipped"]["scale-out"] = "redis or postgresql not reachable"
            return
        from bench import scaleout

        results["scale_out"] = scaleout.run(args, tmp)
        results["scale_out"]["command"] = results["command"]
    elif part == "intake":
        from bench import intake

        intake.run(args, tmp, results, out_dir)
    elif part == "progress":
        from bench import progress

        progress.run(args, tmp, results)
    elif part == "flow":
        from bench import flow

        flow.run(args, tmp, results)
    elif part == "scale":
        if not (service_up("redis") and service_up("postgresql")):
            results["skipped"]["scale"] = "redis or postgresql not reachable"
            return
        n = 1000
        while n <= args.scale_max:
            results["scale"].append(measure_scale(n, args, tmp))
            n *= 10
    else:
        raise ValueError(f"--only: unknown part {part!r}")


#: What describes a whole run: a run of some parts keeps the earlier run's.
HEADER = ("command", "date", "versions", "sizes", "reference", "elapsed_s")


def carry_over(previous: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """The results of a run of some parts (``--only``) laid over the earlier
    run's *previous*: what this run measured replaces what that one had, the
    rest is kept, and the run is listed under ``later``."""
    merged = dict(previous)
    for key, value in now.items():
        if key in HEADER:
            continue
        if isinstance(value, dict) and isinstance(previous.get(key), dict):
            merged[key] = {**previous[key], **value}
        elif value or key not in previous:
            merged[key] = value
    merged["later"] = [
        *previous.get("later", []),
        {"command": now["command"], "date": now["date"], "machine": now["versions"].get("machine", "")},
    ]
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few minutes")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="PART",
        help="run only these parts: ours-redis ours-rabbitmq ours-sqlite raw-redis raw-rabbitmq "
        "raw-sqlite celery-redis celery-rabbitmq fix profile scale scale-out intake progress flow (default: all)",
    )
    parser.add_argument("--drain", type=int, help="jobs queued for the drain (default 20000; quick 1000)")
    parser.add_argument("--latency", type=int, help="run-now jobs at 200/s (default 2000; quick 200)")
    parser.add_argument("--date", type=int, help="date jobs (default 2000; quick 200)")
    parser.add_argument("--date-span", type=float, help="seconds the date jobs spread over (default 10; quick 2)")
    parser.add_argument(
        "--scale-max",
        type=int,
        help="largest pending-job count, a power of ten "
        "(default 100000; quick 10000); 1000000 takes a few minutes more",
    )
    parser.add_argument("--intake", type=int, help="date jobs of the intake burst (default 100000; quick 2000)")
    parser.add_argument(
        "--intake-timeout", type=float, help="seconds the daemons may take to store it (default: 10 ms a job + 60)"
    )
    parser.add_argument("--flow", type=int, help="run-now jobs of each flow drain (default 5000; quick 500)")
    parser.add_argument("--drain-timeout", type=float, help="seconds a drain may take (default 20; quick 15)")
    parser.add_argument(
        "--fill-timeout", type=float, help="seconds the drain's queue may take to fill (default 15; quick 10)"
    )
    parser.add_argument(
        "--lead-max",
        type=float,
        help="longest head start the date jobs get for the worker to take them in (default 20; quick 10)",
    )
    parser.add_argument(
        "--grace", type=float, help="seconds a job may start after it was due before it counts as missing (default 8)"
    )
    parser.add_argument(
        "--scale-out-counts",
        type=int,
        nargs="+",
        metavar="N",
        help="scale-out: the numbers of processes (default 1 2 4; quick 1 2)",
    )
    parser.add_argument(
        "--scale-out-systems",
        nargs="+",
        choices=["ours", "celery", "dramatiq", "huey"],
        help="scale-out: only these systems (default: all)",
    )
    parser.add_argument("--scale-out-drain", type=int, help="scale-out: no-op jobs per drain (default 3000; quick 400)")
    parser.add_argument(
        "--scale-out-cpu", type=int, help="scale-out: CPU-bound (20 ms) jobs per drain (default 200; quick 40)"
    )
    parser.add_argument(
        "--scale-out-latency", type=int, help="scale-out: run-now jobs at 200/s per lane (default 600; quick 100)"
    )
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rewrite the table and plots from the existing results.json",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for results.rst and the plots (default docs/_bench; results.json goes to bench/ then)",
    )
    args = parser.parse_args(argv)
    # SIGTERM stops the run through the finally clauses: workers stopped, queues and tables dropped.
    signal.signal(signal.SIGTERM, lambda signo, frame: sys.exit(f"stopped by signal {signo}"))
    quick = args.quick
    args.drain = args.drain or (1000 if quick else 20000)
    args.enqueue_tx = max(100, args.drain // 10)
    args.latency = args.latency or (200 if quick else 2000)
    args.date = args.date or (200 if quick else 2000)
    args.date_span = args.date_span or (2.0 if quick else 10.0)
    args.scale_max = args.scale_max or (10_000 if quick else 100_000)
    args.drain_timeout = args.drain_timeout or (15.0 if quick else 20.0)
    args.fill_timeout = args.fill_timeout or (10.0 if quick else 15.0)
    args.lead_max = args.lead_max or (10.0 if quick else 20.0)
    args.grace = args.grace or 8.0
    args.intake = args.intake or (2000 if quick else 100_000)
    args.intake_timeout = args.intake_timeout or args.intake / 100 + 60
    args.flow = args.flow or (500 if quick else 5000)
    args.scale_adds = 50 if quick else 100
    args.scale_fires = 50 if quick else 100
    args.counts = args.scale_out_counts or ([1, 2] if quick else [1, 2, 4])
    args.so_systems = args.scale_out_systems or ["ours", "celery", "dramatiq", "huey"]
    args.so_drain = args.scale_out_drain or (400 if quick else 3000)
    args.so_cpu = args.scale_out_cpu or (40 if quick else 200)
    args.so_latency = args.scale_out_latency or (100 if quick else 600)
    parts = args.only or [
        "ours-redis",
        "raw-redis",
        "celery-redis",
        "ours-rabbitmq",
        "raw-rabbitmq",
        "celery-rabbitmq",
        "ours-sqlite",
        "raw-sqlite",
        "fix",
        "profile",
        "scale",
        "scale-out",
        "intake",
        "progress",
        "flow",
    ]
    known = {f"{k}-{b}" for k in ("ours", "raw", "celery") for b in ("redis", "rabbitmq", "sqlite")}
    known |= {"fix", "profile", "scale", "scale-out", "intake", "progress", "flow"}
    unknown = [part for part in parts if part not in known or part == "celery-sqlite"]
    if unknown:
        parser.error(f"--only: unknown part(s) {', '.join(unknown)}")
    out_dir = args.out or DOCS_OUT
    json_out = JSON_OUT if args.out is None else out_dir / "results.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        from bench import report

        report.write(json.loads(json_out.read_text(encoding="utf-8")), out_dir, plots=not args.no_plots)
        log(f"{out_dir}/results.rst and plots rewritten from {json_out}")
        return 0

    command = "python -m bench" + (
        "" if argv is None and len(sys.argv) <= 1 else " " + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    results: dict[str, Any] = {
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": versions(),
        "sizes": {
            k: getattr(args, k)
            for k in (
                "drain",
                "enqueue_tx",
                "latency",
                "date",
                "date_span",
                "scale_max",
                "scale_adds",
                "scale_fires",
                "intake",
                "intake_timeout",
                "flow",
                "fill_timeout",
                "drain_timeout",
                "lead_max",
                "grace",
            )
        },
        "reference": REFERENCE,
        "systems": {},
        "scale": [],
        "skipped": {},
        "errors": {},
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pscheduler-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for part in parts:
            try:
                run_part(part, args, tmp, results, out_dir)
            except Exception as exc:  # noqa: BLE001 - one failed part must not lose the others
                import traceback

                traceback.print_exc()
                results["errors"][part] = f"{type(exc).__name__}: {exc}"
                log(f"{part}: FAILED ({results['errors'][part]}); going on")
    elapsed = results["elapsed_s"] = time.monotonic() - started
    from bench import report

    if args.only and json_out.exists():
        results = carry_over(json.loads(json_out.read_text(encoding="utf-8")), results)
    json_out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    report.write(results, out_dir, plots=not args.no_plots)
    log(f"done in {elapsed:.0f}s: {json_out}, {out_dir}/results.rst and plots")
    print(report.text_table(results))
    return 0
