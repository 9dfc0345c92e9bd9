"""PostgreSQL as the job store, with several processes at once."""

from __future__ import annotations

import threading
import uuid

import pytest

from integration.conftest import wait_until
from integration.sampleapp import jobs

pytestmark = [pytest.mark.integration]

WORKERS = 8


def test_processes_starting_together_on_a_fresh_postgresql_store(make_harness):
    """Web workers (and daemons) of one deployment start at the same moment;
    the first use of the job store must work in each of them."""
    harness = make_harness(store="postgresql")
    proxies = [harness.proxy() for _ in range(WORKERS)]
    barrier = threading.Barrier(WORKERS)
    errors: list[BaseException] = []

    def first_request(proxy) -> None:
        barrier.wait(10)
        try:
            proxy.get_job("no-such-job")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_request, args=(proxy,)) for proxy in proxies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [f"{type(exc).__name__}: {str(exc).splitlines()[0]}" for exc in errors] == []


def test_several_daemons_share_a_postgresql_store(make_harness):
    """Once the tables exist, daemons share them: one holds the lease (a row
    in PostgreSQL) and runs the jobs, the others stand by."""
    harness = make_harness(store="postgresql")
    proxy = harness.proxy()
    assert proxy.get_job("no-such-job") is None  # creates the tables
    daemons = [harness.start() for _ in range(3)]
    owner = wait_until(
        lambda: (lease := proxy.get_daemons()[0])["active"] and lease["owner"],
        "a daemon to take the lease",
        alive=tuple(daemons),
    )
    (leader,) = [daemon for daemon in daemons if f":{daemon.pid}:" in owner]
    for daemon in daemons:
        if daemon is not leader:
            harness.wait_log(daemon, "standing by")
    job_id = f"pg-{uuid.uuid4().hex[:8]}"
    proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id)
    harness.wait_job(proxy, job_id, {"done"}, alive=tuple(daemons))
    assert [run["pid"] for run in harness.runs(job_id)] == [leader.pid]
