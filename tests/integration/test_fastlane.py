"""The fast lane with a real ``pscheduler`` on Redis: a ``durable=False``
job runs straight from its message and is recorded after its run, with the
usual events; killed mid-run, it is lost and never run again (at most once,
as documented in docs/guarantees.rst)."""

from __future__ import annotations

import uuid

import pytest

from integration.conftest import wait_until
from integration.sampleapp import jobs

pytestmark = [pytest.mark.integration]


def tag(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def types(harness, job_id: str) -> list[str]:
    return [row["type"] for row in harness.events(job_id)]


def left_on_redis(proxy) -> int:
    """Messages of the queue ``jobs`` still in Redis: waiting, or taken and not settled."""
    from pyramid_scheduler.brokers.connection import make_connection, make_queue
    from pyramid_scheduler.brokers.redis import processing_key

    settings = proxy.settings
    with make_connection(settings) as conn:
        name = make_queue(settings, "jobs").name
        with conn.default_channel.conn_or_acquire() as client:
            return int(client.llen(name) + client.llen(processing_key(name)))


def test_a_durable_false_job_runs_and_is_recorded_after(make_harness):
    harness = make_harness("redis", "postgresql")
    proxy = harness.proxy()
    daemon = harness.start()
    alive = (daemon,)
    harness.wait_active(proxy, daemon)
    ok, bad = tag("fast"), tag("fastbad")
    proxy.add_async_job(jobs.record, args=[harness.oracle, ok], id=ok, durable=False)
    proxy.add_async_job(jobs.fail, args=[harness.oracle, bad], id=bad, durable=False)

    record = harness.wait_job(proxy, ok, {"done"}, alive=alive)
    assert (record["kind"], record["runs"], record["error"]) == ("now", 1, None)
    assert record["result"] == {"tag": ok, "pid": daemon.pid, "marker": harness.marker}
    [run] = proxy.get_runs(ok)
    assert run["status"] == "done"
    failed = harness.wait_job(proxy, bad, {"failed"}, alive=alive)
    assert "fails on purpose" in failed["error"] and failed["runs"] == 1
    assert [run["status"] for run in proxy.get_runs(bad)] == ["failed"]
    for job_id, outcome in ((ok, "job.executed"), (bad, "job.error")):
        wait_until(lambda job_id=job_id: "job.removed" in types(harness, job_id), "REMOVED", alive=alive)
        assert types(harness, job_id) == ["job.created", outcome, "job.removed"]
    assert len(harness.runs(ok)) == 1 and len(harness.runs(bad)) == 1
    assert left_on_redis(proxy) == 0
    assert "(durable=False)" in daemon.log()


def test_a_durable_false_job_cut_short_by_a_crash_is_lost_and_not_run_again(make_harness):
    harness = make_harness("redis", "postgresql")
    proxy = harness.proxy()
    first = harness.start()
    harness.wait_active(proxy, first)
    lost, durable = tag("lost"), tag("durable")
    proxy.add_async_job(jobs.slow, args=[harness.oracle, lost, 30], id=lost, durable=False)
    wait_until(lambda: harness.runs(lost), "the durable=False job to start", alive=(first,))
    first.kill()  # kill -9, mid-run
    assert proxy.get_job(lost) is None  # never stored
    second = harness.start()
    harness.wait_active(proxy, second)
    # A job sent after the restart runs; by then the lost one would have come back.
    proxy.add_async_job(jobs.record, args=[harness.oracle, durable], id=durable)
    harness.wait_job(proxy, durable, {"done"}, alive=(second,))
    assert [run["phase"] for run in harness.runs(lost)] == ["start"]  # once, cut short, never again
    assert proxy.get_job(lost) is None and proxy.get_runs(lost) == []
    assert left_on_redis(proxy) == 0
