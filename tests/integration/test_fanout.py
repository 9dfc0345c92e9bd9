"""Job events of a real ``pscheduler`` reach a web process that subscribes
(``scheduler.events.subscribe``), through the broker's fan-out exchange, in
order per job, numbered across a daemon restart."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pyramid.config import Configurator
from webtest import TestApp

from integration.conftest import wait_until
from integration.sampleapp import enqueue_view, jobs
from pyramid_scheduler.api import Event, JobCreated, JobExecuted, JobFailed, JobRemoved

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def web_app(harness: Any) -> tuple[TestApp, Any, list[Event], dict[str, list[Any]]]:
    """A web process's application, with a listener and Pyramid subscribers."""
    with Configurator(settings=harness.app_settings()) as config:
        config.include("pyramid_scheduler")
        config.add_route("enqueue", "/enqueue")
        config.add_view(enqueue_view, route_name="enqueue", renderer="json")
        notified = {
            cls.__name__: config.testing_add_subscriber(cls) for cls in (JobCreated, JobExecuted, JobFailed, JobRemoved)
        }
    app = config.make_wsgi_app()  # ApplicationCreated: the subscriber starts
    scheduler = app.registry.scheduler
    harness.proxies.append(scheduler)
    heard: list[Event] = []
    scheduler.add_listener(heard.append)
    assert scheduler._subscriber.ready.wait(30), "the event subscriber did not start"
    return TestApp(app), scheduler, heard, notified


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_web_process_receives_daemon_events_in_order(make_harness, broker):
    # One INI for the web process and the daemon: subscribe there makes the daemon publish.
    harness = make_harness(broker, **{"events.subscribe": "true"})
    app, scheduler, heard, notified = web_app(harness)
    daemon = harness.start()
    harness.wait_active(scheduler, daemon)

    def of(job_id: str) -> list[Event]:
        return [event for event in heard if event.get("job_id") == job_id]

    # A job sent from a view: created, executed, removed, numbered 1, 2, 3.
    tag = f"now-{uuid.uuid4().hex[:8]}"
    assert app.get("/enqueue", {"tag": tag}).json == {"job_id": tag}
    wait_until(lambda: len(of(tag)) >= 3, f"the events of {tag} in the web process", alive=(daemon,))
    assert [(e.type, e.seq) for e in of(tag)] == [
        (Event.JOB_CREATED, 1),
        (Event.JOB_EXECUTED, 2),
        (Event.JOB_REMOVED, 3),
    ]
    executed = of(tag)[1]
    assert executed.retval == {"tag": tag, "pid": daemon.pid, "marker": harness.marker}
    assert executed.scheduled_run_time.tzinfo is not None
    assert [e.job_id for e in notified["JobCreated"]] == [tag]
    assert [(e.job_id, e.event.seq) for e in notified["JobExecuted"]] == [(tag, 2)]
    assert [e.job_id for e in notified["JobRemoved"]] == [tag]

    # A failure arrives with its exception as text.
    failing = f"fail-{uuid.uuid4().hex[:8]}"
    scheduler.add_async_job(jobs.fail, args=[harness.oracle, failing], id=failing)
    wait_until(lambda: len(of(failing)) >= 3, f"the events of {failing}", alive=(daemon,))
    error = of(failing)[1]
    assert error.type == Event.JOB_ERROR
    assert error.exception == f"RuntimeError: sampleapp job {failing} fails on purpose"
    assert "Traceback" in error.traceback
    assert [e.job_id for e in notified["JobFailed"]] == [failing]

    # An interval job across a daemon restart: the numbers go on from the ledger.
    every = f"every-{uuid.uuid4().hex[:8]}"
    scheduler.add_interval_job(jobs.record, args=[harness.oracle, every], seconds=1, id=every)
    wait_until(
        lambda: [e.type for e in of(every)].count(Event.JOB_EXECUTED) >= 2, f"two runs of {every}", alive=(daemon,)
    )
    assert daemon.terminate() == 0
    before = len(of(every))
    second = harness.start()
    harness.wait_active(scheduler, second)
    wait_until(lambda: len(of(every)) > before, f"a run of {every} by the second daemon", alive=(second,))
    scheduler.cancel_job(every)
    wait_until(lambda: of(every)[-1].type == Event.JOB_CANCELED, f"{every} canceled", alive=(second,))
    events = of(every)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].type == Event.JOB_CREATED
    # Runs only in between (under load one may be missed: its run was still going).
    assert {e.type for e in events[1:-1]} <= {Event.JOB_EXECUTED, Event.JOB_MISSED}
    executed = [e for e in events if e.type == Event.JOB_EXECUTED]
    assert {e.retval["pid"] for e in executed} == {daemon.pid, second.pid}


def test_combined_process_hears_its_own_events_once_and_drops_forged_ones(make_harness):
    harness = make_harness("redis", **{"combined": "true", "events.subscribe": "true"})
    with Configurator(settings=harness.app_settings()) as config:
        config.include("pyramid_scheduler")
        config.add_route("enqueue", "/enqueue")
        config.add_view(enqueue_view, route_name="enqueue", renderer="json")
    wsgi = config.make_wsgi_app()  # starts the engine and the subscriber in this process
    scheduler = wsgi.registry.scheduler
    harness.proxies.append(scheduler)
    heard: list[Event] = []
    scheduler.add_listener(heard.append)
    numbered: list[tuple[str, Any]] = []  # seq as the local listener saw it
    scheduler.add_listener(lambda event: numbered.append((event.get("job_id"), event.get("seq"))))
    assert scheduler._subscriber.ready.wait(30)

    # An event published by someone without scheduler.secret: refused.
    from pyramid_scheduler.brokers.connection import JSON, make_connection
    from pyramid_scheduler.brokers.fanout import encode_event, events_exchange

    forged = encode_event(Event(Event.JOB_EXECUTED, job_id="forged", retval="pwned"), 1, "elsewhere")
    with make_connection(scheduler.settings) as conn:
        exchange = events_exchange(scheduler.settings)
        conn.Producer().publish(
            forged, exchange=exchange, routing_key="", declare=[exchange], content_type=JSON, content_encoding="utf-8"
        )

    tag = f"web-{uuid.uuid4().hex[:8]}"
    TestApp(wsgi).get("/enqueue", {"tag": tag})

    def of(job_id: str) -> list[str]:
        return [e.type for e in heard if e.get("job_id") == job_id]

    wait_until(lambda: Event.JOB_REMOVED in of(tag), f"{tag} removed")
    # A sentinel sent after: once it is heard, a doubled event of the first would be too.
    sentinel = f"sentinel-{uuid.uuid4().hex[:8]}"
    scheduler.add_async_job(jobs.record, args=[harness.oracle, sentinel], id=sentinel)
    wait_until(lambda: Event.JOB_REMOVED in of(sentinel), f"{sentinel} removed")
    assert of(tag) == [Event.JOB_CREATED, Event.JOB_EXECUTED, Event.JOB_REMOVED]
    assert of("forged") == []
    # Numbered before the local listeners are called.
    assert [seq for job_id, seq in numbered if job_id == tag] == [1, 2, 3]
