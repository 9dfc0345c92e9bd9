"""The scale-out part of ``python -m bench`` (``--only scale-out``).

On Redis (pyramid_scheduler's job store: PostgreSQL), for pyramid_scheduler
with 1, 2 and 4 daemons (separate ``pscheduler`` processes) and with
``pscheduler --processes 2`` and ``4``, and for Celery (``-P prefork -c
N``), Dramatiq (``--processes N``) and huey (``-k process -w N``) with 1, 2
and 4 processes: the drain rate of no-op jobs and of CPU-bound jobs (20 ms
of pure-Python work, :func:`bench.jobs.spin`), and the run-now latency at a
steady rate (ours: durable and ``durable=False``; the no-op drain too). :mod:`bench.report`
turns the results into the table, the targets and the plot.

Each setup's workers are started and warmed up (their first jobs run, their
CPU idle) before anything is measured; for a drain they are paused
(``SIGSTOP`` on their process groups) while the queue fills and resumed
together (``SIGCONT``), so the rate is that of all N processes at work, not
of their start-up.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import jobs
from bench.systems import (
    RATE,
    CeleryApp,
    DramatiqApp,
    HueyApp,
    Ours,
    System,
    Worker,
    log,
    sleep_until,
    summary,
    timed,
    wait_for,
)

#: The CPU-bound job's length.
SPIN_MS = 20.0
#: pyramid_scheduler's heartbeat ttl in this part: a paused daemon must not
#: be taken for dead while the queue fills (the default is 3 s).
LEASE_TTL = "30"
KINDS: dict[str, Callable[[Path], System]] = {
    "ours": lambda tmp: Ours("redis", tmp, **{"lease.ttl": LEASE_TTL}),
    "celery": lambda tmp: CeleryApp("redis", tmp),
    "dramatiq": lambda tmp: DramatiqApp("redis", tmp),
    "huey": lambda tmp: HueyApp("redis", tmp),
}


@dataclass(frozen=True)
class Setup:
    """One system with *count* processes; ours as *count* separate daemons
    (``mode="daemons"``) or one ``pscheduler --processes`` (``"processes"``)."""

    kind: str
    count: int
    mode: str = ""

    @property
    def series(self) -> str:
        return f"ours-{self.mode}" if self.kind == "ours" else self.kind

    @property
    def key(self) -> str:
        return f"{self.series}-{self.count}"

    def start(self, system: System) -> list[Worker]:
        if self.mode == "daemons":
            return [system.start_worker() for _ in range(self.count)]
        return [system.start_worker(processes=self.count)]  # type: ignore[call-arg]


#: The series of the table and plot, in order, with their labels.
SERIES = {
    "ours-daemons": "pyramid_scheduler, N daemons",
    "ours-processes": "pyramid_scheduler --processes N",
    "celery": "Celery -P prefork -c N",
    "dramatiq": f"Dramatiq --processes N --threads {DramatiqApp.threads}",
    "huey": "huey -k process -w N",
}


def setups(counts: list[int], kinds: list[str]) -> list[Setup]:
    found = [Setup("ours", n, "daemons") for n in counts if "ours" in kinds]
    found += [Setup("ours", n, "processes") for n in counts if n > 1 and "ours" in kinds]
    found += [Setup(kind, n) for kind in ("celery", "dramatiq", "huey") for n in counts if kind in kinds]
    return found


def cpu(workers: list[Worker]) -> float:
    return sum(worker.cpu_s() for worker in workers)


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy so far (all cores)."""
    import psutil

    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def check(workers: list[Worker], what: str) -> None:
    for worker in workers:
        if not worker.alive():
            raise RuntimeError(f"{what}: a worker exited; see {worker.log_path}")


def warm_up(setup: Setup, system: System, workers: list[Worker], tmp: Path) -> float:
    """Wait until every process is up (ours: its daemons are in the job
    store), a few jobs have run and the workers' CPU is idle; seconds taken."""
    started = time.monotonic()
    if isinstance(system, Ours):
        wait_for(lambda: not all(w.alive() for w in workers) or system.live_daemons() >= setup.count, 90, 0.1)
    path = str(tmp / f"{setup.key}-warm.txt")
    for _ in range(4 * setup.count):
        system.enqueue(path, "w", time.time())
    wait_for(lambda: not all(w.alive() for w in workers) or len(jobs.read(path)) >= 4 * setup.count, 90, 0.05)
    check(workers, setup.key)
    # Idle: under 5 % of a core over half a second (start-up work done).
    deadline = time.monotonic() + 20
    before = cpu(workers)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu(workers)
        if now - before < 0.025:
            break
        before = now
    return time.monotonic() - started


def drain(
    workers: list[Worker],
    enqueue: Callable[[str, str, float], None],
    path: str,
    count: int,
    sizes: argparse.Namespace,
    spans: bool,
) -> dict[str, Any]:
    """Fill the queue with the workers paused, resume them, and time the drain.

    No-op jobs: (jobs - 1) / (last start - first start). CPU-bound jobs:
    jobs / (last end - first start), and the p50 of their wall time.
    """
    for worker in workers:
        worker.pause()
    try:
        expected = len(timed(enqueue, path, "d", count, sizes.fill_timeout))
        cpu0, busy0, wall0 = cpu(workers), machine_busy(), time.monotonic()
    finally:
        for worker in workers:
            worker.resume()
    wait_for(lambda: not all(w.alive() for w in workers) or len(jobs.read(path)) >= expected, sizes.drain_timeout, 0.05)
    used, busy, wall = cpu(workers) - cpu0, machine_busy() - busy0, time.monotonic() - wall0
    result: dict[str, Any] = {"jobs": expected}
    # Cores busy during the drain: the workers', and the whole machine's (the
    # services, the bench, and whatever else runs on a shared machine).
    result["cores"] = {"workers": used / wall, "machine": busy / wall}
    result["per_process"] = sorted(jobs.pids(path).values(), reverse=True)
    if spans:
        runs = jobs.spans(path)
        done = len(runs)
        took = max(end for _s, end in runs) - min(start for start, _e in runs) if runs else 0.0
        result["jobs_per_s"] = done / took if took > 0 else float("nan")
        result["job_ms_p50"] = summary([end - start for start, end in runs])["p50"]
    else:
        starts = sorted(row[2] for row in jobs.read(path))
        done = len(starts)
        took = starts[-1] - starts[0] if done > 1 else 0.0
        result["jobs_per_s"] = (done - 1) / took if took > 0 else float("nan")
    result["done"] = done
    result["cpu_ms_per_job"] = used * 1000 / done if done else float("nan")
    return result


def latency(
    workers: list[Worker], enqueue: Callable[[str, str, float], None], path: str, count: int, grace: float
) -> dict[str, Any]:
    """Run-now jobs sent at :data:`~bench.systems.RATE` per second: ``started - sent``."""
    begin = time.time() + 0.2
    for i in range(count):
        sleep_until(begin + i / RATE)
        enqueue(path, "l", time.time())
    wait_for(lambda: not all(w.alive() for w in workers) or len(jobs.read(path)) >= count, grace, 0.05)
    rows = jobs.read(path)
    result = summary([started - sent for _tag, sent, started in rows])
    result["missing"] = count - len(rows)
    return result


def measure_setup(setup: Setup, sizes: argparse.Namespace, tmp: Path, loops: int) -> dict[str, Any]:
    system = KINDS[setup.kind](tmp)
    system.key = f"scaleout-{setup.key}"
    result: dict[str, Any] = {"series": setup.series, "processes": setup.count, "load": os.getloadavg()[0]}
    workers: list[Worker] = []
    try:
        workers = setup.start(system)
        result["warm_up_s"] = warm_up(setup, system, workers, tmp)
        noop = drain(workers, system.enqueue, str(tmp / f"{setup.key}-noop.txt"), sizes.so_drain, sizes, False)
        check(workers, setup.key)
        result["noop"] = noop
        if system.has_fast:
            path = str(tmp / f"{setup.key}-noop-fast.txt")
            result["noop_fast"] = drain(workers, system.enqueue_fast, path, sizes.so_drain, sizes, False)
            check(workers, setup.key)

        def spin(path: str, tag: str, sent: float) -> None:
            system.enqueue_spin(path, tag, sent, loops)

        result["cpu"] = drain(workers, spin, str(tmp / f"{setup.key}-cpu.txt"), sizes.so_cpu, sizes, True)
        check(workers, setup.key)
        lanes = [("latency", system.enqueue)] + ([("latency_fast", system.enqueue_fast)] if system.has_fast else [])
        for key, enqueue in lanes:
            result[key] = latency(workers, enqueue, str(tmp / f"{setup.key}-{key}.txt"), sizes.so_latency, sizes.grace)
        incomplete = [
            f"{part}: {result[part]['done']:,} of {result[part]['jobs']:,} run in {sizes.drain_timeout:g} s"
            for part in ("noop", "noop_fast", "cpu")
            if part in result and result[part]["done"] < result[part]["jobs"]
        ]
        incomplete += [f"{key}: {result[key]['missing']:,} missing" for key, _ in lanes if result[key]["missing"]]
        if incomplete:
            result["incomplete"] = "; ".join(incomplete)
    finally:
        for worker in workers:
            worker.stop()
        system.close()
    fast = f", durable=False p50 {result['latency_fast']['p50']:.2f} ms" if "latency_fast" in result else ""
    log(
        f"scale-out {setup.key}: no-op {result['noop']['jobs_per_s']:.0f} jobs/s"
        + (f" (durable=False {result['noop_fast']['jobs_per_s']:.0f})" if "noop_fast" in result else "")
        + ", "
        f"CPU-bound {result['cpu']['jobs_per_s']:.1f} jobs/s, run-now p50 {result['latency']['p50']:.2f} ms{fast}"
    )
    return result


def run(sizes: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Every setup in turn; a setup that fails is reported in ``errors`` and the others go on."""
    began, load = time.monotonic(), os.getloadavg()[0]
    loops = jobs.calibrate(SPIN_MS)
    started = time.perf_counter()
    jobs.burn(loops)
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_start": load,
        "spin_loops": loops,
        "spin_ms_here": (time.perf_counter() - started) * 1000,
        "counts": sizes.counts,
        "sizes": {"drain": sizes.so_drain, "cpu": sizes.so_cpu, "latency": sizes.so_latency},
        "runs": {},
        "errors": {},
    }
    log(f"scale-out: the CPU-bound job is {loops:,} loops ({SPIN_MS:g} ms calibrated)")
    for setup in setups(sizes.counts, sizes.so_systems):
        try:
            out["runs"][setup.key] = measure_setup(setup, sizes, tmp, loops)
        except Exception as exc:  # noqa: BLE001 - one failed setup must not lose the others
            import traceback

            traceback.print_exc()
            out["errors"][setup.key] = f"{type(exc).__name__}: {exc}"
            log(f"scale-out {setup.key}: FAILED ({out['errors'][setup.key]}); going on")
    out["elapsed_s"] = time.monotonic() - began
    out["versions"] = versions()
    return out


def versions() -> dict[str, str]:
    """The versions of the systems compared (a run of this part alone keeps
    the earlier run's versions line)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("pyramid_scheduler", "celery", "dramatiq", "huey", "kombu", "redis"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found
