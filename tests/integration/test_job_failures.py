"""Jobs that fail, hang or call ``sys.exit()``, listeners that raise or
block, and retries, with a real ``pscheduler`` (issue 3's "job failures").

Every outcome is read from the oracle (runs and events written by the daemon's
jobs and listeners) and from the job records; nothing is asserted about how
long anything took, only about what happened before what.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from integration.conftest import wait_until
from integration.sampleapp import failing, jobs

pytestmark = [pytest.mark.integration]


def tag(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def types(harness, job_id: str) -> list[str]:
    return [row["type"] for row in harness.events(job_id)]


def wait_event(harness, job_id: str, event_type: str, alive=()) -> None:
    wait_until(lambda: event_type in types(harness, job_id), f"{event_type} of {job_id} in the oracle", alive=alive)


@pytest.mark.slow
def test_raising_hanging_and_exiting_jobs_do_not_stop_the_others(make_harness):
    # Two workers: while one hangs, the other must run everything else, so the
    # thread that ran sys.exit() has to survive it.
    harness = make_harness(**{"executor.max_workers": "2"})
    proxy = harness.proxy()
    daemon = harness.start()
    hang_id, exit_id, retry_id, flaky_id = tag("hang"), tag("exit"), tag("retry"), tag("flaky")

    proxy.add_async_job(failing.hangs, args=[harness.oracle, hang_id], id=hang_id)
    harness.wait_runs(hang_id, alive=(daemon,))
    proxy.add_async_job(failing.exits, args=[harness.oracle, exit_id], id=exit_id)
    proxy.add_async_job(
        jobs.fail, args=[harness.oracle, retry_id], id=retry_id, retries=2, retry_delay=0.3, retry_backoff=2.0
    )
    proxy.add_async_job(failing.flaky, args=[harness.oracle, flaky_id, 1], id=flaky_id, retries=3, retry_delay=0.2)

    exited = harness.wait_job(proxy, exit_id, {"failed"}, alive=(daemon,))
    assert "SystemExit: 3" in exited["error"] and exited["runs"] == 1
    failed = proxy.wait(retry_id, timeout=30)
    assert (failed["status"], failed["runs"], failed["attempt"], failed["retries_left"]) == ("failed", 3, 3, 0)
    succeeded = proxy.wait(flaky_id, timeout=30)
    assert (succeeded["status"], succeeded["runs"], succeeded["retries_left"]) == ("done", 2, 2)
    assert succeeded["result"] == flaky_id

    # The run count is 1 + retries, each retry after its backoff delay.
    starts = [run["at"] for run in harness.runs(retry_id)]
    assert len(starts) == 3
    assert starts[1] - starts[0] >= 0.3 and starts[2] - starts[1] >= 0.6
    assert [run["status"] for run in proxy.get_runs(retry_id)] == ["failed", "failed", "failed"]

    # Later jobs still run on the one free worker, while the hanging job hangs.
    later = [tag("later") for _ in range(3)]
    for job_id in later:
        proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id)
    for job_id in later:
        assert proxy.wait(job_id, timeout=30)["status"] == "done"
    assert [run["phase"] for run in harness.runs(hang_id)] == ["start"]
    assert proxy.get_job(hang_id)["status"] == "running"
    assert daemon.alive

    # One JOB_ERROR per failed run, with its attempt; a JOB_RETRY per retry.
    wait_event(harness, retry_id, "job.removed", alive=(daemon,))
    assert types(harness, retry_id) == [
        "job.created",
        "job.error",
        "job.retry",
        "job.error",
        "job.retry",
        "job.error",
        "job.removed",
    ]
    wait_event(harness, flaky_id, "job.removed", alive=(daemon,))
    assert types(harness, flaky_id) == ["job.created", "job.error", "job.retry", "job.executed", "job.removed"]
    wait_event(harness, exit_id, "job.removed", alive=(daemon,))
    assert types(harness, exit_id) == ["job.created", "job.error", "job.removed"]
    log = daemon.log()
    assert f"job {retry_id} (queue jobs): attempt 1 of 3 failed; retrying in 0.3s" in log
    assert f"job {retry_id} (queue jobs): attempt 2 of 3 failed; retrying in 0.6s" in log

    failing.release_file(harness.oracle).touch()
    assert proxy.wait(hang_id, timeout=30)["status"] == "done"
    assert daemon.terminate() == 0


@pytest.mark.slow
@pytest.mark.parametrize(("broker", "store"), [("sqlite", "sqlite"), ("rabbitmq", "postgresql")])
def test_a_pending_retry_survives_a_daemon_restart(make_harness, broker, store):
    harness = make_harness(broker, store)
    proxy = harness.proxy()
    first = harness.start()
    job_id = tag("flaky")
    proxy.add_async_job(
        failing.flaky, args=[harness.oracle, job_id, 1], id=job_id, retries=1, retry_delay=6
    )  # time enough to stop the first daemon
    pending = wait_until(
        lambda: (lambda r: r if r and r["retry_at"] else None)(proxy.get_job(job_id)),
        f"job {job_id} to wait for its retry",
        alive=(first,),
    )
    assert (pending["status"], pending["attempt"], pending["runs"]) == ("scheduled", 2, 1)
    assert first.terminate() == 0
    assert len(harness.runs(job_id)) == 1

    second = harness.start()
    record = proxy.wait(job_id, timeout=30)
    assert (record["status"], record["runs"]) == ("done", 2)
    runs = harness.runs(job_id)
    assert [run["pid"] for run in runs] == [first.pid, second.pid]
    assert runs[1]["at"] >= pending["retry_at"]


@pytest.mark.slow
def test_a_listener_that_raises_or_blocks_does_not_delay_the_jobs(make_harness):
    harness = make_harness()
    settings = harness.app_settings(
        **{
            "sampleapp.listeners": "integration.sampleapp.failing:raising_listener "
            "integration.sampleapp.failing:blocking_listener"
        }
    )
    proxy = harness.proxy()
    daemon = harness.start(ini=harness.write_ini(settings))

    # The first job's CREATED event blocks the dispatcher thread.
    block_id = tag("block")
    proxy.add_async_job(jobs.record, args=[harness.oracle, block_id], id=block_id)
    wait_until(
        lambda: [r for r in harness.runs(block_id) if r["phase"] == "listener-blocked"],
        "the listener to block",
        alive=(daemon,),
    )

    # While it blocks: jobs due now, at fixed times, on an interval, and one
    # whose every event makes a listener raise.
    now = datetime.now(timezone.utc)
    due = {tag("date"): now + timedelta(seconds=s) for s in (1, 2)}
    for job_id, when in due.items():
        proxy.add_date_job(jobs.record, when, args=[harness.oracle, job_id], id=job_id)
    every_id, boom_id = tag("every"), tag("boom")
    proxy.add_interval_job(jobs.record, seconds=0.5, args=[harness.oracle, every_id], id=every_id)
    proxy.add_async_job(jobs.record, args=[harness.oracle, boom_id], id=boom_id)
    for job_id in [*due, boom_id]:
        assert proxy.wait(job_id, timeout=30)["status"] == "done"
    harness.wait_runs(every_id, 3, alive=(daemon,))
    assert proxy.wait(block_id, timeout=30)["status"] == "done"

    # All of that happened while the listener was still blocked: it has not
    # been released, and no event after the blocking one reached the oracle.
    assert sorted(r["phase"] for r in harness.runs(block_id)) == ["listener-blocked", "run"]
    for job_id, when in due.items():
        (run,) = harness.runs(job_id)
        assert run["at"] >= when.timestamp()  # on schedule, not before
    assert types(harness, every_id) == []

    failing.release_file(harness.oracle).touch()
    wait_until(
        lambda: [r for r in harness.runs(block_id) if r["phase"] == "listener-released"],
        "the listener to be released",
        alive=(daemon,),
    )
    proxy.cancel_job(every_id)
    wait_event(harness, every_id, "job.canceled", alive=(daemon,))
    released = [r for r in harness.runs(block_id) if r["phase"] == "listener-released"][0]["at"]
    for job_id in [*due, boom_id]:
        assert max(run["at"] for run in harness.runs(job_id)) < released
    # The raising listener was logged, and the other listeners still got every
    # event, after its sys.exit() too.
    wait_event(harness, boom_id, "job.removed", alive=(daemon,))
    assert types(harness, boom_id) == ["job.created", "job.executed", "job.removed"]
    log = daemon.log()
    assert "listener fails on purpose on job.executed of " + boom_id in log
    assert "SystemExit: 4" in log  # its sys.exit() on job.created did not end the dispatcher
    assert daemon.alive
    assert daemon.terminate() == 0
