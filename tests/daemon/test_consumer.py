"""The consumer (:mod:`pyramid_scheduler.daemon.consumer`): the messages a broker has
already delivered are stored as one batch, on
every broker: one ``INSERT`` of job records for many messages, then each
message acked. Through a real consumer (an in-process
:class:`~pyramid_scheduler.daemon.service.SchedulerService`) on SQLite, Redis and
RabbitMQ."""

import threading

import pytest
import sqlalchemy as sa
from pyramid.config import Configurator

from conftest import make_settings, wait_for
from pyramid_scheduler.brokers.connection import make_connection, make_queue
from pyramid_scheduler.brokers.redis import Channel, processing_key
from pyramid_scheduler.daemon.service import SchedulerService

RAN = []
LOCK = threading.Lock()


def record(tag):
    with LOCK:
        RAN.append(tag)


def waiting(settings):
    """Messages in the queue (on SQL and Redis, also those claimed and not acked)."""
    with make_connection(settings) as conn:
        queue = make_queue(settings, "jobs")(conn.default_channel)
        if isinstance(conn.default_channel, Channel):
            with conn.default_channel.conn_or_acquire() as client:
                lists = client.scan_iter(match=processing_key(queue.name) + "*", _type="list")
                return client.llen(queue.name) + sum(client.llen(key) for key in lists)  # each consumer's
        return queue.queue_declare(passive=True).message_count


@pytest.mark.parametrize("broker", ["sqlite", "redis", "rabbitmq"])
def test_messages_already_delivered_are_stored_together(tmp_var, broker, drop_tables):
    settings = make_settings(tmp_var, broker=broker, store="postgresql" if broker != "sqlite" else "sqlite")
    drop_tables.append((settings["scheduler.jobstore.url"], settings["scheduler.jobstore.tablename_prefix"]))
    with Configurator(settings=settings) as config:
        config.include("pyramid_scheduler")
    proxy = config.registry.scheduler
    count = 30
    RAN.clear()
    try:
        # Queued before the daemon starts: all waiting when it begins to consume.
        ids = [proxy.add_async_job(record, args=[f"m{i}"]) for i in range(count)]
        service = SchedulerService(proxy)
        ledger = service.engine.ledger
        inserts = []

        def seen(conn, cursor, statement, *_):
            if statement.startswith(f"INSERT INTO {ledger.jobs.name} "):
                inserts.append(statement)

        sa.event.listen(ledger.engine, "before_cursor_execute", seen)
        service.start_thread()
        try:
            assert service.started.wait(20)
            wait_for(lambda: len(RAN) == count, timeout=30)
            wait_for(lambda: all((ledger.get_job(job) or {}).get("status") == "done" for job in ids), timeout=30)
        finally:
            service.stop()
            service.join(20)
        assert sorted(RAN) == sorted(f"m{i}" for i in range(count))
        assert len(inserts) <= count // 3, f"{len(inserts)} INSERTs for {count} waiting messages"
        assert waiting(proxy.settings) == 0  # all acked: none came back when the daemon let go
    finally:
        proxy.close()


@pytest.mark.parametrize("broker", ["sqlite", "redis", "rabbitmq"])
def test_durable_false_jobs_are_acked_then_run_and_recorded_after(tmp_var, broker, drop_tables):
    """Through the real consumer: nothing of a durable=False job is stored
    before its run, every message is acked (none comes back when the daemon
    lets go), each job runs once and its record and run are written after."""
    settings = make_settings(tmp_var, broker=broker, store="postgresql" if broker != "sqlite" else "sqlite")
    drop_tables.append((settings["scheduler.jobstore.url"], settings["scheduler.jobstore.tablename_prefix"]))
    with Configurator(settings={**settings, "scheduler.durable": "false"}) as config:
        config.include("pyramid_scheduler")
    proxy = config.registry.scheduler
    count = 30
    RAN.clear()
    try:
        ids = [proxy.add_async_job(record, args=[f"f{i}"]) for i in range(count)]
        service = SchedulerService(proxy)
        ledger = service.engine.ledger
        inserts = []

        def seen(conn, cursor, statement, *_):
            if statement.startswith(f"INSERT INTO {ledger.jobs.name} ") and len(RAN) < count:
                inserts.append(tuple(RAN))

        sa.event.listen(ledger.engine, "before_cursor_execute", seen)
        service.start_thread()
        try:
            assert service.started.wait(20)
            wait_for(lambda: all((ledger.get_job(job) or {}).get("status") == "done" for job in ids), timeout=30)
        finally:
            service.stop()
            service.join(20)
        assert sorted(RAN) == sorted(f"f{i}" for i in range(count))
        # Each record is written after a run: never before the first job ran.
        assert all(ran for ran in inserts)
        assert all([run["status"] for run in ledger.list_runs(job)] == ["done"] for job in ids)
        assert waiting(proxy.settings) == 0
    finally:
        proxy.close()
