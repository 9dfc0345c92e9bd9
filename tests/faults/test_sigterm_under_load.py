"""SIGTERM while jobs flow in: the daemon finishes what it runs, leaves what it
has not taken on the broker, exits 0, and the next daemon does the rest:
every accepted job runs exactly once."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from integration.conftest import wait_until
from integration.sampleapp import jobs

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.mark.parametrize(
    ("broker", "store"), [("sqlite", "sqlite"), ("redis", "postgresql"), ("rabbitmq", "postgresql")]
)
def test_sigterm_under_load_loses_and_repeats_nothing(make_harness, broker, store):
    harness = make_harness(broker, store)
    proxy = harness.proxy()
    first = harness.start()
    harness.wait_log(first, "running queues")
    accepted: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        n = 0
        while not stop.is_set() and n < 300:
            job_id = f"term-{n}-{uuid.uuid4().hex[:6]}"
            kind = n % 3
            if kind == 2:  # some that take a while, so runs are going at the SIGTERM
                proxy.add_async_job(jobs.slow, args=[harness.oracle, job_id, 0.3], id=job_id)
            else:
                proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id)
            accepted.append(job_id)
            n += 1
            time.sleep(0.005)

    producer = threading.Thread(target=produce)
    producer.start()
    wait_until(lambda: len(accepted) >= 100, "100 accepted jobs")
    assert first.terminate() == 0, first.log()
    assert "cut short" not in first.log()  # every run it started, it finished
    producer.join(60)
    second = harness.start()
    for job_id in accepted:
        harness.wait_job(proxy, job_id, {"done"}, timeout=60, alive=(second,))
    ends = [len([run for run in harness.runs(job_id) if run["phase"] in ("run", "end")]) for job_id in accepted]
    by_first = sum(1 for job_id in accepted for run in harness.runs(job_id) if run["pid"] == first.pid)
    print(
        f"\n[{broker}+{store} SIGTERM] accepted={len(accepted)} ran by the first daemon={by_first} "
        f"lost={ends.count(0)} duplicates={sum(1 for e in ends if e > 1)}"
    )
    assert ends == [1] * len(accepted)
    assert second.terminate() == 0
