"""Health and metrics: ``{dashboard.path}/health`` and ``{dashboard.path}/metrics``.

``config.include("pyramid_scheduler.metrics")`` (which includes
``pyramid_scheduler`` if the application has not) registers the two views. ``/health``
answers 200 when every queue has a live daemon and the job store and the
broker answer, else 503, with a JSON body saying which
(:mod:`.probes`). ``/metrics`` serves the Prometheus text format of this
process's counters (:mod:`.families`: the jobs its ``add_*_job`` calls
enqueued, and in combined mode the runs) and of the job store's gauges
(:mod:`.collector`). Each ``pscheduler`` serves its own runs on
``scheduler.metrics.listen`` (:mod:`.listen`). Needs ``prometheus_client``
(``pip install "pyramid_scheduler[metrics]"``). See ``docs/operations.rst``.
"""

from __future__ import annotations

from typing import Any

from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

try:
    import prometheus_client  # noqa: F401 - only whether it is installed
except ImportError:  # pragma: no cover - the testing extra installs it
    MISSING = True
else:
    MISSING = False

#: The words of ``scheduler.metrics.permission`` that leave ``/metrics`` open.
PUBLIC = "public"


def includeme(config: Configurator) -> None:
    """Register ``/health`` and ``/metrics`` under ``scheduler.dashboard.path``.

    :raises pyramid.exceptions.ConfigurationError: ``prometheus_client`` is
        not installed, or one of the ``scheduler.*`` settings it reads is wrong.
    """
    if MISSING:
        raise ConfigurationError(
            "pyramid_scheduler.metrics (the dashboard's health probe and metrics) needs prometheus_client: "
            'pip install "pyramid_scheduler[metrics]" (or [dashboard])'
        )
    from pyramid.security import NO_PERMISSION_REQUIRED

    from pyramid_scheduler.metrics.views import health_view, metrics_view, register_counters
    from pyramid_scheduler.settings import parse_only

    if getattr(config.registry, "scheduler", None) is None:
        config.include("pyramid_scheduler")

    settings = parse_only(
        config.get_settings() or {},
        ("dashboard.path", "dashboard.permission", "health.permission", "metrics.permission"),
    )
    health_permission: Any = settings.health_permission or NO_PERMISSION_REQUIRED
    metrics_permission: Any = settings.metrics_permission
    if metrics_permission is None or metrics_permission == "":
        metrics_permission = settings.dashboard_permission
    if metrics_permission == PUBLIC:
        metrics_permission = NO_PERMISSION_REQUIRED
    path = settings.dashboard_path
    config.add_route("pyramid_scheduler.health", f"{path}/health")
    config.add_route("pyramid_scheduler.metrics", f"{path}/metrics")
    config.add_view(
        health_view,
        route_name="pyramid_scheduler.health",
        renderer="json",
        permission=health_permission,
        request_method=("GET", "HEAD"),
    )
    config.add_view(
        metrics_view,
        route_name="pyramid_scheduler.metrics",
        permission=metrics_permission,
        request_method=("GET", "HEAD"),
    )
    config.action("pyramid_scheduler.metrics", lambda: register_counters(config.registry))
