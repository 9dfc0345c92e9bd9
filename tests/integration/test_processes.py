"""``pscheduler --processes N``: one supervisor, N daemons as its children.

Each test runs a real supervisor (``python -m pyramid_scheduler.scripts``)
and finds its children with psutil. With today's lease one child runs the
queue and the others stand by; what is tested here is the supervision:
start, restart, stop, SIGHUP, ``--reload`` and the log lines.
"""

from __future__ import annotations

import os
import re
import signal
import uuid
from pathlib import Path

import psutil
import pytest

from daemons import TESTS, Daemon
from integration.conftest import Harness, wait_until
from integration.sampleapp import jobs
from pyramid_scheduler.daemon.processes import STOP_GRACE
from pyramid_scheduler.scripts import EXIT_BAD_QUEUE, EXIT_STARTUP_FAILED

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: scheduler.shutdown_timeout of these tests' daemons.
SHUTDOWN_TIMEOUT = 2.0


def children(pid: int) -> set[int]:
    """The live child processes of *pid*."""
    try:
        found = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return set()
    return {child.pid for child in found if child.is_running() and child.status() != psutil.STATUS_ZOMBIE}


def wait_children(
    supervisor: Daemon, count: int, pid: int | None = None, without: frozenset[int] | set[int] = frozenset()
) -> set[int]:
    """Wait until the supervisor (pid *pid*, default *supervisor*'s) has
    *count* children, none of them in *without*; their pids."""

    def found() -> set[int] | None:
        pids = children(pid or supervisor.pid)
        return pids if len(pids) == count and not pids & without else None

    return wait_until(found, f"{count} pscheduler children (not {sorted(without)})", alive=(supervisor,))


def gone(pids: set[int]) -> bool:
    return not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)


def stop(supervisor: Daemon, pids: set[int]) -> None:
    """SIGTERM the supervisor: it exits 0 within the stop timeout, its children with it."""
    supervisor.send(signal.SIGTERM)
    assert supervisor.wait(timeout=SHUTDOWN_TIMEOUT + STOP_GRACE) == 0, supervisor.log()
    assert gone(pids), supervisor.log()
    assert "pscheduler supervisor stopped" in supervisor.log()


@pytest.fixture
def harness(make_harness) -> Harness:
    return make_harness(shutdown_timeout=str(SHUTDOWN_TIMEOUT))


def test_n_processes_are_started_and_one_that_dies_is_restarted(harness):
    ini = harness.write_ini()
    ini.write_text(ini.read_text().replace("format = SAMPLELOG", "format = SAMPLELOG [%(process_index)s]"))
    supervisor = harness.start("--processes", "2", "--restart-interval", "0.2", ini=ini)
    first = wait_children(supervisor, 2)
    for index in (1, 2):
        supervisor.wait_log(f"] pscheduler process {index} of 2 (pid ")
    log = supervisor.log()
    # Who logs what: the supervisor starts both, each child says which it is,
    # and %(process_index)s tells their lines apart.
    for pid in first:
        assert re.search(rf"SAMPLELOG \[supervisor\] .* started pscheduler process [12] of 2 \(pid {pid}\)", log)
    for index in (1, 2):
        assert re.search(rf"SAMPLELOG \[{index}/2\] .* pscheduler process {index} of 2 \(pid \d+; supervisor", log)

    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    second = wait_children(supervisor, 2, without={victim})
    (newcomer,) = second - first
    index = 1 if f"started pscheduler process 1 of 2 (pid {victim})" in log else 2
    supervisor.wait_log(f"pscheduler process {index} of 2 (pid {victim}) was killed by SIGKILL; restarting in 0.2s")
    supervisor.wait_log(f"started pscheduler process {index} of 2 (pid {newcomer})")

    # The queue is still served, by one of the children.
    proxy = harness.proxy()
    job_id = f"procs-{uuid.uuid4().hex[:8]}"
    proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id)
    harness.wait_job(proxy, job_id, {"done"}, alive=(supervisor,))
    assert [run["pid"] for run in harness.runs(job_id)][0] in second

    stop(supervisor, second)
    assert supervisor.log().count("restarting in") == 1


def test_every_process_runs_jobs(make_harness):
    """The processes of one command are daemons like any others: each runs
    jobs (Redis shares the messages out, PostgreSQL holds the records)."""
    # A consumer takes up to broker.prefetch waiting messages at once: a small
    # one leaves some of a burst to the other process.
    harness = make_harness(broker="redis", store="postgresql", **{"broker.prefetch": "2"})
    proxy = harness.proxy()
    assert proxy.get_job("no-such-job") is None  # the tables, before two daemons race to make them
    supervisor = harness.start("--processes", "2")
    pids = wait_children(supervisor, 2)
    wait_until(
        lambda: {row["pid"] for row in proxy.get_daemons()[0]["daemons"]} == pids,
        "both processes to run the queue",
        alive=(supervisor,),
    )
    job_ids = [f"procs-{uuid.uuid4().hex[:8]}" for _ in range(40)]
    for job_id in job_ids:
        proxy.add_async_job(jobs.slow, args=[harness.oracle, job_id, 0.1], id=job_id)
    for job_id in job_ids:
        harness.wait_job(proxy, job_id, {"done"}, alive=(supervisor,))
    ran = [run["pid"] for job_id in job_ids for run in harness.runs(job_id) if run["phase"] == "start"]
    assert len(ran) == len(job_ids) and set(ran) == pids
    assert {row["process"] for row in proxy.get_daemons()[0]["daemons"]} == {"1/2", "2/2"}
    stop(supervisor, pids)


def test_the_setting_sets_the_number_of_processes(make_harness):
    harness = make_harness(processes="2", shutdown_timeout=str(SHUTDOWN_TIMEOUT))
    supervisor = harness.start()
    pids = wait_children(supervisor, 2)
    supervisor.wait_log("supervising 2 pscheduler process(es)")
    stop(supervisor, pids)


def test_one_process_is_today_s_daemon(make_harness):
    harness = make_harness(processes="1")
    daemon = harness.start().wait_consuming()
    assert children(daemon.pid) == set()
    assert "supervising" not in daemon.log()
    assert daemon.terminate() == 0, daemon.log()


def test_a_bad_number_of_processes_is_refused(make_harness):
    harness = make_harness()
    code, output = harness.run("--processes", "0")
    assert code == 2, output
    assert "argument --processes: expected a whole number of at least 1, got '0'" in output
    code, output = harness.run("--processes", "2", "--message", "print-jobs")
    assert code == 2 and "--processes does not go with --message" in output, output

    ini = harness.write_ini(harness.app_settings(**{"scheduler.processes": "none"}))
    code, output = harness.run(ini=ini)
    assert code == EXIT_STARTUP_FAILED, output
    assert "Invalid setting scheduler.processes = 'none': expected a whole number" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("store", ["memory", "sqlite://"])
def test_processes_that_could_not_share_the_job_store_are_refused(make_harness, store):
    harness = make_harness(**{"jobstore.url": store})
    code, output = harness.run("--processes", "2")
    assert code == EXIT_STARTUP_FAILED, output
    assert "keeps the jobs in each process's memory, so the 2 processes of pscheduler --processes" in output
    assert "restarting in" not in output


def test_a_child_that_cannot_start_stops_them_all(harness):
    code, output = harness.run("--processes", "2", "-q", "unknown")
    assert code == EXIT_BAD_QUEUE, output
    assert "exited with code 12, which a restart would not cure; stopping the other processes" in output
    assert "restarting in" not in output


def test_sighup_restarts_the_children_one_at_a_time(harness):
    supervisor = harness.start("--processes", "2")
    first = wait_children(supervisor, 2)
    supervisor.send(signal.SIGHUP)
    second = wait_children(supervisor, 2, without=first)
    wait_until(lambda: supervisor.log().count("starting it again (SIGHUP)") == 2, "both restarts logged")
    log = supervisor.log()
    assert "SIGHUP: restarting the pscheduler processes one at a time" in log
    # One at a time: the second was stopped only after the first had been started again.
    stops = [log.index(f"stopping pscheduler process {i} of 2") for i in (1, 2)]
    assert stops[0] < log.index("started pscheduler process 1 of 2", stops[0]) < stops[1]
    stop(supervisor, second)


def test_the_children_stop_when_the_supervisor_is_killed(harness):
    supervisor = harness.start("--processes", "2")
    pids = wait_children(supervisor, 2)
    for index in (1, 2):
        supervisor.wait_log(f"pscheduler process {index} of 2 (pid ")
    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait()
    wait_until(lambda: gone(pids), "the orphaned children to stop", timeout=SHUTDOWN_TIMEOUT + STOP_GRACE)


def test_reload_restarts_every_process_when_the_application_s_code_changes(harness, tmp_path: Path):
    # A module that only the children import (the application's listener).
    module = tmp_path / "procs_listener.py"
    module.write_text("def listener(event, oracle):\n    pass\n")
    ini = harness.write_ini(harness.app_settings(**{"sampleapp.listeners": "procs_listener.listener"}))
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), str(tmp_path)])}
    monitor = harness.start("--reload", "--reload-interval", "0.2", "--processes", "2", ini=ini, env=env)

    def worker() -> int | None:  # hupper's worker: the supervisor
        pids = children(monitor.pid)
        return next(iter(pids)) if len(pids) == 1 else None

    supervisor = wait_until(worker, "hupper's worker", alive=(monitor,))
    first = wait_children(monitor, 2, pid=supervisor)
    for index in (1, 2):
        monitor.wait_log(f"pscheduler process {index} of 2 (pid ")

    def edited_and_reloaded() -> int | None:
        # hupper learns the file from the supervisor and takes its first
        # mtime when it first sees it: edit until a change is noticed.
        with module.open("a", encoding="utf-8") as f:
            f.write("# edited\n")
        pid = worker()
        return pid if pid not in (None, supervisor) else None

    wait_until(edited_and_reloaded, "hupper to restart the supervisor", interval=0.5, alive=(monitor,))

    def settled() -> tuple[int, set[int]] | None:  # a last edit may have restarted it once more
        pid = worker()
        pids = children(pid) if pid else set()
        return (pid, pids) if pid and len(pids) == 2 and not pids & first else None

    restarted, second = wait_until(settled, "a new supervisor with two new children", alive=(monitor,))
    assert gone(first)
    monitor.send(signal.SIGTERM)
    monitor.wait(timeout=SHUTDOWN_TIMEOUT + STOP_GRACE)
    assert gone(second | {restarted})
