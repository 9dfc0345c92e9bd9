"""Profiles of the two hot paths on Redis: ``python -m bench.profile``.

* ``enqueue``: cProfile around N ``add_async_job`` calls in this process
  (no daemon running), sorted by cumulative time.
* ``daemon``: N run-now jobs queued, then a ``pscheduler`` subprocess drains
  them under ``py-spy record`` (sampling, all threads, idle samples dropped;
  with ``--gil`` only the thread holding the GIL, i.e. where the CPU goes);
  prints each function's share of the samples it is on the stack of
  (inclusive), and writes the collapsed stacks for a flame graph. With
  ``--daemons D``, D daemons are started and warmed up first, paused while
  the queue fills and resumed together (as in :mod:`bench.scaleout`); the
  first of them is sampled. With ``--fast``, the jobs are ``durable=False``.

Output goes to stdout and ``--out`` (default /tmp/pscheduler-profile).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import pstats
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import jobs
from bench.systems import Ours, timed, wait_for


def profile_enqueue(count: int, out: Path) -> str:
    """cProfile of *count* ``add_async_job`` calls on Redis; the report."""
    with tempfile.TemporaryDirectory() as tmp:
        system = Ours("redis", Path(tmp))
        try:
            timed(system.enqueue, "/dev/null", "w", 100)
            profiler = cProfile.Profile()
            profiler.enable()
            timed(system.enqueue, "/dev/null", "p", count)
            profiler.disable()
        finally:
            system.close()
    profiler.dump_stats(out / "enqueue.prof")
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats("cumulative").print_stats(22)
    root = str(Path(__file__).resolve().parent.parent) + "/"
    text = stream.getvalue().replace(root, "").replace(sys.prefix + "/", "")
    text = re.sub(r"lib/python3\.\d+/site-packages/", "", text)
    lines = [
        line for line in text.splitlines() if line.strip() and "Ordered by" not in line and "List reduced" not in line
    ]
    report = f"{count} add_async_job calls on Redis under cProfile, by cumulative time\n" + "\n".join(lines)
    (out / "profile-enqueue.txt").write_text(report + "\n", encoding="utf-8")
    return report


#: Leaf frames grouped by where their code lives, for the daemon profile.
GROUPS = (
    ("psycopg", "PostgreSQL driver (psycopg)"),
    ("sqlalchemy", "SQLAlchemy"),
    ("apscheduler", "APScheduler"),
    ("kombu", "Kombu"),
    ("redis", "redis-py"),
    ("pyramid_scheduler", "pyramid_scheduler"),
    ("pickle", "pickle"),
    ("json", "json"),
    ("logging", "logging"),
    ("threading", "threads, locks, queues"),
    ("queue", "threads, locks, queues"),
    ("concurrent", "threads, locks, queues"),
    ("bench/jobs", "the job itself"),
)


def pg_round_trips() -> tuple[float, float]:
    """Median ms of ``SELECT 1`` and of a one-row INSERT + COMMIT."""
    import statistics

    import psycopg

    from bench.systems import POSTGRES_URL

    with psycopg.connect(POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute("create temporary table bench_rt (x int)")
        selects, commits = [], []
        for _ in range(200):
            start = time.perf_counter()
            conn.execute("select 1").fetchone()
            selects.append(time.perf_counter() - start)
            start = time.perf_counter()
            with conn.transaction():
                conn.execute("insert into bench_rt values (1)")
            commits.append(time.perf_counter() - start)
    return statistics.median(selects) * 1000, statistics.median(commits) * 1000


def sample(pid: int, seconds: float, raw: Path, gil: bool = False) -> subprocess.CompletedProcess[str]:
    """``py-spy record`` of process *pid* for *seconds*,
    collapsed stacks into *raw*; with *gil*, only the thread holding the GIL."""
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(raw),
            "--nonblocking",
            *(["--gil"] if gil else []),
        ],
        capture_output=True,
        text=True,
    )


def breakdown(raw: Path, top: int = 40) -> tuple[int, dict[str, list[str]]]:
    """The samples in the collapsed stacks *raw*, and the report's lines:
    ``groups`` (where the samples end, by package) and ``inclusive`` (the
    functions on the stack, by share of the samples)."""
    inclusive: collections.Counter[str] = collections.Counter()
    groups: collections.Counter[str] = collections.Counter()
    total = 0
    # Lines end at "\n" only: a frame py-spy read while it changed may hold
    # other line breaks (splitlines() would cut the stack there).
    for line in raw.read_text(errors="replace").split("\n"):
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        n = int(samples)
        total += n
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[re.sub(r" \(.*site-packages/", " (", frame)] += n
        leaf = frames[-1]
        groups[next((label for needle, label in GROUPS if needle in leaf), "other (interpreter, stdlib)")] += n
    total = max(total, 1)
    return total, {
        "groups": ["Where the samples end (leaf frame), by package:"]
        + [f"  {100 * n / total:5.1f}%  {label}" for label, n in groups.most_common()],
        "inclusive": ["Functions on the stack (inclusive share of the samples):"]
        + [
            f"  {100 * n / total:5.1f}%  {frame}"
            for frame, n in inclusive.most_common(top)
            if "_bootstrap" not in frame
        ],
    }


def profile_daemon(
    count: int, out: Path, seconds: float, gil: bool = False, daemons: int = 1, fast: bool = False
) -> str:
    """py-spy samples of a ``pscheduler`` draining a Redis queue (PostgreSQL
    job store), taken once it runs jobs; the report. With *daemons* above
    1, the first of that many daemons draining the queue together; with
    *fast*, of ``durable=False`` jobs."""
    from bench import scaleout

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        system = Ours("redis", tmp, **({"lease.ttl": scaleout.LEASE_TTL} if daemons > 1 else {}))
        path = str(tmp / "drain.txt")
        raw = out / "daemon.collapsed"
        enqueue = system.enqueue_fast if fast else system.enqueue
        workers = []
        try:
            if daemons > 1:
                setup = scaleout.Setup("ours", daemons, "daemons")
                workers = setup.start(system)
                scaleout.warm_up(setup, system, workers, tmp)
                for each in workers:
                    each.pause()
                timed(enqueue, path, "d", count)
                for each in workers:
                    each.resume()
                worker = workers[0]
            else:
                timed(enqueue, path, "d", count)
                worker = system.start_worker()
                workers = [worker]
            wait_for(lambda: jobs.read(path), 120)
            before = len(jobs.read(path))
            spy = sample(worker.proc.pid, seconds, raw, gil)
            done = len(jobs.read(path)) - before
            share = sum(n for pid, n in jobs.pids(path).items() if pid == str(worker.proc.pid)) / max(1, done + before)
        finally:
            for each in workers:
                each.stop()
            system.close()
    if spy.returncode != 0:
        return f"py-spy failed: {spy.stderr.strip()}"
    total, lines_of = breakdown(raw)
    what = (
        "samples of the thread holding the GIL (where the CPU goes)"
        if gil
        else "samples of busy threads (where the time goes, waits included)"
    )
    queue = "a Redis queue of durable=False jobs" if fast else "a Redis queue"
    which = (
        f"the first of {daemons} pscheduler daemons draining {queue} together (PostgreSQL job store): "
        f"{done} jobs run by the {daemons} in {seconds:g} s of sampling ({done / seconds:.0f} jobs/s), "
        f"{100 * share:.0f} % of the drain's jobs by the one sampled"
        if daemons > 1
        else f"pscheduler draining {queue} (PostgreSQL job store): {done} jobs run in {seconds:g} s "
        f"of sampling ({done / seconds:.0f} jobs/s)"
    )
    lines = [f"{which}; {total} {what}.", ""]
    lines += lines_of["groups"]
    select_ms, commit_ms = pg_round_trips()
    lines += [
        "",
        f"PostgreSQL on this machine, measured just after: SELECT 1 {select_ms:.2f} ms, "
        f"INSERT + COMMIT {commit_ms:.2f} ms (median of 200).",
    ]
    lines += ["", *lines_of["inclusive"]]
    report = "\n".join(lines)
    name = f"profile-daemon{f'-{daemons}' if daemons > 1 else ''}{'-fast' if fast else ''}{'-cpu' if gil else ''}.txt"
    (out / name).write_text(report + "\n", encoding="utf-8")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["enqueue", "daemon", "both"])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument(
        "--gil",
        action="store_true",
        help="daemon: sample only the thread holding the GIL (where its CPU goes, not where it waits)",
    )
    parser.add_argument("--daemons", type=int, default=1, help="daemon: sample the first of this many daemons")
    parser.add_argument("--fast", action="store_true", help="daemon: drain durable=False jobs")
    parser.add_argument("--out", type=Path, default=Path("/tmp/pscheduler-profile"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what in ("enqueue", "both"):
        print(profile_enqueue(args.count, args.out))
    if args.what in ("daemon", "both"):
        started = time.monotonic()
        print(profile_daemon(args.count, args.out, args.seconds, args.gil, args.daemons, args.fast))
        print(f"({time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    main()
