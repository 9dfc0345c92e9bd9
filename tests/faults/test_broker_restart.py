"""The broker killed and restarted under load: a private ``redis-server`` on a
port of its own, which the test kills with SIGKILL and starts again; and
RabbitMQ behind a TCP proxy that the test cuts (every connection dropped,
new ones refused) for a few seconds.

* With AOF (``appendfsync always``): every job whose ``add_*_job`` returned
  runs once; calls made while Redis is down raise ``EnqueueError`` within
  ``scheduler.broker.timeout``; the producer and the daemon reconnect by
  themselves (same daemon process throughout).
* Without persistence (Redis's ``save ""``, no AOF): what Redis held when it
  died is gone. The test shows it: jobs accepted while no daemon was
  consuming are lost with the broker, as docs/deployment.rst says.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from tcpproxy import TCPProxy

from conftest import AMQP_URL, require_service
from integration.conftest import wait_until
from integration.sampleapp import jobs
from pyramid_scheduler import EnqueueError

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

OUTAGE = 3.0  # seconds RabbitMQ stays away
#: Jobs accepted before the cut, and again after it (``FAULT_JOBS`` scales it).
BATCH = max(20, int(os.environ.get("FAULT_JOBS", "400")) // 10)


class Load:
    """A thread adding ``jobs.record`` jobs every 10 ms through *proxy* until
    the ``with`` block ends: ``accepted`` holds (job id, monotonic time) of
    every call that returned, ``refused`` the ids of those that raised
    ``EnqueueError``."""

    def __init__(self, proxy: Any, oracle: str, prefix: str) -> None:
        self.proxy, self.oracle, self.prefix = proxy, oracle, prefix
        self.accepted: list[tuple[str, float]] = []
        self.refused: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce)

    def _produce(self) -> None:
        n = 0
        while not self._stop.is_set():
            job_id = f"{self.prefix}-{n}-{uuid.uuid4().hex[:6]}"
            n += 1
            try:
                self.proxy.add_async_job(jobs.record, args=[self.oracle, job_id], id=job_id)
            except EnqueueError:
                self.refused.append(job_id)
            else:
                self.accepted.append((job_id, time.monotonic()))
            time.sleep(0.01)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait_accepted(self, more: int, what: str) -> None:
        count = len(self.accepted)
        wait_until(lambda: len(self.accepted) >= count + more, what)

    def wait_refused(self, what: str) -> None:
        wait_until(lambda: len(self.refused) >= 2, what)

    def settle(self, harness: Any, daemon: Any) -> list[int]:
        """Wait until every accepted job is done; the runs of each. A refused
        call was not confirmed: its write may still have landed just before
        the fault (then it runs, once); callers retry with the same id."""
        ids = [job_id for job_id, _ in self.accepted]
        for job_id in ids:
            harness.wait_job(self.proxy, job_id, {"done"}, timeout=60, alive=(daemon,))
        assert all(len(harness.runs(job_id)) <= 1 for job_id in self.refused)
        return [len(harness.runs(job_id)) for job_id in ids]


def test_redis_killed_under_load_with_aof_loses_no_accepted_job(make_harness, private_redis):
    redis = private_redis(aof=True)
    harness = make_harness(store="postgresql", **{"broker.url": redis.url, "broker.timeout": "1"})
    proxy = harness.proxy()
    daemon = harness.start()
    harness.wait_log(daemon, "running queues")
    with Load(proxy, harness.oracle, "load") as load:
        load.wait_accepted(100, "100 accepted jobs")
        redis.kill()
        load.wait_refused("enqueue to fail while Redis is down")
        redis.start()
        load.wait_accepted(100, "enqueue to work again after the restart")
    runs = load.settle(harness, daemon)
    print(
        f"\n[redis AOF restart] accepted={len(runs)} refused while down={len(load.refused)} "
        f"ran={sum(runs)} lost={runs.count(0)} duplicates={sum(1 for r in runs if r > 1)}"
    )
    assert runs == [1] * len(runs)
    assert daemon.alive  # reconnected by itself
    assert daemon.terminate() == 0


def test_redis_without_persistence_loses_what_it_held(make_harness, private_redis):
    redis = private_redis(aof=False)
    harness = make_harness(store="postgresql", **{"broker.url": redis.url, "broker.timeout": "1"})
    proxy = harness.proxy()
    held = [f"held-{n}-{uuid.uuid4().hex[:6]}" for n in range(10)]
    for job_id in held:  # no daemon yet: the messages wait in Redis
        proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id)
    redis.kill()
    redis.start()
    daemon = harness.start()
    harness.wait_log(daemon, "running queues")
    after = f"after-{uuid.uuid4().hex[:6]}"
    proxy.add_async_job(jobs.record, args=[harness.oracle, after], id=after)
    harness.wait_job(proxy, after, {"done"}, alive=(daemon,))
    lost = [job_id for job_id in held if proxy.get_job(job_id) is None]
    print(f"\n[redis without AOF restart] accepted before the crash={len(held)} lost={len(lost)}")
    assert lost == held  # documented: Redis without AOF keeps nothing across a crash
    assert daemon.terminate() == 0


def first_consumed_after(log: str, since: float) -> float:
    """When the daemon's log first shows a message taken from the broker
    (stored or absorbed as a duplicate) after *since* (epoch seconds)."""
    for line in log.splitlines():
        if line.startswith("SAMPLELOG ") and ("): stored" in line or "absorbed" in line):
            stamp = datetime.strptime(line[10:33], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if stamp > since:
                return stamp
    raise AssertionError(f"no message consumed after {since}")


@pytest.fixture
def amqp_proxy():
    """A TCP proxy in front of the shared RabbitMQ (which the test may not
    restart): cutting it is, for every client, the broker going away."""
    require_service("rabbitmq")
    target = urlsplit(AMQP_URL)
    proxy = TCPProxy((target.hostname or "127.0.0.1", target.port or 5672))
    yield proxy
    proxy.close()


def test_rabbitmq_gone_under_load_loses_no_confirmed_job(amqp_proxy, make_harness):
    """RabbitMQ's connections all dropped, and new ones refused for a few
    seconds, while a producer publishes and a daemon consumes, both through
    the proxy: every publish that was confirmed runs exactly once (durable
    queue, persistent messages, publisher confirms), and both sides
    reconnect by themselves."""
    parts = urlsplit(AMQP_URL)
    url = parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{amqp_proxy.port}").geturl()
    harness = make_harness("rabbitmq", "postgresql", **{"broker.url": url, "broker.timeout": "1"})
    proxy = harness.proxy()
    daemon = harness.start()
    harness.wait_log(daemon, "running queues")
    with Load(proxy, harness.oracle, "amqp") as load:
        load.wait_accepted(BATCH, f"{BATCH} accepted jobs")
        amqp_proxy.cut()
        load.wait_refused("enqueue to fail while RabbitMQ is away")
        time.sleep(OUTAGE)
        restored, restored_wall = time.monotonic(), time.time()
        amqp_proxy.restore()
        load.wait_accepted(BATCH, "enqueue to work again after the outage")
    runs = load.settle(harness, daemon)
    producer_back = next(at for _, at in load.accepted if at > restored) - restored
    daemon_back = first_consumed_after(daemon.log(), restored_wall) - restored_wall
    print(
        f"\n[rabbitmq cut {OUTAGE:g}s] accepted={len(runs)} refused while away={len(load.refused)} "
        f"ran={sum(runs)} lost={runs.count(0)} duplicates={sum(1 for r in runs if r > 1)} "
        f"reconnected after the restore: producer {producer_back:.2f}s, daemon {daemon_back:.2f}s"
    )
    assert runs == [1] * len(runs)
    assert daemon.alive  # reconnected by itself
    assert daemon.terminate() == 0


def test_daemon_leaves_a_silently_dead_rabbitmq_connection(amqp_proxy, make_harness):
    """The daemon's RabbitMQ connection goes silent for good (no reset: the
    kernel still acknowledges, as behind a NAT that dropped the flow): the
    AMQP heartbeat notices, the daemon connects again and runs a job
    published meanwhile."""
    parts = urlsplit(AMQP_URL)
    url = parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{amqp_proxy.port}").geturl()
    harness = make_harness("rabbitmq", "postgresql", **{"broker.url": url, "broker.timeout": "1"})
    direct = harness.proxy(**{"scheduler.broker.url": AMQP_URL})  # same queues, not through the proxy
    daemon = harness.start()
    harness.wait_log(daemon, "running queues")
    before = f"before-{uuid.uuid4().hex[:6]}"
    direct.add_async_job(jobs.record, args=[harness.oracle, before], id=before)
    harness.wait_job(direct, before, {"done"}, alive=(daemon,))
    amqp_proxy.freeze()
    time.sleep(1)  # the proxy's pumps look at the flag twice a second
    frozen = time.monotonic()
    after = f"after-{uuid.uuid4().hex[:6]}"
    direct.add_async_job(jobs.record, args=[harness.oracle, after], id=after)
    harness.wait_job(direct, after, {"done"}, timeout=60, alive=(daemon,))
    print(
        f"\n[rabbitmq silent connection] the daemon ran a job published after the freeze "
        f"{time.monotonic() - frozen:.1f}s later"
    )
    assert len(harness.runs(after)) == 1
    assert daemon.terminate() == 0
