"""The package's Redis channel on a real Redis: one redis client per
connection pool (Kombu builds one per operation), messages still delivered,
acked and cleaned up; the messages waiting taken in batches, acks kept out
of Redis, requeued and unsettled messages, list entries that are not
messages; each consumer's claims in lists of its own, given back only once
it is dead."""

import json
from contextlib import contextmanager

import kombu
import pytest
import redis

from conftest import REDIS_URL, make_settings, unique
from pyramid_scheduler.brokers.connection import Publisher, make_connection, make_queue, release_dead_claims
from pyramid_scheduler.brokers.redis import (
    NOT_A_MESSAGE,
    Channel,
    processing_key,
    release_claims,
    release_consumers,
)
from pyramid_scheduler.settings import parse_settings


@pytest.fixture
def settings(tmp_var):
    settings = parse_settings(make_settings(tmp_var, broker="redis"))
    yield settings
    with make_connection(settings) as conn:
        queue = make_queue(settings, "jobs")
        queue(conn.default_channel).delete()
        with conn.default_channel.conn_or_acquire() as client:
            for key in client.scan_iter(match=processing_key(queue.name) + "*"):
                client.delete(key)


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


def _hold(settings, name, held):
    """A connection whose consumer *name* has taken one message into its
    processing list and neither acked nor rejected it (a daemon handling it,
    or killed while it did)."""
    conn = make_connection(settings, consumer_name=name)
    channel, _ = _consume(settings, conn, held.append, lambda: held, prefetch=1)
    assert channel.consumer_name == name
    return conn, channel


def test_each_consumer_claims_in_a_list_of_its_own_and_only_the_dead_ones_are_released(settings):
    publish(settings, 2)
    queue = make_queue(settings, "jobs").name
    by_a, by_b = [], []
    a, _ = _hold(settings, "host:1:a", by_a)
    b, channel = _hold(settings, "host:2:b", by_b)
    try:
        with channel.conn_or_acquire() as client:
            assert client.llen(processing_key(queue, "host:1:a")) == 1
            assert client.llen(processing_key(queue, "host:2:b")) == 1
            assert client.llen(processing_key(queue)) == client.llen(queue) == 0
            # B is dead to A; A is alive.
            assert release_claims(channel, [queue], lambda found: found & {"host:1:a"}) == 1
            assert client.llen(processing_key(queue, "host:1:a")) == 1
            assert client.llen(processing_key(queue, "host:2:b")) == 0
            assert [json.loads(raw)["properties"]["delivery_tag"] for raw in client.lrange(queue, 0, -1)] == [
                by_b[0].delivery_tag
            ]
            # Then A is found dead too: its list alone, by name.
            assert release_consumers(channel, [queue], ["host:1:a", "host:3:gone"]) == 1
            assert client.llen(processing_key(queue, "host:1:a")) == 0
            assert client.llen(queue) == 2
    finally:
        a.release()
        b.release()
    assert json.loads(by_a[0].body) != json.loads(by_b[0].body)


def test_a_live_consumers_claim_is_not_redelivered_at_another_consumers_start(settings):
    publish(settings, 1)
    queue = make_queue(settings, "jobs").name
    held, again = [], []
    a, _ = _hold(settings, "host:1:a", held)
    try:
        with make_connection(settings, consumer_name="host:2:b") as b:
            channel = b.channel()
            # What B does at its start: A is alive; B is, but gives back its own claims.
            assert release_claims(channel, [queue], lambda found: found & {"host:1:a"}) == 0
            with kombu.Consumer(channel, queues=[make_queue(settings, "jobs")], on_message=again.append):
                with pytest.raises(TimeoutError):
                    b.drain_events(timeout=1.5)
            with channel.conn_or_acquire() as client:
                assert client.llen(processing_key(queue, "host:1:a")) == 1
        assert again == []
    finally:
        a.release()


def test_the_shared_list_of_earlier_builds_is_released_whoever_is_alive(settings):
    publish(settings, 1)
    queue = make_queue(settings, "jobs").name
    held = []
    with make_connection(settings) as conn:  # no consumer name: the shared list
        channel, _ = _consume(settings, conn, held.append, lambda: held, prefetch=1)
        asked = []
        with channel.conn_or_acquire() as client:
            assert client.llen(processing_key(queue)) == 1
            assert release_claims(channel, [queue], lambda found: asked.append(found) or found) == 1
            assert client.llen(processing_key(queue)) == 0
            assert client.llen(queue) == 1
        assert asked == []  # no consumer's list found: the daemons are not asked who lives


def test_dead_claims_released_under_a_global_key_prefix(tmp_var):
    settings = parse_settings(
        make_settings(tmp_var, broker="redis", **{"broker.transport_options.global_keyprefix": "pfx:"})
    )
    publish(settings, 2)
    queue = make_queue(settings, "jobs")
    held_a, held_b = [], []
    a, _ = _hold(settings, "host:1:a", held_a)
    b, channel = _hold(settings, "host:2:b", held_b)
    try:
        with channel.conn_or_acquire() as client:
            raw = client.connection_pool.get_connection()  # the keys as they are in Redis
            try:
                raw.send_command("LLEN", f"pfx:{queue.name}:processing:host:2:b")
                assert raw.read_response() == 1
            finally:
                client.connection_pool.release(raw)
            assert release_claims(channel, [queue.name], lambda found: found & {"host:2:b"}) == 1  # A's, found by SCAN
            assert client.llen(processing_key(queue.name, "host:1:a")) == 0
            # What the daemon doing the single-owner work calls for the daemons it finds dead.
            assert release_dead_claims(settings, ["jobs"], ["host:2:b"]) == 1
            assert client.llen(processing_key(queue.name, "host:2:b")) == 0
            assert client.llen(queue.name) == 2
    finally:
        a.release()
        b.release()
        with make_connection(settings) as conn:
            queue(conn.default_channel).delete()
