"""Our SQL Kombu transport, on a real SQLite file (and PostgreSQL when present):
claims, acks, requeues; each claim under its consumer's name, given back only
once that consumer is dead."""

import queue as queue_module
import time

import kombu
import pytest
import sqlalchemy as sa

from conftest import jobstore_url
from pyramid_scheduler.brokers.sql import Transport, engine_for, messages, release_claims, release_consumers


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


def claims(url, queue):
    """(consumer, claimed) of each row of *queue*, oldest first."""
    with engine_for(url).connect() as c:
        return [
            (row.claimed_by, row.visible_at > 0)
            for row in c.execute(
                sa.select(messages.c.claimed_by, messages.c.visible_at)
                .where(messages.c.queue == queue)
                .order_by(messages.c.id)
            )
        ]


def test_each_claim_is_its_consumers_and_only_the_dead_ones_are_released(url):
    queue = f"tq-{time.time_ns()}"
    with connect(url, consumer_name="host:1:a") as a, connect(url, consumer_name="host:2:b") as b:
        put(a, queue, {"n": 1})
        put(a, queue, {"n": 2})
        assert get(a, queue).payload == {"n": 1}
        assert get(b, queue).payload == {"n": 2}
        assert claims(url, queue) == [("host:1:a", True), ("host:2:b", True)]
        # B is dead to A; A is alive.
        assert release_claims(url, [queue], live=lambda found: found & {"host:1:a"}) == 1
        assert claims(url, queue) == [("host:1:a", True), (None, False)]
        assert get(a, queue).payload == {"n": 2}
        # Then A is found dead too: its claims, by name.
        assert release_consumers(url, [queue], ["host:1:a", "host:3:gone"]) == 2
        assert claims(url, queue) == [(None, False), (None, False)]
        # With no heartbeat to ask (one daemon alone): every claim.
        assert get(a, queue).payload == {"n": 1}
        assert get(b, queue).payload == {"n": 2}
        assert release_claims(url, [queue]) == 2
        assert claims(url, queue) == [(None, False), (None, False)]


def test_a_live_consumers_claim_is_not_redelivered_at_another_consumers_start(url):
    queue = f"tq-{time.time_ns()}"
    with connect(url, consumer_name="host:1:a") as a, connect(url, consumer_name="host:2:b") as b:
        put(a, queue, {"n": 1})
        held = get(a, queue)
        # What B does at its start: A is alive; B is, but gives back its own claims.
        assert release_claims(url, [queue], live=lambda found: found & {"host:1:a"}) == 0
        with pytest.raises(queue_module.Empty):
            get(b, queue, timeout=0.3)
        held.ack()
        assert rows(url, queue) == []


def test_claims_without_a_consumer_are_released_whoever_is_alive(url):
    """Made by a build without ``claimed_by``, or a consumer given no name."""
    queue = f"tq-{time.time_ns()}"
    with connect(url) as anonymous:
        put(anonymous, queue, {"n": 1})
        assert get(anonymous, queue).payload == {"n": 1}
        assert claims(url, queue) == [(None, True)]
        assert release_claims(url, [queue], live=lambda found: found & {"host:1:a"}) == 1
        assert claims(url, queue) == [(None, False)]


def test_a_table_of_an_earlier_build_gains_the_claims_column(tmp_path):
    url = f"sqlite:///{tmp_path}/old.sqlite"
    old = sa.MetaData()
    sa.Table(
        "pyramid_scheduler_messages",
        old,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("delivery_tag", sa.String(64), nullable=False),
        sa.Column("visible_at", sa.Float, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    )
    engine = sa.create_engine(url)
    old.create_all(engine)
    with engine.begin() as c:
        c.execute(
            old.tables["pyramid_scheduler_messages"]
            .insert()
            .values(queue="tq-old", delivery_tag="t1", visible_at=time.time() + 60, payload="{}")
        )
    engine.dispose()
    assert release_claims(url, ["tq-old"], live=lambda found: found & {"host:1:a"}) == 1  # claimed by the earlier build
    assert claims(url, "tq-old") == [(None, False)]
