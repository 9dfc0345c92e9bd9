"""The broker killed and restarted under load: a private ``redis-server`` on a
port of its own, which the test kills with SIGKILL and starts again.

* With AOF (``appendfsync always``): every job whose ``add_*_job`` returned
  runs once; calls made while Redis is down raise ``EnqueueError`` within
  ``scheduler.broker.timeout``; the producer and the daemon reconnect by
  themselves (same daemon process throughout).
* Without persistence (Redis's ``save ""``, no AOF): what Redis held when it
  died is gone. The test shows it: jobs accepted while no daemon was
  consuming are lost with the broker, as docs/deployment.rst says.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import IN_CI
from integration.conftest import wait_until
from integration.sampleapp import jobs
from pyramid_scheduler import EnqueueError

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


class PrivateRedis:
    def __init__(self, folder: Path, aof: bool) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if IN_CI:
                pytest.fail("redis-server is not installed (CI=true: service-backed tests must run)")
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.folder = folder
        self.aof = aof
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--save", "", "--appendonly", "yes" if self.aof else "no"]
        if self.aof:
            args += ["--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def answers() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(answers, f"redis-server on port {self.port}", timeout=15)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path):
    made: list[PrivateRedis] = []

    def make(aof: bool) -> PrivateRedis:
        folder = tmp_path / f"redis-{len(made)}"
        folder.mkdir()
        server = PrivateRedis(folder, aof)
        server.start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.kill()


def test_redis_killed_under_load_with_aof_loses_no_accepted_job(make_harness, private_redis):
    redis = private_redis(aof=True)
    harness = make_harness(store="postgresql", **{"broker.url": redis.url, "broker.timeout": "1"})
    proxy = harness.proxy()
    daemon = harness.start()
    harness.wait_log(daemon, "running queues")
    accepted: list[str] = []
    refused: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        n = 0
        while not stop.is_set():
            job_id = f"load-{n}-{uuid.uuid4().hex[:6]}"
            n += 1
            try:
                proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id)
            except EnqueueError:
                refused.append(job_id)
            else:
                accepted.append(job_id)
            time.sleep(0.01)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_until(lambda: len(accepted) >= 100, "100 accepted jobs")
        redis.kill()
        wait_until(lambda: len(refused) >= 2, "enqueue to fail while Redis is down")
        redis.start()
        count = len(accepted)
        wait_until(lambda: len(accepted) >= count + 100, "enqueue to work again after the restart")
    finally:
        stop.set()
        producer.join(30)
    for job_id in accepted:
        harness.wait_job(proxy, job_id, {"done"}, timeout=60, alive=(daemon,))
    runs = [len(harness.runs(job_id)) for job_id in accepted]
    print(f"\n[redis AOF restart] accepted={len(accepted)} refused while down={len(refused)} "
          f"ran={sum(runs)} lost={runs.count(0)} duplicates={sum(1 for r in runs if r > 1)}")
    assert runs == [1] * len(accepted)
    # A refused call was not confirmed; its write may still have landed just
    # before the kill (then it runs, once): callers retry with the same id.
    assert all(len(harness.runs(job_id)) <= 1 for job_id in refused)
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
