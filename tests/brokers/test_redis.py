"""The package's Redis channel on a real Redis: one redis client per
connection pool (Kombu builds one per operation), messages still delivered,
acked and cleaned up; the messages waiting taken in batches, acks kept out
of Redis, requeued and unsettled messages, list entries that are not
messages."""

import json
from contextlib import contextmanager

import kombu
import pytest
import redis

from conftest import REDIS_URL, make_settings, unique
from pyramid_scheduler.brokers.connection import Publisher, make_connection, make_queue
from pyramid_scheduler.brokers.redis import NOT_A_MESSAGE, Channel, processing_key, release_claims
from pyramid_scheduler.settings import parse_settings


@pytest.fixture
def settings(tmp_var):
    settings = parse_settings(make_settings(tmp_var, broker="redis"))
    yield settings
    with make_connection(settings) as conn:
        make_queue(settings, "jobs")(conn.default_channel).delete()


def publish(settings, count):
    publisher = Publisher(settings)
    try:
        for i in range(count):
            publisher.publish(b'{"n": %d}' % i, "jobs", f"job-{i}")
    finally:
        publisher.close()


def test_one_client_per_pool_and_every_message_delivered(settings):
    publish(settings, 20)

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


def _consume(settings, conn, on_message, until, prefetch=10, batch=None):
    channel = conn.channel()
    if batch is not None:
        channel.batch = batch
    queue = make_queue(settings, "jobs")
    with kombu.Consumer(
        channel, queues=[queue], on_message=on_message, accept=["application/json"], prefetch_count=prefetch
    ):
        while not until():
            conn.drain_events(timeout=5)
    return channel, queue


def test_messages_waiting_are_taken_in_one_batch_and_no_ack_goes_to_redis(settings):
    publish(settings, 25)
    sizes, seen, received = [], [], []

    @contextmanager
    def batch():
        sizes.append(0)
        yield
        for message in received[-sizes[-1] :]:
            message.ack()

    with make_connection(settings) as conn:

        def on_message(message):
            with conn.default_channel.conn_or_acquire() as client:
                # Being handled: in the processing list, not in Kombu's unacked hash.
                seen.append((client.llen(processing_key(queue_name)), client.hlen(conn.default_channel.unacked_key)))
            sizes[-1] += 1
            received.append(message)

        queue_name = make_queue(settings, "jobs").name
        channel, queue = _consume(settings, conn, on_message, lambda: len(received) >= 25, batch=batch)
        with channel.conn_or_acquire() as client:
            assert client.llen(processing_key(queue.name)) == 0
            assert client.llen(queue.name) == 0
    assert sizes == [10, 10, 5]
    assert all(unacked == 0 for _, unacked in seen)
    assert [held for held, _ in seen[:10]] == [10] * 10
    assert sorted(json.loads(m.body)["n"] for m in received) == list(range(25))


def test_a_requeued_message_comes_back_and_an_unsettled_one_stays_claimed(settings):
    publish(settings, 1)
    bodies = []
    with make_connection(settings) as conn:

        def requeue_first(message):
            bodies.append(message.body)
            if len(bodies) == 1:
                message.requeue()
            elif len(bodies) == 2:
                pass  # neither acked nor rejected: stays in the processing list

        channel, queue = _consume(settings, conn, requeue_first, lambda: len(bodies) >= 2)
        with channel.conn_or_acquire() as client:
            assert client.llen(processing_key(queue.name)) == 1
            assert client.llen(queue.name) == 0
            assert release_claims(channel, [queue.name]) == 1
            assert client.llen(processing_key(queue.name)) == 0
            assert client.llen(queue.name) == 1
    assert bodies == [b'{"n": 0}', b'{"n": 0}']


def test_a_list_entry_that_is_not_a_kombu_message_is_delivered_for_refusal(settings):
    queue = make_queue(settings, "jobs")
    refused = []
    with make_connection(settings) as conn:
        with conn.default_channel.conn_or_acquire() as client:
            client.lpush(queue.name, b"\xffnot json")

        def on_message(message):
            refused.append((message.content_type, message.body))
            message.reject()

        channel, _ = _consume(settings, conn, on_message, lambda: refused)
        with channel.conn_or_acquire() as client:
            assert client.llen(processing_key(queue.name)) == 0
    assert refused == [(NOT_A_MESSAGE, b"\xffnot json")]


def test_messages_left_claimed_come_back_in_their_order(settings):
    publish(settings, 5)
    first, second = [], []
    with make_connection(settings) as conn:
        # Taken in one batch and never settled, as by a daemon killed mid-batch.
        channel, queue = _consume(settings, conn, lambda message: first.append(message), lambda: first)
        assert len(first) == 5
        assert release_claims(channel, [queue.name]) == 5

        def on_message(message):
            second.append(json.loads(message.body)["n"])
            message.ack()

        _consume(settings, conn, on_message, lambda: len(second) >= 5, prefetch=1)
    assert second == [0, 1, 2, 3, 4]


def test_batches_and_claims_under_a_global_key_prefix(tmp_var):
    settings = parse_settings(
        make_settings(tmp_var, broker="redis", **{"broker.transport_options.global_keyprefix": "pfx:"})
    )
    publish(settings, 7)
    received = []
    queue = make_queue(settings, "jobs")
    try:
        with make_connection(settings) as conn:
            with conn.default_channel.conn_or_acquire() as client:
                raw = client.connection_pool.get_connection()  # the keys as they are in Redis
                try:
                    raw.send_command("LLEN", f"pfx:{queue.name}")
                    assert raw.read_response() == 7
                finally:
                    client.connection_pool.release(raw)
            # Taken in one batch of five and left claimed, then released and taken again.
            sizes = []

            @contextmanager
            def batch():
                before = len(received)
                yield
                sizes.append(len(received) - before)

            channel, _ = _consume(settings, conn, received.append, lambda: len(received) >= 5, prefetch=5, batch=batch)
            assert sizes == [5]
            with channel.conn_or_acquire() as client:
                assert client.llen(processing_key(queue.name)) == 5  # Kombu's client adds the prefix
            assert release_claims(channel, [queue.name]) == 5
            done = []

            def on_message(message):
                done.append(json.loads(message.body)["n"])
                message.ack()

            channel, _ = _consume(settings, conn, on_message, lambda: len(done) >= 7, prefetch=5)
            with channel.conn_or_acquire() as client:
                assert client.llen(processing_key(queue.name)) == 0
                assert client.llen(queue.name) == 0
        assert sorted(done) == list(range(7))
    finally:
        with make_connection(settings) as conn:
            queue(conn.default_channel).delete()


def test_a_redis_user_without_scripting_still_gets_batches(tmp_var):
    admin = redis.Redis.from_url(REDIS_URL)
    user, password = unique("noscript"), unique("pw")
    admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-@scripting")
    try:
        url = REDIS_URL.replace("redis://", f"redis://{user}:{password}@", 1)
        settings = parse_settings(make_settings(tmp_var, broker="redis", **{"broker.url": url}))
        publish(settings, 7)
        sizes, received = [], []

        @contextmanager
        def batch():
            before = len(received)
            yield
            sizes.append(len(received) - before)
            for message in received[before:]:
                message.ack()

        with make_connection(settings) as conn:
            channel, queue = _consume(
                settings, conn, received.append, lambda: len(received) >= 7, prefetch=5, batch=batch
            )
            assert channel._no_scripts  # refused, then one LMOVE each
            with channel.conn_or_acquire() as client:
                assert client.llen(processing_key(queue.name)) == 0
                assert client.llen(queue.name) == 0
        assert sizes == [5, 2]
        assert sorted(json.loads(m.body)["n"] for m in received) == list(range(7))
    finally:
        admin.execute_command("ACL", "DELUSER", user)
