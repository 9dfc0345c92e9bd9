"""Job options (:mod:`pyramid_scheduler.wire.options`): one check for
``add_*_job`` and the daemon's door, which refuse the same options with the
same message; the ``catch_up`` rules."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from pyramid.config import Configurator

from pyramid_scheduler.exceptions import InvalidJob, InvalidMessage
from pyramid_scheduler.triggers.build import trigger_spec
from pyramid_scheduler.wire.messages import JobRequest, decode
from pyramid_scheduler.wire.options import OPTION_TYPES

UTC = timezone.utc


def record(tag):
    return tag


def add_request(trigger, **options):
    return JobRequest(
        op="add", id="j1", queue="jobs", func=f"{__name__}:record", args=["x"], trigger=trigger, options=options
    ).to_wire()


@pytest.fixture
def proxy(tmp_path):
    from conftest import make_settings

    with Configurator(settings=make_settings(tmp_path)) as config:
        config.include("pyramid_scheduler")
    yield config.registry.scheduler
    config.registry.scheduler.close()


@pytest.mark.parametrize(
    "call,message",
    [
        (
            lambda p: p.add_interval_job(record, args=["x"], seconds=5, catch_up="sometimes"),
            "catch_up: expected one of",
        ),
        (lambda p: p.add_interval_job(record, args=["x"], seconds=5, catch_up=True), "catch_up: expected str"),
        (
            lambda p: p.add_date_job(record, args=["x"], date=time.time() + 60, catch_up="once"),
            "catch_up: not an option of date",
        ),
        (lambda p: p.add_async_job(record, args=["x"], catch_up="all"), "catch_up: not an option of now"),
        (
            lambda p: p.add_cron_job(record, args=["x"], minute=5, catch_up="all", misfire_grace_time=30),
            "misfire_grace_time: has no effect with catch_up='all'",
        ),
        (
            lambda p: p.add_cron_job(record, args=["x"], minute=5, catch_up="once", coalesce=False),
            "coalesce: has no effect with catch_up='once'",
        ),
    ],
)
def test_bad_catch_up_is_refused_at_add_time(proxy, call, message):
    with pytest.raises(InvalidJob, match=message):
        call(proxy)


def test_catch_up_travels_on_the_wire(proxy):
    with proxy.capturing() as sent:
        proxy.add_cron_job(record, args=["x"], minute=5, catch_up="all")
    assert sent[0].options == {"catch_up": "all"}
    assert decode(sent[0].to_wire()).options == {"catch_up": "all"}


def test_bad_catch_up_is_refused_at_the_door():
    request = add_request({"type": "interval", "timezone": "UTC", "seconds": 1})
    for options, message in (
        ({"catch_up": "never"}, "catch_up: expected one of"),
        ({"catch_up": 1}, "catch_up: expected str, got 1"),
    ):
        with pytest.raises(InvalidMessage, match=message):
            decode({**request, "options": options})
    date_request = add_request(trigger_spec("date", UTC, run_date=datetime.now(UTC)))
    with pytest.raises(InvalidMessage, match="not an option of date jobs"):
        decode({**date_request, "options": {"catch_up": "once"}})


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        (
            "interval",
            {"urgency": 1},
            "urgency: unknown option; add_.*_job accepts id, immediate, tm",
        ),
        ("interval", {"max_instances": "3"}, "max_instances: expected int, got '3'"),
        ("interval", {"max_instances": 0}, "max_instances: expected 1 or more, got 0"),
        ("interval", {"misfire_grace_time": 0.5}, "misfire_grace_time: expected int or None, got 0.5"),
        ("interval", {"coalesce": 1}, "coalesce: expected bool, got 1"),
        ("interval", {"ttl": "1d"}, "ttl: expected int or float or None, got '1d'"),
        ("date", {"retries": -1}, "retries: expected a number of 0 or more, got -1"),
        ("date", {"retry_backoff": 0.5}, "retry_backoff: expected a number of 1 or more, got 0.5"),
        ("date", {"retry_delay": 10**9}, r"retry_delay: at most .* seconds \(a year\)"),
        ("interval", {"retries": 2}, "retries: only one-off jobs .* not interval jobs"),
        ("cron", {"catch_up": "all", "coalesce": False}, "coalesce: has no effect with catch_up='all'"),
        ("date", {"catch_up": "skip"}, "catch_up: not an option of date jobs"),
        ("date", {"durable": False}, "durable: only run-now jobs .* not date jobs, which wait in the job store"),
        ("interval", {"durable": False}, "durable: only run-now jobs .* not interval jobs"),
        ("cron", {"durable": False}, "durable: only run-now jobs"),
        ("cron", {"durable": "false"}, "durable: expected bool, got 'false'"),
    ],
)
def test_add_job_and_the_door_refuse_the_same_options_with_the_same_message(proxy, kind, options, message):
    trigger_args = {"interval": {"seconds": 5}, "cron": {"minute": 5}, "date": {"date": time.time() + 60}}[kind]
    with pytest.raises(InvalidJob, match=message) as at_add:
        getattr(proxy, f"add_{kind}_job")(record, args=["x"], **trigger_args, **options)
    spec = {
        "interval": trigger_spec("interval", UTC, seconds=5),
        "cron": trigger_spec("cron", UTC, minute=5),
        "date": trigger_spec("date", UTC, run_date=datetime.now(UTC) + timedelta(minutes=1)),
    }[kind]
    with pytest.raises(InvalidMessage) as at_door:
        decode(add_request(spec, **options))
    assert str(at_door.value) == str(at_add.value)


def test_durable_false_with_retries_is_refused_alike_at_add_time_and_at_the_door(proxy):
    with pytest.raises(InvalidJob, match="retries: a durable=False job runs at most once") as at_add:
        proxy.add_async_job(record, args=["x"], durable=False, retries=1)
    with pytest.raises(InvalidMessage) as at_door:
        decode(add_request(trigger_spec("now", UTC, run_date=datetime.now(UTC)), durable=False, retries=1))
    assert str(at_door.value) == str(at_add.value)


def test_durable_false_round_trips_and_durable_messages_are_as_before(proxy):
    with proxy.capturing() as sent:
        proxy.add_async_job(record, args=["x"], durable=False)
        proxy.add_async_job(record, args=["x"])
    fast, durable = (decode(request.encode()) for request in sent)
    assert fast.options == {"durable": False}
    assert durable.options == {} and "durable" not in durable.encode().decode()
    # A producer may also write true, the default: the door takes it.
    assert decode(add_request(fast.trigger, durable=True)).options == {"durable": True}


def test_a_daemon_without_the_option_dead_letters_durable_false_and_reads_the_rest(proxy, monkeypatch):
    """A daemon of an earlier release: its door is this one without the
    ``durable`` option. It refuses a durable=False message (dead-lettered,
    with the reason, never run as a durable job nor dropped silently), and
    reads every other message as before, since only false is written."""
    with proxy.capturing() as sent:
        proxy.add_async_job(record, args=["x"], durable=False)
        proxy.add_async_job(record, args=["x"])
    monkeypatch.delitem(OPTION_TYPES, "durable")
    with pytest.raises(InvalidMessage, match="durable: unknown option"):
        decode(sent[0].encode())
    assert decode(sent[1].encode()).options == {}
