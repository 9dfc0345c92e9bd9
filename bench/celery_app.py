"""Celery with the same broker and the same job, for comparison.

The worker runs ``celery -A bench.celery_app worker -P solo`` (the scale-out
part: ``-P prefork -c N``); the broker URL and queue come from
``BENCH_CELERY_BROKER`` / ``BENCH_CELERY_QUEUE``.
"""

from __future__ import annotations

import os

from celery import Celery

from bench import jobs

app = Celery("bench", broker=os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/14"))
app.conf.update(
    task_default_queue=os.environ.get("BENCH_CELERY_QUEUE", "bench-celery"),
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    broker_transport_options={"visibility_timeout": 3600},
)


@app.task(name="bench.record")
def record(path: str, tag: str, sent: float) -> None:
    jobs.record(path, tag, sent)


@app.task(name="bench.spin")
def spin(path: str, tag: str, sent: float, loops: int) -> None:
    jobs.spin(path, tag, sent, loops)
