"""Our SQL Kombu transport, on a real SQLite file (and PostgreSQL when present)."""

import queue as queue_module
import time

import kombu
import pytest
import sqlalchemy as sa

from conftest import jobstore_url
from pyramid_scheduler.brokers.sql import Transport, engine_for, messages


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    url = jobstore_url(request.param, tmp_path)
    yield url
    if request.param == "postgresql":
        with engine_for(url).begin() as conn:
            conn.execute(messages.delete().where(messages.c.queue.like("tq-%")))


def connect(url, **options):
    return kombu.Connection("sql://", transport=Transport, transport_options={"url": url, **options})


def put(conn, queue, body):
    with conn.Producer() as producer:
        producer.publish(body, routing_key=queue, exchange="", declare=[kombu.Queue(queue)], serializer="json")


def get(conn, queue, timeout=1.0):
    return conn.SimpleQueue(queue, no_ack=False).get(timeout=timeout)


def rows(url, queue):
    with engine_for(url).connect() as c:
        return c.execute(sa.select(messages.c.visible_at).where(messages.c.queue == queue)).all()


def test_fifo_claim_then_ack_deletes(url):
    queue = f"tq-{time.time_ns()}"
    with connect(url) as conn:
        for i in range(3):
            put(conn, queue, {"n": i})
        first = get(conn, queue)
        assert first.payload == {"n": 0}
        assert len(rows(url, queue)) == 3  # claimed, not removed
        first.ack()
        assert len(rows(url, queue)) == 2
        assert get(conn, queue).payload == {"n": 1}


def test_reject_deletes_and_requeue_restores(url):
    queue = f"tq-{time.time_ns()}"
    with connect(url) as conn:
        put(conn, queue, {"n": 1})
        put(conn, queue, {"n": 2})
        message = get(conn, queue)
        message.reject()
        assert len(rows(url, queue)) == 1
        message = get(conn, queue)
        assert message.payload == {"n": 2}
        message.requeue()
        again = get(conn, queue)
        assert again.payload == {"n": 2}
        again.ack()
        assert rows(url, queue) == []


def test_unacked_messages_come_back_when_the_channel_closes(url):
    queue = f"tq-{time.time_ns()}"
    with connect(url) as conn:
        put(conn, queue, {"n": 1})
        simple = conn.SimpleQueue(queue, no_ack=False)
        assert simple.get(timeout=1).payload == {"n": 1}
        simple.close()
    with connect(url) as conn:
        assert get(conn, queue).payload == {"n": 1}


def test_claim_of_a_dead_consumer_expires(url):
    queue = f"tq-{time.time_ns()}"
    with connect(url, visibility_timeout=1.0) as conn:
        put(conn, queue, {"n": 1})
        message = get(conn, queue)
        assert message.payload == {"n": 1}
        # Simulate kill -9: the consumer never acks and never closes cleanly.
        message.channel.qos._delivered.clear()
        with pytest.raises(queue_module.Empty):  # while the claim holds
            get(conn, queue, timeout=0.3)
        redelivered = get(conn, queue, timeout=5)  # once the claim expires
        assert redelivered.payload == {"n": 1}
        assert redelivered.delivery_info["redelivered"] is True
        redelivered.ack()
        assert rows(url, queue) == []


def test_database_errors_raise_instead_of_dropping(tmp_path):
    url = f"sqlite:///{tmp_path}/broken.sqlite"
    queue = "tq-broken"
    with connect(url) as conn:
        put(conn, queue, {"n": 1})
        with engine_for(url).begin() as c:
            c.execute(sa.text("DROP TABLE pyramid_scheduler_messages"))
        with pytest.raises(sa.exc.OperationalError):
            put(conn, queue, {"n": 2})
