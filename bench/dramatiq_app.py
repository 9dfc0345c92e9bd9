"""Dramatiq with the same Redis server and the same jobs, for comparison.

The worker runs ``dramatiq bench.dramatiq_app:broker --processes N
--threads T``; the Redis URL and the namespace of its keys come from
``BENCH_DRAMATIQ_URL`` / ``BENCH_DRAMATIQ_NAMESPACE``. Dramatiq's defaults
otherwise: JSON messages, no results middleware.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench import jobs

QUEUE = "bench"


def make(url: str, namespace: str) -> tuple[Any, Any, Any]:
    """A broker on *url* under *namespace*, and its actors ``record`` and ``spin``."""
    broker = RedisBroker(url=url, namespace=namespace)
    actors = [
        dramatiq.Actor(fn, broker=broker, actor_name=fn.__name__, queue_name=QUEUE, priority=0, options={})
        for fn in (jobs.record, jobs.spin)
    ]
    return broker, actors[0], actors[1]


broker, record, spin = make(
    os.environ.get("BENCH_DRAMATIQ_URL", "redis://127.0.0.1:6379/13"),
    os.environ.get("BENCH_DRAMATIQ_NAMESPACE", "bench-dramatiq"),
)
dramatiq.set_broker(broker)
