"""Flow limits across two real ``pscheduler`` daemons (Redis broker,
PostgreSQL job store): ``max_concurrency`` holds across both, and
``rate_limit`` spaces the starts of both, in order.

Oracle: the start and end times the sample application's jobs write to
their own SQLite file (``jobs.slow`` records both, ``jobs.record`` its run),
read after the fact: an overlap count and a window count, not timings.
"""

from __future__ import annotations

import itertools
import math
import re
import uuid
from datetime import datetime
from typing import Any

import pytest

from integration.conftest import wait_until
from integration.sampleapp import jobs

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def two_daemons(make_harness: Any, mode: str = "daemons") -> tuple[Any, Any, list[Any]]:
    """Two daemons of one queue: two ``pscheduler`` (*mode* ``"daemons"``), or
    one ``pscheduler --processes 2`` (``"processes"``: the list holds its supervisor)."""
    # A consumer takes up to broker.prefetch waiting messages at once: a small
    # one leaves some of a burst to the other daemon.
    settings = {"executor.max_workers": "4", "limits.poll": "0.2", "broker.prefetch": "2"}
    harness = make_harness(broker="redis", store="postgresql", **settings)
    proxy = harness.proxy()
    assert proxy.get_job("no-such-job") is None  # the tables, before two daemons race to make them
    if mode == "processes":
        supervisor = harness.start("--processes", "2")
        wait_until(
            lambda: len(proxy.get_daemons()[0]["daemons"]) == 2 and supervisor.log().count("running queues") == 2,
            "both processes to run the queue",
            alive=(supervisor,),
        )
        return harness, proxy, [supervisor]
    daemons = [harness.start() for _ in range(2)]
    for daemon in daemons:
        harness.wait_active(proxy, daemon)
        daemon.wait_consuming()
    return harness, proxy, daemons


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of *intervals* (start, end) open at one time."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    # At equal times an end comes before a start (-1 < 1): touching is not overlapping.
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


@pytest.mark.parametrize("mode", ["daemons", "processes"])
def test_max_concurrency_holds_across_two_daemons(make_harness, mode):
    harness, proxy, daemons = two_daemons(make_harness, mode)
    ids = [f"slow-{n}-{uuid.uuid4().hex[:6]}" for n in range(8)]
    for job_id in ids:
        proxy.add_async_job(jobs.slow, args=[harness.oracle, job_id, 0.6], id=job_id, max_concurrency=2)

    seen_waiting: dict[str, str] = {}

    def all_done() -> bool:
        records = [proxy.get_job(job_id) for job_id in ids]  # None: not stored yet
        for record in records:
            if record is not None and record["status"] == "waiting":
                seen_waiting[record["id"]] = record["waiting_reason"]
        return all(record is not None and record["status"] == "done" for record in records)

    wait_until(all_done, "the 8 slow jobs to be done", alive=tuple(daemons))
    runs = {job_id: {run["phase"]: run for run in harness.runs(job_id)} for job_id in ids}
    intervals = [(phases["start"]["at"], phases["end"]["at"]) for phases in runs.values()]
    assert len(intervals) == 8  # each ran once: held runs are not missed
    assert most_at_once(intervals) <= 2, sorted(
        (start, end, phases["start"]["pid"])
        for start, end, phases in ((p["start"]["at"], p["end"]["at"], p) for p in runs.values())
    )
    assert seen_waiting  # 8 jobs, 2 slots: some waited, and said why
    assert set(seen_waiting.values()) == {
        "concurrency limit: 2 run(s) with key 'integration.sampleapp.jobs:slow' already running; waiting for a slot"
    }
    assert all(proxy.get_job(job_id)["runs"] == 1 for job_id in ids)
    # Both daemons ran some (the limit held across them, not within one).
    pids = [phases["start"]["pid"] for phases in runs.values()]
    assert len(set(pids)) == 2, pids


def test_rate_limit_spaces_the_starts_of_two_daemons_in_order(make_harness):
    harness, proxy, daemons = two_daemons(make_harness)
    ids = [f"rated-{n:02d}-{uuid.uuid4().hex[:6]}" for n in range(20)]
    reserved: dict[str, float] = {}
    for job_id in ids:
        proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id, rate_limit="5/s", rate_key="api")
        # The next is sent once this one has its start reserved (it runs or
        # waits): the order of the requests is the order of the reservations.
        record = harness.wait_job(proxy, job_id, {"waiting", "running", "done"}, alive=tuple(daemons))
        if record["status"] == "waiting":
            match = re.search(r"rate limit: 5/s for key 'api'; start reserved at (\S+)$", record["waiting_reason"])
            assert match, record["waiting_reason"]
            reserved[job_id] = datetime.fromisoformat(match.group(1)).timestamp()
    for job_id in ids:
        harness.wait_job(proxy, job_id, {"done"}, alive=tuple(daemons))

    assert [len(harness.runs(job_id)) for job_id in ids] == [1] * 20  # delayed, never dropped nor repeated
    starts = [harness.runs(job_id)[0]["at"] for job_id in ids]
    assert starts == sorted(starts)  # in the order they were sent
    # The rule, read from the job store: reserved starts at least 0.2 s apart.
    times = [reserved[job_id] for job_id in ids if job_id in reserved]
    assert len(times) >= 15  # sent faster than the rate: most had to wait
    assert all(later - earlier >= 0.2 - 1e-6 for earlier, later in itertools.pairwise(times)), times
    # The oracle's time is taken when the function runs, a little after its
    # reserved start (the scheduler's wake-up, the start's write): a lag of
    # up to k spacings lets k more starts into a 1-second window than the
    # rate. The tolerance is that k, from the lags measured here (one, in
    # practice: the lags are tens of milliseconds).
    lags = [harness.runs(job_id)[0]["at"] - at for job_id, at in reserved.items()]
    assert min(lags) >= -0.01, lags  # never before its reserved start (one host's clock)
    tolerance = math.ceil(max(lags) / 0.2)
    most = max(sum(1 for other in starts if start <= other < start + 1.0) for start in starts)
    assert most <= 5 + tolerance, (starts, lags)
