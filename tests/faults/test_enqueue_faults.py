"""The broker unreachable or hung at enqueue time: ``add_*_job`` raises
``EnqueueError`` within ``scheduler.broker.timeout`` (plus
:data:`pyramid_scheduler.brokers.connection.SLACK`) every time, threads and connections
do not pile up, and the first enqueue once the broker is back succeeds.

Faults: nothing listening on the port (Redis, RabbitMQ); a Redis paused with
SIGSTOP (a private ``redis-server``); RabbitMQ behind a TCP proxy that stops
forwarding (connections accepted, no byte either way); the SQLite broker file
held by another process's exclusive transaction. Each round makes one call,
then a burst of ``3 × scheduler.broker.pool_limit`` concurrent calls, so
callers also wait for an exhausted connection pool while the broker hangs.

``ENQUEUE_TRIALS`` (default 2, at least 2) sets the rounds per fault.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from tcpproxy import TCPProxy

from conftest import require_service
from daemons import free_port
from integration.sampleapp import jobs
from pyramid_scheduler import EnqueueError
from pyramid_scheduler.brokers.connection import SLACK

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

TRIALS = max(2, int(os.environ.get("ENQUEUE_TRIALS", "2")))  # 2: a pile-up shows from round to round
TIMEOUT = 2.0  # scheduler.broker.timeout
POOL = 2  # scheduler.broker.pool_limit
BURST = 3 * POOL
#: The bound every call must meet, with 1 s for a busy test machine.
BOUND = TIMEOUT + SLACK + 1.0


def threads() -> int:
    """Threads of this process, not counting the TCP proxy's."""
    return sum(1 for thread in threading.enumerate() if not thread.name.startswith("tcpproxy-"))


def descriptors() -> list[str]:
    """What this process's file descriptors point to."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return links


def fds() -> int:
    """File descriptors other than sockets (the TCP proxy's are sockets)."""
    return sum(1 for link in descriptors() if not link.startswith("socket:["))


def sockets_to(port: int) -> int:
    """TCP connections of this process to 127.0.0.1:*port* (from /proc)."""
    if not port:
        return 0
    inodes = {link[8:-1] for link in descriptors() if link.startswith("socket:[")}
    count = 0
    with open("/proc/self/net/tcp", encoding="ascii") as table:
        next(table)
        for line in table:
            fields = line.split()
            remote, inode = fields[2], fields[9]
            if int(remote.split(":")[1], 16) == port and inode in inodes:
                count += 1
    return count


@dataclass
class Fault:
    """A broker URL for the producer; *on* and *off* make and mend the fault;
    *port* is the broker port the producer connects to (0: none)."""

    url: str
    on: Callable[[], None]
    off: Callable[[], None]
    port: int = 0
    warm: bool = True  # enqueue once before the fault (a pool with live connections)
    broker_clients: Callable[[], int] | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)


@contextmanager
def fault_for(kind: str, tmp_path: Any, private_redis: Any) -> Iterator[Fault]:
    if kind == "redis-closed":
        server = private_redis(port=free_port(), start=False)
        yield Fault(server.url, lambda: None, server.start, port=server.port, warm=False, broker_clients=server.clients)
    elif kind == "redis-paused":
        server = private_redis()
        fault = Fault(server.url, server.pause, server.resume, port=server.port, broker_clients=server.clients)
        try:
            yield fault
        finally:
            server.resume()
    elif kind.startswith("rabbitmq"):
        require_service("rabbitmq")
        port = free_port()
        proxies: list[TCPProxy] = []

        def listen() -> None:
            proxies.append(TCPProxy(("127.0.0.1", 5672), port=port))

        if kind == "rabbitmq-closed":
            fault = Fault(f"amqp://guest:guest@127.0.0.1:{port}//", lambda: None, listen, port=port, warm=False)
        else:
            listen()
            fault = Fault(
                f"amqp://guest:guest@127.0.0.1:{port}//",
                lambda: proxies[0].stall(),
                lambda: proxies[0].restore(),
                port=port,
            )
        try:
            yield fault
        finally:
            for proxy in proxies:
                proxy.close()
    elif kind == "sqlite-locked":
        path = tmp_path / "broker.sqlite"
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

        def lock() -> None:
            holder.execute("BEGIN EXCLUSIVE")

        def unlock() -> None:
            if holder.in_transaction:
                holder.execute("ROLLBACK")

        try:
            yield Fault(f"sqlite:///{path}", lock, unlock)
        finally:
            unlock()
            holder.close()
    else:
        raise ValueError(kind)


@pytest.mark.parametrize(
    "kind", ["redis-closed", "redis-paused", "rabbitmq-closed", "rabbitmq-stalled", "sqlite-locked"]
)
def test_enqueue_raises_within_the_bound_and_recovers(make_harness, private_redis, tmp_path, kind):
    broker = kind.split("-")[0]
    harness = make_harness("rabbitmq" if broker == "rabbitmq" else "sqlite")
    with fault_for(kind, tmp_path, private_redis) as fault:
        proxy = harness.proxy(
            **{
                "scheduler.broker.url": fault.url,
                "scheduler.broker.timeout": f"{TIMEOUT:g}",
                "scheduler.broker.pool_limit": str(POOL),
            }
        )
        threads_before = threads()

        def enqueue(results: list[tuple[float, BaseException | None]]) -> None:
            job_id = f"{kind}-{uuid.uuid4().hex[:8]}"
            started = time.monotonic()
            try:
                proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id)
            except BaseException as exc:  # noqa: BLE001 - judged below
                results.append((time.monotonic() - started, exc))
            else:
                results.append((time.monotonic() - started, None))

        if fault.warm:
            enqueue(warm := [])
            assert warm[0][1] is None, warm
        fault.on()
        results: list[tuple[float, BaseException | None]] = []
        # After each round: threads, fds, broker sockets; and their peak during the burst.
        counts: list[tuple[int, int, int, int]] = []
        for _ in range(TRIALS):
            enqueue(results)
            burst = [threading.Thread(target=enqueue, args=(results,)) for _ in range(BURST)]
            for thread in burst:
                thread.start()
            peak = 0
            while any(thread.is_alive() for thread in burst):
                peak = max(peak, sockets_to(fault.port))
                time.sleep(0.05)
            counts.append((threads(), fds(), sockets_to(fault.port), peak))
        fault.off()

        after: list[tuple[float, BaseException | None]] = []
        enqueue(after)
        clients = fault.broker_clients() if fault.broker_clients else None
        errors = [exc for _, exc in results]
        worst = max(elapsed for elapsed, _ in results)
        pool_waits = sum(1 for exc in errors if "no broker connection free" in str(exc))
        print(
            f"\n[enqueue {kind}] calls={len(results)} raised={sum(isinstance(e, EnqueueError) for e in errors)} "
            f"worst={worst:.2f}s bound={TIMEOUT:g}s+{SLACK:g}s pool-exhausted={pool_waits} "
            f"(threads, fds, broker sockets, peak) per round={counts} first after recovery="
            f"{'ok' if after[0][1] is None else after[0][1]!r} in {after[0][0]:.2f}s "
            f"broker clients after={clients}"
        )
        assert all(isinstance(exc, EnqueueError) for exc in errors), errors
        assert worst <= BOUND, sorted(elapsed for elapsed, _ in results)
        if not kind.endswith("closed"):  # a hung broker holds every pooled connection
            assert pool_waits > 0
        assert after[0][1] is None, after  # the first call after recovery succeeds
        assert all(count[0] == threads_before for count in counts)  # no thread left behind
        assert counts[-1][1] <= counts[0][1]  # no descriptor piles up from round to round
        assert all(count[2] <= POOL for count in counts)  # at most one connection per pool slot
        assert sockets_to(fault.port) <= POOL
        if clients is not None:
            assert clients <= POOL
        proxy.close()
