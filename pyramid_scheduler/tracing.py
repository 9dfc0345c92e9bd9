"""Tracing: OpenTelemetry spans for a job's enqueue and its runs, when installed.

When ``opentelemetry-api`` is installed (the ``otel`` extra), ``add_*_job``
opens a PRODUCER span (``{queue} publish``) around the publish and puts its
W3C trace context in the broker message's ``traceparent`` header (and
``tracestate``, when there is one); the daemon reads that header at its door
(:func:`carried`: checked, bounded, a malformed one ignored) and remembers it
by job id (:func:`remember`, at most :data:`MAX_REMEMBERED` jobs), and each
run of the job is a CONSUMER span (``{queue} process``, :func:`run_span`)
whose parent is that context: the two share the trace id. A run the daemon
has no context for (the job came before a restart, or through another
daemon) starts a trace of its own. The spans go wherever the application's
tracer provider sends them; without one (:func:`configured`) or without the
package nothing is recorded, nor sent. The import is tried once: without the
package, each publish and run pays one test of :data:`ENABLED`.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - the testing extra installs it
    otel_trace = None  # type: ignore[assignment]

#: True when ``opentelemetry-api`` is installed.
ENABLED = otel_trace is not None
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: ``version-trace_id-parent_id-flags``, lowercase hex, version 00 (W3C Trace Context).
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
#: The longest ``tracestate`` carried (the W3C limit: 32 members of at most 256 characters;
#: we keep 512 characters, as the recommendation to propagate at least).
MAX_TRACESTATE = 512
#: The jobs whose trace context a daemon remembers (the oldest forgotten first).
MAX_REMEMBERED = 10_000
#: The instrumentation scope of the spans.
SCOPE = "pyramid_scheduler"

if ENABLED:
    _PROPAGATOR = TraceContextTextMapPropagator()
    _PRODUCER = otel_trace.SpanKind.PRODUCER
    _CONSUMER = otel_trace.SpanKind.CONSUMER

    _NOT_SET = (otel_trace.ProxyTracerProvider, otel_trace.NoOpTracerProvider)

_configured = False
_lock = threading.Lock()
_remembered: OrderedDict[str, dict[str, str]] = OrderedDict()


def configured() -> bool:
    """True once the application has set a tracer provider: until then no
    span can be recorded, and the publish and the run skip the spans (about
    a microsecond to ask; once set, a provider stays)."""
    global _configured
    if not _configured:
        _configured = not isinstance(otel_trace.get_tracer_provider(), _NOT_SET)
    return _configured


def _attributes(operation: str, queue: str, job_id: str, func: str, more: dict[str, str]) -> dict[str, str]:
    """The span attributes (OpenTelemetry's messaging conventions) of a publish or a run."""
    return {
        "messaging.system": "pyramid_scheduler",
        "messaging.operation.type": operation,
        "messaging.destination.name": queue,
        "messaging.message.id": job_id,
        "code.function.name": func,
        **more,
    }


@contextmanager
def enqueue_span(queue: str, job_id: str, func: str, kind: str) -> Iterator[dict[str, str]]:
    """The PRODUCER span of one ``add_*_job``; yields the headers that carry
    its context (empty when no tracer provider records it)."""
    tracer = otel_trace.get_tracer(SCOPE)
    attributes = _attributes("send", queue, job_id, func, {"pyramid_scheduler.kind": kind})
    with tracer.start_as_current_span(f"{queue} publish", kind=_PRODUCER, attributes=attributes):
        headers: dict[str, str] = {}
        _PROPAGATOR.inject(headers)
        yield headers


def carried(headers: Any) -> dict[str, str] | None:
    """The trace context in a message's *headers* (``traceparent`` and
    ``tracestate``), checked: None when there is none or it is malformed
    (never an error: a bad header only loses the link)."""
    if not isinstance(headers, Mapping):
        return None
    parent = headers.get(TRACEPARENT)
    if not isinstance(parent, str) or len(parent) != 55 or not _TRACEPARENT.fullmatch(parent):
        return None
    context = {TRACEPARENT: parent}
    state = headers.get(TRACESTATE)
    if isinstance(state, str) and 0 < len(state) <= MAX_TRACESTATE and state.isprintable():
        context[TRACESTATE] = state
    return context


def remember(job_id: str, context: dict[str, str] | None) -> None:
    """Keep *job_id*'s trace context for its runs (see the module)."""
    if context is None:
        return
    with _lock:
        _remembered[job_id] = context
        _remembered.move_to_end(job_id)
        while len(_remembered) > MAX_REMEMBERED:
            _remembered.popitem(last=False)


@contextmanager
def run_span(job_id: str, queue: str, run_key: str, func: str) -> Iterator[Any]:
    """The CONSUMER span of one run, child of the enqueue's context when the
    daemon has it; an exception leaving the run is recorded on it."""
    with _lock:
        context = _remembered.get(job_id)
    parent = _PROPAGATOR.extract(context) if context else None
    tracer = otel_trace.get_tracer(SCOPE)
    attributes = _attributes("process", queue, job_id, func, {"pyramid_scheduler.run_key": run_key})
    with tracer.start_as_current_span(
        f"{queue} process", context=parent, kind=_CONSUMER, attributes=attributes
    ) as span:
        yield span
