"""The pieces of :mod:`pyramid_scheduler.brokers.connection` that the job
publisher, the event publisher and both consumers share: the bounded retry
policy, the consumer stopped by events, and the release of a dead daemon's
claims."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from conftest import make_settings
from pyramid_scheduler.brokers.connection import (
    StoppableConsumer,
    make_connection,
    make_queue,
    release_dead_claims,
    retry_until,
)
from pyramid_scheduler.brokers.sql import engine_for, messages
from pyramid_scheduler.exceptions import EnqueueError
from pyramid_scheduler.settings import parse_settings


def test_a_retry_is_made_while_another_attempt_ends_before_the_deadline():
    retried = []
    policy = retry_until(time.monotonic() + 3600, 1.0, on_retry=lambda exc, interval: retried.append((exc, interval)))
    error = ConnectionError("refused")
    policy["errback"](error, 0.5)
    assert retried == [(error, 0.5)]
    assert (policy["interval_start"], policy["interval_max"]) == (0, 0.5)


def test_past_the_deadline_the_error_or_give_ups_own_is_raised():
    error = ConnectionError("refused")
    with pytest.raises(ConnectionError) as raised:
        retry_until(time.monotonic() + 1.0, 2.0)["errback"](error, 0.1)  # the attempt would end too late
    assert raised.value is error

    policy = retry_until(time.monotonic() - 1, give_up=lambda exc: EnqueueError(f"gave up: {exc}"))
    with pytest.raises(EnqueueError, match="gave up: refused") as raised:
        policy["errback"](error, 0)
    assert raised.value.__cause__ is error


class Consumer(StoppableConsumer):
    def __init__(self, *events: threading.Event) -> None:
        self.stop_events = events


def test_a_consumer_stops_on_any_of_its_events_and_should_stop_sets_the_first():
    stop, lease_lost = threading.Event(), threading.Event()
    consumer = Consumer(stop, lease_lost)
    assert not consumer.should_stop
    lease_lost.set()
    assert consumer.should_stop and not stop.is_set()
    lease_lost.clear()
    consumer.should_stop = False
    assert not consumer.should_stop
    consumer.should_stop = True
    assert stop.is_set() and not lease_lost.is_set()


def test_a_dead_daemons_claims_are_released_by_name_on_the_sql_transport(tmp_var):
    settings = parse_settings(make_settings(tmp_var))
    queue = make_queue(settings, "jobs")
    held = {}
    for name in ("host:1:a", "host:2:b"):
        conn = make_connection(settings, consumer_name=name)
        with conn.Producer() as producer:
            producer.publish({"by": name}, routing_key=queue.name, exchange="", declare=[queue], serializer="json")
        held[name] = (conn, conn.SimpleQueue(queue.name, no_ack=False).get(timeout=1))
    try:
        assert release_dead_claims(settings, ["jobs"], []) == 0
        assert release_dead_claims(settings, ["jobs"], ["host:2:b", "host:3:gone"]) == 1
        with engine_for(settings.broker.url).connect() as c:
            rows = c.execute(sa.select(messages.c.claimed_by, messages.c.visible_at).order_by(messages.c.id)).all()
        assert [(by, at > 0) for by, at in rows] == [("host:1:a", True), (None, False)]
    finally:
        for conn, _message in held.values():
            conn.release()
