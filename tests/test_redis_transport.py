"""The package's Redis channel on a real Redis: one redis client per
connection pool (Kombu builds one per operation), messages still delivered,
acked and cleaned up."""

import json

import kombu
import pytest

from conftest import make_settings
from pyramid_scheduler.broker import Publisher, make_connection, make_queue
from pyramid_scheduler.redis_transport import Channel, processing_key
from pyramid_scheduler.settings import parse_settings


@pytest.fixture
def settings(tmp_var):
    settings = parse_settings(make_settings(tmp_var, broker="redis"))
    yield settings
    with make_connection(settings) as conn:
        make_queue(settings, "jobs")(conn.default_channel).delete()


def test_one_client_per_pool_and_every_message_delivered(settings):
    publisher = Publisher(settings)
    try:
        for i in range(20):
            publisher.publish(b'{"n": %d}' % i, "jobs", f"job-{i}")
    finally:
        publisher.close()

    received = []
    with make_connection(settings) as conn:
        channel = conn.channel()
        assert isinstance(channel, Channel)
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.connection_pool is channel.pool
        given = object()
        with channel.conn_or_acquire(given) as client:
            assert client is given

        queue = make_queue(settings, "jobs")

        def on_message(message):
            received.append(message.body)
            message.ack()

        with kombu.Consumer(channel, queues=[queue], on_message=on_message, accept=["application/json"]):
            while len(received) < 20:
                conn.drain_events(timeout=5)

        with channel.conn_or_acquire() as client:
            assert client.llen(processing_key(queue.name)) == 0
            assert client.hlen(channel.unacked_key) == 0
            old = client
        # After a fork or a close Kombu makes a new pool: a new client comes with it.
        channel._disconnect_pools()
        with channel.conn_or_acquire() as client:
            assert client is not old
            assert client.connection_pool is channel.pool
            assert client.ping()
        channel.close()
    assert sorted(json.loads(body)["n"] for body in received) == list(range(20))
