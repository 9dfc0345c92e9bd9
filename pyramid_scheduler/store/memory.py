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
from typing import Any

from apscheduler.job import Job
from apscheduler.jobstores.memory import MemoryJobStore

from pyramid_scheduler.daemon.catchup import CatchUpJob

#: Called with a job just added and its wire request.
OnAdded = Callable[[Job, dict[str, Any]], None]


class Adding:
    """Lets the engine pass the wire request along with APScheduler's add_job."""

    _local: threading.local

    @contextmanager
    def adding(self, request: dict[str, Any] | None) -> Iterator[None]:
        """Make the next ``add_job`` in this thread record *request* (``None``
        when re-adding a known job)."""
        self._local.request = request
        try:
            yield
        finally:
            self._local.request = None


class MemoryQueueStore(Adding, MemoryJobStore):
    """The memory job store (``scheduler.jobstore.url = memory``), per queue."""

    def __init__(self, on_added: OnAdded | None = None) -> None:
        super().__init__()
        self.on_added = on_added
        self._local = threading.local()

    def add_job(self, job: Job) -> None:
        job.__class__ = CatchUpJob  # same slots: only how overdue runs are planned changes
        super().add_job(job)
        request = getattr(self._local, "request", None)
        if request is not None and self.on_added is not None:
            self.on_added(job, request)
