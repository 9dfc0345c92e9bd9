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
    """Once the tables exist, daemons share them: every one runs jobs, and one
    holds the lease (a row in PostgreSQL) for the single-owner work."""
    harness = make_harness(store="postgresql")
    proxy = harness.proxy()
    assert proxy.get_job("no-such-job") is None  # creates the tables
    daemons = [harness.start() for _ in range(3)]
    for daemon in daemons:
        harness.wait_active(proxy, daemon)
    owner = wait_until(lambda: proxy.get_daemons()[0]["owner"], "a daemon to take the lease", alive=tuple(daemons))
    assert len([daemon for daemon in daemons if f":{daemon.pid}:" in owner]) == 1
    (queue,) = proxy.get_daemons()
    assert sorted(row["pid"] for row in queue["daemons"]) == sorted(daemon.pid for daemon in daemons)
    job_ids = [f"pg-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    for job_id in job_ids:
        proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id)
    for job_id in job_ids:
        harness.wait_job(proxy, job_id, {"done"}, alive=tuple(daemons))
    runs = [run for job_id in job_ids for run in harness.runs(job_id)]
    assert sorted(run["tag"] for run in runs) == sorted(job_ids)
    assert {run["pid"] for run in runs} <= {daemon.pid for daemon in daemons}
