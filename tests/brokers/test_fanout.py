"""The fan-out of job events: its message, its sequence numbers, its setting."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

from pyramid_scheduler.api import Event
from pyramid_scheduler.brokers.fanout import decode_event, encode_event
from pyramid_scheduler.exceptions import InvalidMessage
from pyramid_scheduler.store.db import create_db_engine
from pyramid_scheduler.store.ledger import Ledger


def test_event_message_round_trip_with_exception_as_text():
    when = datetime(2026, 3, 29, 1, 30, tzinfo=timezone.utc)
    event = Event(
        Event.JOB_ERROR,
        job_id="j1",
        queue="jobs",
        run_key="j1@x",
        scheduled_run_time=when,
        exception=ValueError("bad input"),
        traceback="Traceback ...",
        job={"id": "j1"},
        retval=object(),
    )
    decoded, origin = decode_event(encode_event(event, 7, "host:1:abc"))
    assert origin == "host:1:abc"
    assert decoded.type == Event.JOB_ERROR and decoded.job_id == "j1" and decoded.seq == 7
    assert decoded.exception == "ValueError: bad input"
    assert decoded.scheduled_run_time == when
    assert decoded.job == {"id": "j1"} and decoded.retval.startswith("<object object")
    with pytest.raises(InvalidMessage):
        decode_event(b'{"v": 2}')
    with pytest.raises(InvalidMessage):
        decode_event(b'{"v": 1, "type": "job.exploded", "event": {}}')


def test_event_sequence_numbers_survive_a_new_ledger(tmp_path):
    url = f"sqlite:///{tmp_path}/jobs.sqlite"
    first = Ledger(create_db_engine(url), "t_")
    assert [first.next_event_seq("a") for _ in range(3)] == [1, 2, 3]
    assert first.next_event_seq("b") == 1
    first.engine.dispose()
    again = Ledger(create_db_engine(url), "t_")  # a restarted daemon
    assert again.next_event_seq("a") == 4
    again.purge(older_than=10**12)  # no job record left: the counters go too
    assert again.next_event_seq("a") == 1
    again.engine.dispose()


def test_subscribe_is_refused_on_the_sql_broker(tmp_path):
    settings = {"scheduler.broker.url": f"sqlite:///{tmp_path}/b.sqlite", "scheduler.events.subscribe": "true"}
    with pytest.raises(ConfigurationError, match=r"scheduler\.events\.subscribe.*fan-out.*Redis or RabbitMQ"):
        with Configurator(settings=settings) as config:
            config.include("pyramid_scheduler")
    settings["scheduler.events.subscribe"] = "maybe"
    with pytest.raises(ConfigurationError, match=r"scheduler\.events\.subscribe = 'maybe'"):
        with Configurator(settings=settings) as config:
            config.include("pyramid_scheduler")
    del settings["scheduler.events.subscribe"]
    settings["scheduler.events.publish"] = "true"
    with pytest.raises(ConfigurationError, match=r"scheduler\.events\.publish = true.*no fan-out"):
        with Configurator(settings=settings) as config:
            config.include("pyramid_scheduler")


def test_daemons_publish_only_when_asked():
    from pyramid_scheduler.settings import parse_settings

    redis = {"scheduler.broker.url": "redis://127.0.0.1:6379/15"}
    assert not parse_settings(redis).publishes_events  # no cost unless the feature is used
    assert parse_settings({**redis, "scheduler.events.subscribe": "true"}).publishes_events
    assert parse_settings({**redis, "scheduler.events.publish": "true"}).publishes_events
    assert not parse_settings(
        {**redis, "scheduler.events.subscribe": "true", "scheduler.events.publish": "false"}
    ).publishes_events
    assert not parse_settings({}).publishes_events  # the SQL broker


def test_an_unreachable_broker_costs_one_timeout_and_keeps_the_numbering(tmp_path, caplog):
    from pyramid_scheduler.brokers.fanout import EventPublisher
    from pyramid_scheduler.settings import parse_settings

    # Port 9 (discard) on localhost: nothing listens, the connection is refused.
    settings = parse_settings({"scheduler.broker.url": "redis://127.0.0.1:9/0", "scheduler.broker.timeout": "0.3"})
    ledger = Ledger(create_db_engine(f"sqlite:///{tmp_path}/jobs.sqlite"), "t_")
    publisher = EventPublisher(settings, ledger, "me")
    events = [Event(Event.JOB_EXECUTED, job_id="j") for _ in range(10)]
    with caplog.at_level("WARNING", logger="pyramid_scheduler.brokers.fanout"):
        for event in events:
            publisher(event)
    assert [event.seq for event in events] == list(range(1, 11))
    failures = [r for r in caplog.records if "not published to other processes" in r.getMessage()]
    assert len(failures) == 1  # the others were dropped during the pause, without trying
    assert publisher._dropped == 10
    publisher.close()
    ledger.engine.dispose()
