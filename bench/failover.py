"""``python -m bench.failover``: how long the due jobs of a dead daemon wait.

Three ``pscheduler`` daemons serve one queue (Redis broker, PostgreSQL job
store, the default ``scheduler.lease.ttl`` of 3 s). In each trial date jobs
are added, all due at one moment; each is held by the daemon the broker gave
its message to (the ``claimed_by`` of its row says which). 0.2 s before they
are due, one daemon that holds some of them is

* killed (``kill -9``): a process of this host, which the lease holder finds
  gone at its next heartbeat -- the case of a daemon on the same machine;
* paused (``SIGSTOP``): its process still exists, so it is dead to the others
  only once its heartbeat is ``lease.ttl`` old -- the case of a daemon on
  another machine, or cut off by the network;
* the lease holder itself, killed: another daemon must first take the lease.

A job's failover time is when it started minus when it was due. A new daemon
replaces the victim before the next trial. Writes ``bench/failover.json`` and
``docs/_bench/failover.rst`` (included by docs/reliability.rst).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench import jobs
from bench.systems import DOCS_OUT, POSTGRES_URL, ROOT, Ours, Worker, log, pct, service_up, wait_for

JSON_OUT = ROOT / "bench" / "failover.json"
SCENARIOS = {
    "kill": "``kill -9`` of a daemon holding jobs",
    "lease": "``kill -9`` of the lease holder",
    "stop": "``SIGSTOP`` of a daemon holding jobs (as on another host)",
}
#: Jobs per trial, all due at one moment, and how long before it the victim goes.
JOBS = 12
AHEAD = 0.2


class Trio:
    """Three daemons of one queue, replaced as they die."""

    def __init__(self, tmp: Path) -> None:
        self.system = Ours("redis", tmp)
        self.workers: list[Worker] = []
        self.table = f"{self.system.settings['scheduler.jobstore.tablename_prefix']}aps_jobs"
        self.db = sa.create_engine(POSTGRES_URL)

    def live(self) -> dict[int, str]:
        """pid -> owner of the live daemons."""
        (queue,) = self.system.proxy.get_daemons()
        return {row["pid"]: row["owner"] for row in queue["daemons"]}

    def fill(self) -> None:
        while len(self.workers) < 3:
            self.workers.append(self.system.start_worker())
        pids = {worker.proc.pid for worker in self.workers}
        wait_for(lambda: set(self.live()) == pids, 60)

    def holders(self, ids: list[str]) -> dict[str, str]:
        table = sa.table(self.table, sa.column("id"), sa.column("claimed_by"))
        with self.db.connect() as conn:
            return dict(conn.execute(sa.select(table.c.id, table.c.claimed_by).where(table.c.id.in_(ids))).all())

    def lease_holder(self) -> str | None:
        owner = self.system.proxy.get_daemons()[0]["owner"]
        return str(owner) if owner else None

    def worker_of(self, owner: str) -> Worker:
        pid = int(owner.split(":")[1])
        (worker,) = [worker for worker in self.workers if worker.proc.pid == pid]
        return worker

    def remove(self, worker: Worker) -> None:
        if worker.alive():
            os.killpg(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait(10)
        self.workers.remove(worker)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.db.dispose()
        self.system.close()


def trial(trio: Trio, scenario: str, path: str) -> list[float] | None:
    """One trial; the failover times of the victim's jobs (None: it held none)."""
    trio.fill()
    due = time.time() + 2.5
    ids = [trio.system.proxy.add_date_job(jobs.record, due, args=[path, f"{scenario}", due]) for _ in range(JOBS)]
    if not wait_for(lambda: all(trio.system.proxy.get_job(job_id) for job_id in ids), 30):
        raise RuntimeError("the date jobs were not stored within 30 s")
    holders = trio.holders(ids)
    if scenario == "lease":
        victim_owner = trio.lease_holder()
    else:
        counts: dict[str, int] = {}
        for owner in holders.values():
            counts[owner] = counts.get(owner, 0) + 1
        victim_owner = max(counts, key=lambda owner: counts[owner]) if counts else None
    held = [job_id for job_id, owner in holders.items() if owner == victim_owner]
    if victim_owner is None or not held:
        wait_for(lambda: all(trio.system.proxy.get_job(j)["status"] == "done" for j in ids), 30)
        return None
    victim = trio.worker_of(victim_owner)
    time.sleep(max(0.0, due - AHEAD - time.time()))
    os.killpg(victim.proc.pid, signal.SIGSTOP if scenario == "stop" else signal.SIGKILL)
    if scenario != "stop":
        victim.proc.wait(10)  # reaped, as its supervisor would: a zombie's pid still answers
    if not wait_for(lambda: all((trio.system.proxy.get_job(j) or {}).get("status") == "done" for j in held), 30):
        raise RuntimeError(f"{scenario}: the victim's jobs did not run within 30 s")
    times = []
    for job_id in held:
        (run,) = trio.system.proxy.get_runs(job_id)
        times.append(run["started_at"] - due)
    trio.remove(victim)
    return times


def summary(times: list[float]) -> dict[str, Any]:
    return {
        "jobs": len(times),
        "p50": pct(times, 50),
        "p95": pct(times, 95),
        "max": max(times),
        "min": min(times),
    }


def rst(results: dict[str, Any]) -> str:
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 40 12 12 12 12 12",
        "",
        "   * - Victim",
        "     - trials",
        "     - jobs",
        "     - p50 (s)",
        "     - p95 (s)",
        "     - max (s)",
    ]
    for key, label in SCENARIOS.items():
        found = results["scenarios"].get(key)
        if not found:
            continue
        lines += [
            f"   * - {label}",
            f"     - {found['trials']}",
            f"     - {found['jobs']}",
            f"     - {found['p50']:.2f}",
            f"     - {found['p95']:.2f}",
            f"     - {found['max']:.2f}",
        ]
    lines += [
        "",
        f"Measured {results['when']} by ``python -m bench.failover --trials {results['trials']}``"
        f" (load average at the start {results['load']:.1f}); ``scheduler.lease.ttl`` = 3 s.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per scenario (default 10)")
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS), help="scenarios to run (default: all)")
    args = parser.parse_args(argv)
    for name in ("redis", "postgresql"):
        if not service_up(name):
            parser.exit(2, f"{name} is not reachable\n")
    results: dict[str, Any] = {
        "trials": args.trials,
        "when": time.strftime("%Y-%m-%d"),
        "load": os.getloadavg()[0],
        "scenarios": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        trio = Trio(tmp)
        try:
            for scenario in args.only or list(SCENARIOS):
                times: list[float] = []
                trials = 0
                while trials < args.trials:
                    found = trial(trio, scenario, str(tmp / f"{scenario}.txt"))
                    if found is None:
                        continue
                    trials += 1
                    times += found
                    log(f"failover {scenario} trial {trials}: {', '.join(f'{t:.2f}' for t in sorted(found))} s")
                results["scenarios"][scenario] = {"trials": trials, **summary(times), "times": times}
                log(f"failover {scenario}: {summary(times)}")
        finally:
            trio.close()
    JSON_OUT.write_text(json.dumps(results, indent=1) + "\n")
    DOCS_OUT.mkdir(exist_ok=True)
    (DOCS_OUT / "failover.rst").write_text(rst(results))
    log(f"wrote {JSON_OUT} and {DOCS_OUT / 'failover.rst'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
