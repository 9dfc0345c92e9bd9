"""The memory job store (``scheduler.jobstore.url = memory``), and what
every queue's job store shares with it: the wire request the intake
(:mod:`pyramid_scheduler.daemon.intake`) passes along with APScheduler's
``add_job``, and who hears of each job added. The SQL job store is
:mod:`pyramid_scheduler.store.jobstores`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from apscheduler.job import Job
from apscheduler.jobstores.memory import MemoryJobStore

from pyramid_scheduler.daemon.aps import build_job, job_state
from pyramid_scheduler.daemon.catchup import CatchUpJob
from pyramid_scheduler.daemon.flow import FLOW_KEY, FlowJob, due_order

#: Called with a job just added and its wire request.
OnAdded = Callable[[Job, dict[str, Any]], None]


class Adding:
    """Lets the engine pass the wire request along with APScheduler's add_job."""

    _local: threading.local

    @contextmanager
    def adding(self, request: dict[str, Any] | None, flow: dict[str, Any] | None = None) -> Iterator[None]:
        """Make the next ``add_job`` in this thread record *request* (``None``
        when re-adding a known job), and store the job with its *flow*
        options (:mod:`pyramid_scheduler.daemon.flow`; the memory store keeps
        the job itself: a :class:`~pyramid_scheduler.daemon.flow.FlowJob`)."""
        self._local.request = request
        self._local.flow = flow
        try:
            yield
        finally:
            self._local.request = None
            self._local.flow = None


class MemoryQueueStore(Adding, MemoryJobStore):
    """The memory job store (``scheduler.jobstore.url = memory``), per queue."""

    def __init__(self, on_added: OnAdded | None = None, priority: int = 0, aging: float = 60.0) -> None:
        super().__init__()
        self.on_added = on_added
        self._local = threading.local()
        #: The queue's default priority and ``scheduler.priority_aging``: see :meth:`get_due_jobs`.
        self.priority = priority
        self.aging = aging

    def get_due_jobs(self, now: datetime) -> list[Job]:
        """The due jobs in the order the worker pool would start them (the
        testing kit runs them one by one): see :func:`~pyramid_scheduler.daemon.flow.due_order`."""
        return due_order(super().get_due_jobs(now), now, self.priority, self.aging)

    def add_job(self, job: Job) -> None:
        flow = getattr(self._local, "flow", None)
        if flow:  # kept on the job itself: a FlowJob in its place
            job = build_job(self._scheduler, self._alias, {**job_state(job), FLOW_KEY: flow}, FlowJob)
        else:
            job.__class__ = CatchUpJob  # same slots: only how overdue runs are planned changes
        super().add_job(job)
        request = getattr(self._local, "request", None)
        if request is not None and self.on_added is not None:
            self.on_added(job, request)
