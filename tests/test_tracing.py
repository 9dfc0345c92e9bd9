"""OpenTelemetry: the enqueue's PRODUCER span and the run's CONSUMER span
share a trace, linked by the ``traceparent`` header the message carries.

The daemon runs in combined mode in this process (its runs on worker threads,
which have no context of the test's): the only way the run's span can find
the enqueue's is through the broker message's headers (the SQL broker, a real
SQLite file). The spans are read from the SDK's in-memory exporter.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pyramid.config import Configurator

from conftest import make_settings, wait_for
from integration.sampleapp import jobs
from pyramid_scheduler import tracing

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def provider() -> Iterator[None]:
    """The SDK's provider, set once for the process (OpenTelemetry allows one);
    after this module its exporter keeps nothing (other tests in this process
    still make spans: tracing stays configured)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        sdk = TracerProvider()
        sdk.add_span_processor(SimpleSpanProcessor(EXPORTER))
        trace.set_tracer_provider(sdk)
    yield
    EXPORTER.clear()
    EXPORTER.shutdown()


@pytest.fixture
def combined(tmp_var: Path) -> Any:
    with Configurator(settings=make_settings(tmp_var, combined="true")) as config:
        config.include("pyramid_scheduler")
    config.make_wsgi_app()
    scheduler = config.registry.scheduler
    EXPORTER.clear()
    yield scheduler
    scheduler.shutdown()


def spans_of(job_id: str, kind: SpanKind) -> list[Any]:
    return [
        span
        for span in EXPORTER.get_finished_spans()
        if span.kind == kind and span.attributes.get("messaging.message.id") == job_id
    ]


def ended(scheduler: Any, job_id: str) -> bool:
    return (scheduler.get_job(job_id) or {}).get("status") in ("done", "failed")


def test_the_run_span_is_a_child_of_the_enqueue_span(combined: Any, tmp_var: Path):
    job_id = combined.add_async_job(jobs.noop, args=[1])
    failing = combined.add_async_job(jobs.fail, args=[str(tmp_var / "oracle.sqlite"), "t"])
    wait_for(lambda: ended(combined, job_id) and ended(combined, failing), timeout=20)
    wait_for(lambda: spans_of(failing, SpanKind.CONSUMER), timeout=5)

    (sent,) = spans_of(job_id, SpanKind.PRODUCER)
    (ran,) = wait_for(lambda: spans_of(job_id, SpanKind.CONSUMER), timeout=5)
    assert sent.name == "jobs publish" and ran.name == "jobs process"
    assert ran.context.trace_id == sent.context.trace_id
    assert ran.parent is not None and ran.parent.span_id == sent.context.span_id
    assert ran.attributes["code.function.name"] == "integration.sampleapp.jobs:noop"
    assert ran.attributes["pyramid_scheduler.run_key"].startswith(f"{job_id}@")
    assert sent.attributes["pyramid_scheduler.kind"] == "now"
    assert ran.status.status_code != StatusCode.ERROR

    (sent_failing,) = spans_of(failing, SpanKind.PRODUCER)
    (ran_failing,) = spans_of(failing, SpanKind.CONSUMER)
    assert ran_failing.context.trace_id == sent_failing.context.trace_id
    assert ran_failing.status.status_code == StatusCode.ERROR
    assert [event.name for event in ran_failing.events] == ["exception"]


def test_the_enqueue_span_is_inside_the_callers_trace(combined: Any):
    with trace.get_tracer("test").start_as_current_span("request") as outer:
        job_id = combined.add_async_job(jobs.noop, args=[1], durable=False)  # the fast lane too
    wait_for(lambda: ended(combined, job_id), timeout=20)
    (sent,) = spans_of(job_id, SpanKind.PRODUCER)
    (ran,) = wait_for(lambda: spans_of(job_id, SpanKind.CONSUMER), timeout=5)
    assert sent.parent is not None and sent.parent.span_id == outer.get_span_context().span_id
    assert ran.context.trace_id == outer.get_span_context().trace_id


@pytest.mark.parametrize(
    "header",
    [
        "not a traceparent",
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01",  # the invalid all-zero trace id
        "00-" + "A" * 32 + "-" + "1" * 16 + "-01",  # upper case
        "00-" + "1" * 32 + "-" + "1" * 16 + "-01" + "x" * 10_000,
        17,
    ],
)
def test_a_malformed_traceparent_is_ignored_and_the_job_runs(combined: Any, header: Any):
    with combined.capturing() as captured:
        job_id = combined.add_async_job(jobs.noop, args=[2])
    (request,) = captured
    EXPORTER.clear()
    combined.publisher.publish(request.encode(), request.queue, request.id, headers={"traceparent": header})
    wait_for(lambda: ended(combined, job_id), timeout=20)
    (ran,) = wait_for(lambda: spans_of(job_id, SpanKind.CONSUMER), timeout=5)
    assert ran.parent is None  # a trace of its own
    assert combined.get_job(job_id)["status"] == "done"


def test_carried_takes_only_a_well_formed_context():
    parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    assert tracing.carried({"traceparent": parent}) == {"traceparent": parent}
    assert tracing.carried({"traceparent": parent, "tracestate": "k=v"}) == {"traceparent": parent, "tracestate": "k=v"}
    assert tracing.carried({"traceparent": parent, "tracestate": "k" * 513}) == {"traceparent": parent}
    assert tracing.carried({"traceparent": parent, "tracestate": "k=v\n"}) == {"traceparent": parent}
    assert tracing.carried({"traceparent": parent.replace("-01", "-0")}) is None
    assert tracing.carried({"traceparent": "ff" + parent[2:]}) is None  # version ff is invalid
    assert tracing.carried(None) is None
    assert tracing.carried(["traceparent", parent]) is None
    assert tracing.carried({}) is None


def test_a_signed_message_carries_the_trace_context_beside_its_signature(tmp_var: Path):
    settings = make_settings(tmp_var, combined="true", secret="a-long-random-string-shared-by-web-and-daemon")
    with Configurator(settings=settings) as config:
        config.include("pyramid_scheduler")
    config.make_wsgi_app()
    scheduler = config.registry.scheduler
    try:
        job_id = scheduler.add_async_job(jobs.noop, args=[3])
        wait_for(lambda: ended(scheduler, job_id), timeout=20)
        (sent,) = spans_of(job_id, SpanKind.PRODUCER)
        (ran,) = wait_for(lambda: spans_of(job_id, SpanKind.CONSUMER), timeout=5)
        assert ran.parent is not None and ran.parent.span_id == sent.context.span_id
        assert scheduler.get_job(job_id)["status"] == "done"  # the signature still verified
    finally:
        scheduler.shutdown()


def test_a_job_held_until_the_commit_carries_the_enqueue_context(combined: Any):
    import transaction

    from pyramid_scheduler.web.tx import Pending

    with transaction.manager as txn:
        job_id = combined.add_async_job(jobs.noop, args=[4])
        (held,) = txn.data(Pending).messages  # held until the commit, with its trace context
        assert held[3] == job_id and set(held[5]) == {"traceparent"}
    wait_for(lambda: ended(combined, job_id), timeout=20)
    (sent,) = spans_of(job_id, SpanKind.PRODUCER)
    (ran,) = wait_for(lambda: spans_of(job_id, SpanKind.CONSUMER), timeout=5)
    assert ran.parent is not None and ran.parent.span_id == sent.context.span_id
