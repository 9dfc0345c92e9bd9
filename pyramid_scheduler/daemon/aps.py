"""APScheduler's internals: every use of a private name of APScheduler 3, in one place.

The daemon runs on APScheduler 3's scheduler, job stores and thread pool
executor, and reaches past their public API where that API has no door:
building a job as a job store loads one, reading a job's queue, counting a
job's runs in the pool, moving a job to its next run time, taking the job
stores under their lock. Each such use is a function here, named for what it
does, so that a new APScheduler release is checked against this module alone.

Every function relies on the internals of APScheduler **3.11** (tested with
3.11.2 and 3.11.3; ``setup.py`` allows ``>=3.11.2,<3.12``). APScheduler 4 is
another library (no ``Job.__setstate__``, no executors): moving to it is a
rewrite of the daemon's scheduling part, not of this module.

Besides these functions, some of our classes override APScheduler methods
whose names are private; they live with their classes and rely on 3.11 too:

* :meth:`.scheduling.DueScheduler._process_jobs` (the scheduler thread's
  round; it also uses ``BaseScheduler.jobstore_retry_interval`` and
  ``TIMEOUT_MAX``);
* :meth:`.execution.JobExecutor._do_submit_job` (the pool's submit step),
  and the same step of :class:`.stepped.InlineExecutor` (the testing kit's
  pool, which runs a batch in the caller's thread);
* :class:`.stepped.SteppedScheduler` calls ``_process_jobs`` (above) for one
  round, and starts and shuts down as ``BaseScheduler`` does, without
  ``BackgroundScheduler``'s thread;
* :meth:`.catchup.CatchUpJob._get_run_times` (the run times of a due job);
* ``QueueJobStore._reconstitute_job`` and ``QueueJobStore._get_jobs``
  (:mod:`pyramid_scheduler.store.jobstores`: loading a stored job with the restricted
  unpickler), and ``QueueJobStore.start``, which skips
  ``SQLAlchemyJobStore.start`` (``BaseJobStore.start``, then its own
  ``CREATE TABLE`` under the DDL lock, as daemons starting together race to it)
  and relies on its table ``jobs_t``, to which it adds the ``claimed_by`` column;
* ``WallClockCronTrigger._increment_field_value`` (the cron trigger's step
  across a change of UTC offset).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import Executor
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from apscheduler.events import SchedulerEvent
from apscheduler.executors.base import BaseExecutor
from apscheduler.executors.pool import BasePoolExecutor
from apscheduler.job import Job
from apscheduler.jobstores.base import BaseJobStore
from apscheduler.schedulers.base import BaseScheduler


# -- jobs --------------------------------------------------------------------------------
def build_job(scheduler: BaseScheduler, queue: str, state: dict[str, Any], cls: type[Job] = Job) -> Job:
    """A job of *cls* (:class:`~apscheduler.job.Job` or a subclass with its
    slots) from *state* (the dict ``Job.__getstate__`` makes), bound to
    *scheduler* and its job store *queue*: as APScheduler's job stores load a
    job (``Job.__new__``, ``__setstate__``, then ``_scheduler`` and
    ``_jobstore_alias``), with none of ``add_job``'s checks, which the caller
    made."""
    job: Job = object.__new__(cls)
    job.__setstate__(state)
    job._scheduler = scheduler
    job._jobstore_alias = queue
    return job


def load_job(store: BaseJobStore, state: dict[str, Any], cls: type[Job] = Job) -> Job:
    """A job loaded by *store* from its stored *state* (its job store's own
    ``_reconstitute_job`` step): bound to the store's scheduler and alias."""
    return build_job(store._scheduler, store._alias, state, cls)


def job_state(job: Job) -> dict[str, Any]:
    """What a job store pickles of *job* (``Job.__getstate__``)."""
    return job.__getstate__()  # type: ignore[no-any-return]


def queue_of(job: Job) -> str:
    """The alias of the job store holding *job*: its queue (``Job._jobstore_alias``)."""
    return str(job._jobstore_alias)


def scheduler_of(job: Job) -> BaseScheduler | None:
    """The scheduler *job* is bound to (``Job._scheduler``)."""
    return job._scheduler  # type: ignore[no-any-return]


def move_job(job: Job, next_run_time: datetime) -> None:
    """Set *job*'s next run time in memory, with APScheduler's checks and
    conversion (``Job._modify``); the caller writes it to the store."""
    job._modify(next_run_time=next_run_time)


def run_times(job: Job, now: datetime) -> list[datetime]:
    """The run times of *job* due at *now* (``Job._get_run_times``; for our
    jobs, :meth:`.catchup.CatchUpJob._get_run_times`)."""
    return job._get_run_times(now)  # type: ignore[no-any-return]


# -- the scheduler -----------------------------------------------------------------------
def job_defaults(scheduler: BaseScheduler) -> dict[str, Any]:
    """The scheduler's configured job defaults (``misfire_grace_time``,
    ``coalesce``, ``max_instances``; ``BaseScheduler._job_defaults``)."""
    return dict(scheduler._job_defaults)


def executor_of(scheduler: BaseScheduler, alias: str) -> BaseExecutor:
    """The executor *alias* of *scheduler* (``BaseScheduler._lookup_executor``).

    :raises KeyError: no such executor.
    """
    return scheduler._lookup_executor(alias)  # type: ignore[no-any-return]


@contextmanager
def job_stores(scheduler: BaseScheduler) -> Iterator[Mapping[str, BaseJobStore]]:
    """The scheduler's job stores by alias, under its job-store lock
    (``BaseScheduler._jobstores_lock`` and ``_jobstores``), as its own
    ``_process_jobs`` takes them."""
    with scheduler._jobstores_lock:
        yield scheduler._jobstores


def dispatch(scheduler: BaseScheduler, event: SchedulerEvent) -> None:
    """Call *scheduler*'s listeners for *event* (``BaseScheduler._dispatch_event``)."""
    scheduler._dispatch_event(event)


# -- the executor ------------------------------------------------------------------------
def runs_in_pool(executor: BaseExecutor, job_id: str) -> int:
    """How many runs of *job_id* *executor* counts against ``max_instances``
    (submitted and not finished; ``BaseExecutor._instances``)."""
    return int(executor._instances.get(job_id, 0))


def pool_of(executor: BasePoolExecutor) -> Executor:
    """The :mod:`concurrent.futures` pool behind *executor* (``BasePoolExecutor._pool``)."""
    return executor._pool  # type: ignore[no-any-return]


def set_pool(executor: BasePoolExecutor, pool: Executor) -> None:
    """Replace the pool behind *executor* (tests: a pool whose futures are done at once)."""
    executor._pool = pool


def run_ended(executor: BaseExecutor, job_id: str, exc: BaseException | None = None) -> None:
    """Tell *executor* a batch of runs of *job_id* left the pool, so it no
    longer counts against ``max_instances``; with *exc*, the batch raised
    (``BaseExecutor._run_job_success`` and ``_run_job_error``)."""
    if exc is None:
        executor._run_job_success(job_id, [])
    else:
        executor._run_job_error(job_id, exc, exc.__traceback__)
