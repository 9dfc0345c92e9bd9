"""The gauges read from the job store and the broker at scrape time.

:class:`StoreCollector` is a ``prometheus_client`` custom collector over
:class:`~pyramid_scheduler.metrics.probes.Probes` (bounded in time, cached for
a second or two): ``pyramid_scheduler_jobs{queue,status}``,
``pyramid_scheduler_queue_depth{queue}``, ``pyramid_scheduler_daemons{queue}``
and ``pyramid_scheduler_dead_letters``. Series of a service that did not
answer are left out of that scrape (``/health`` says why).
:func:`app_registry` puts it beside this process's counters
(:data:`~pyramid_scheduler.metrics.families.REGISTRY`) for the web side's
``/metrics``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pyramid_scheduler.metrics.families import REGISTRY
from pyramid_scheduler.metrics.probes import Probes
from pyramid_scheduler.store.tables import FINAL, LIVE


class StoreCollector(Collector):
    """The job store's and the broker's gauges (see the module)."""

    def __init__(self, probes: Probes) -> None:
        self.probes = probes

    def describe(self) -> list[Metric]:
        return []  # registering must not ask the job store

    def collect(self) -> Iterator[Metric]:
        snap = self.probes.snapshot()
        queues = self.probes.proxy.settings.queues
        if snap.daemons is not None:
            jobs = GaugeMetricFamily(
                "pyramid_scheduler_jobs", "Jobs in the job store, by queue and status.", labels=("queue", "status")
            )
            for queue in queues:
                for status in (*LIVE, *FINAL):
                    jobs.add_metric((queue, status), snap.jobs.get((queue, status), 0))
            yield jobs
            daemons = GaugeMetricFamily(
                "pyramid_scheduler_daemons", "Live daemons serving each queue (by their heartbeat).", labels=("queue",)
            )
            for entry in snap.daemons:
                daemons.add_metric((entry["queue"],), len(entry["daemons"]))
            yield daemons
        if snap.dead_letters is not None:
            yield GaugeMetricFamily(
                "pyramid_scheduler_dead_letters", "Dead letters kept in the job store.", value=snap.dead_letters
            )
        if snap.depths is not None:
            depth = GaugeMetricFamily(
                "pyramid_scheduler_queue_depth", "Messages waiting in each queue's broker queue.", labels=("queue",)
            )
            for queue in queues:
                depth.add_metric((queue,), snap.depths.get(queue, 0))
            yield depth


class Counters(Collector):
    """This process's counters and histograms (:data:`REGISTRY`), for another registry."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def app_registry(probes: Probes) -> CollectorRegistry:
    """The registry of one application's ``/metrics``: this process's
    counters and the job store's gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Counters())
    registry.register(StoreCollector(probes))
    return registry
