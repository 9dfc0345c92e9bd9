"""The web side's ``/health`` and ``/metrics`` views, and what they read.

:func:`register_counters` runs when the configuration is committed, once the
scheduler is made: it hooks the enqueue counter to ``add_*_job``, the run
observer to the scheduler's listeners (counted when this process runs jobs:
combined mode, or ``pscheduler`` loading the application) and keeps one
:class:`~pyramid_scheduler.metrics.probes.Probes` and one registry for the
application.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pyramid.exceptions import ConfigurationError
from pyramid.response import Response

from pyramid_scheduler.metrics.collector import app_registry
from pyramid_scheduler.metrics.families import count_enqueue, watch_runs
from pyramid_scheduler.metrics.probes import Probes


@dataclass
class AppMetrics:
    """One application's probes and ``/metrics`` registry (``registry.scheduler_metrics``)."""

    probes: Probes
    registry: CollectorRegistry


def register_counters(registry: Any) -> None:
    """Hook the counters to the application's scheduler (see the module)."""
    scheduler = getattr(registry, "scheduler", None)
    if scheduler is None or not hasattr(scheduler, "on_enqueue"):
        raise ConfigurationError(
            'pyramid_scheduler.metrics: include "pyramid_scheduler" too (it makes the scheduler the metrics read)'
        )
    if count_enqueue not in scheduler.on_enqueue:
        scheduler.on_enqueue.append(count_enqueue)
    watch_runs(scheduler.listeners)
    probes = Probes(scheduler)
    registry.scheduler_metrics = AppMetrics(probes, app_registry(probes))


def health_view(request: Any) -> dict[str, Any]:
    """200 and the probe's JSON when all is well, 503 and the reasons otherwise."""
    healthy, body = request.registry.scheduler_metrics.probes.health()
    request.response.status_int = 200 if healthy else 503
    request.response.cache_control = "no-store"
    return body


def metrics_view(request: Any) -> Response:
    """The Prometheus text format of this process's counters and the job store's gauges."""
    body = generate_latest(request.registry.scheduler_metrics.registry)
    response = Response(body=body, headerlist=[("Content-Type", CONTENT_TYPE_LATEST)])
    response.cache_control = "no-store"
    return response
