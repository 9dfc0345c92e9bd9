"""The metric families of the process: its enqueue counter and its run counters.

All in :data:`REGISTRY`, a registry of the package's own (not
``prometheus_client.REGISTRY``), so that the application's other metrics are
unaffected; an application that wants both on one page serves the two (see
``docs/operations.rst``). :func:`count_enqueue` is called by the web side where
``add_*_job`` publishes (:attr:`~pyramid_scheduler.web.proxy.SchedulerProxy.on_enqueue`);
:func:`observe` is a listener on the daemon's job events, where each run ends
(:func:`watch_runs` adds it once).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from pyramid_scheduler.api import Event
from pyramid_scheduler.wire.messages import JobRequest

#: The package's metrics: this process's counters and histograms (and, in a
#: web process that includes :mod:`pyramid_scheduler.metrics`, the job
#: store's gauges).
REGISTRY = CollectorRegistry(auto_describe=True)

#: Seconds: from a few milliseconds to a few minutes.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, float("inf"))

ENQUEUED = Counter(
    "pyramid_scheduler_jobs_enqueued",
    "Jobs this process's add_*_job calls published (or handed to the transaction), by queue and kind.",
    ("queue", "kind"),
    registry=REGISTRY,
)
RUNS = Counter(
    "pyramid_scheduler_runs",
    "Runs this daemon ended, by queue and outcome (success, failure, missed, expired, interrupted).",
    ("queue", "outcome"),
    registry=REGISTRY,
)
DURATION = Histogram(
    "pyramid_scheduler_run_duration_seconds",
    "How long each run of this daemon took, from its start to its end.",
    ("queue",),
    buckets=BUCKETS,
    registry=REGISTRY,
)
LATENESS = Histogram(
    "pyramid_scheduler_run_lateness_seconds",
    "How late each run of this daemon started, after its scheduled time.",
    ("queue",),
    buckets=BUCKETS,
    registry=REGISTRY,
)

#: The ``kind`` label of each trigger kind of ``add_*_job``.
KINDS = {"now": "async", "date": "date", "interval": "interval", "cron": "cron"}
#: The ``outcome`` label of each run event.
OUTCOMES = {
    Event.JOB_EXECUTED: "success",
    Event.JOB_ERROR: "failure",
    Event.JOB_MISSED: "missed",
    Event.JOB_EXPIRED: "expired",
    Event.JOB_INTERRUPTED: "interrupted",
}


def count_enqueue(request: JobRequest, kind: str) -> None:
    """Count one job published by ``add_*_job`` (*kind*: ``now``, ``date``, ...)."""
    ENQUEUED.labels(request.queue, KINDS.get(kind, kind)).inc()


def observe(event: Event) -> None:
    """Count a run's end and observe its duration and lateness (a job event listener)."""
    outcome = OUTCOMES.get(event.type)
    if outcome is None:
        return
    queue = str(event.get("queue"))
    RUNS.labels(queue, outcome).inc()
    duration = event.get("duration")
    if isinstance(duration, float):
        DURATION.labels(queue).observe(duration)
    lateness = event.get("lateness")
    if isinstance(lateness, float):
        LATENESS.labels(queue).observe(max(lateness, 0.0))


def watch_runs(listeners: Any) -> None:
    """Add :func:`observe` to *listeners* (a scheduler's ``add_listener``
    holder), unless it is there already: the daemon adds it when it serves
    ``metrics.listen`` and the application's include may have too."""
    if any(item[0] is observe for item in getattr(listeners, "_items", ())):
        return
    listeners.add(observe, list(OUTCOMES))
