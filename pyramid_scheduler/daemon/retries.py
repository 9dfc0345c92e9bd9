"""Retries: when a failed run of a one-off job runs again.

A job added with ``retries=N`` (``add_async_job``, ``add_date_job``) whose
run raises is run again after ``retry_delay * retry_backoff ** (attempt - 1)``
seconds, at most ``retry_max_delay``, up to *N* times. The runner
(:mod:`pyramid_scheduler.daemon.execution`) asks :func:`plan_retry` when a run fails;
the ledger records the failed run and the retry's due time in one write
(the job stays ``scheduled``); once the run has left the worker pool,
:func:`schedule_retry` stores the retry in APScheduler's job store as a date
job with the same id. So a retry lives where every job lives and survives a
restart, and a daemon that stopped between the two writes finds the due time
in the ledger and schedules the retry at start (:meth:`pyramid_scheduler.store.ledger.Ledger.orphans`).
Each retry is a run of its own, with its own ``run_key``. A run that a crash
cut spends a retry too: the daemon's recovery (:mod:`.recovery`) asks :func:`plan_retry` when it
records the run ``interrupted``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from apscheduler.job import Job
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.date import DateTrigger

from pyramid_scheduler.daemon.aps import queue_of
from pyramid_scheduler.logs import get_logger

log = get_logger(__name__)

#: Defaults of the retry options (seconds; the backoff factor).
DEFAULT_DELAY = 1.0
DEFAULT_BACKOFF = 2.0
DEFAULT_MAX_DELAY = 3600.0


class StoreBack(Protocol):
    """Puts a one-off job back in its queue's job store, due at *run_time*
    (with *trigger*, else its own); False if the daemon stopped first.
    :class:`pyramid_scheduler.daemon.scheduling.StoreBack` is the daemon's."""

    def __call__(self, job: Job, run_time: datetime, trigger: BaseTrigger | None = None) -> bool: ...

    def delay_next(self, job: Job, ended: datetime) -> None:
        """Move a fixed-delay job whose run ended at *ended* to its next run."""


@dataclass(frozen=True)
class RetryPlan:
    """The retry of a failed run: it was attempt *attempt* of *retries + 1*."""

    attempt: int
    retries: int
    delay: float
    at: datetime


def retry_delay(options: dict[str, Any], attempt: int) -> float:
    """Seconds to wait after failed attempt number *attempt* (1 = the first run)."""
    base = float(options.get("retry_delay", DEFAULT_DELAY))
    cap = float(options.get("retry_max_delay", DEFAULT_MAX_DELAY))
    try:
        delay = base * float(options.get("retry_backoff", DEFAULT_BACKOFF)) ** (attempt - 1)
    except OverflowError:
        return cap
    return min(delay, cap)


def plan_retry(record: dict[str, Any] | None, failed_at: datetime) -> RetryPlan | None:
    """The retry due after a run of the job in ledger row *record* failed at
    *failed_at*, or None when it has no retries left; its time is in UTC,
    *delay* seconds after the failure whatever the clocks do meanwhile."""
    if record is None:
        return None
    options = json.loads(record["request"]).get("options") or {}
    retries = int(options.get("retries") or 0)
    attempt = int(record.get("attempt") or 1)
    if attempt > retries:
        return None
    delay = retry_delay(options, attempt)
    return RetryPlan(
        attempt=attempt, retries=retries, delay=delay, at=failed_at.astimezone(timezone.utc) + timedelta(seconds=delay)
    )


def schedule_retry(store_back: StoreBack, job: Job, plan: RetryPlan) -> None:
    """Store the retry of *job* in its queue's job store, due at ``plan.at``.

    Called once the failed run has left the worker pool: APScheduler counts a
    run against ``max_instances`` until then, and would report a retry due at
    once as missed. If the daemon has stopped, the next one schedules the
    retry from the job record.
    """
    try:
        if not store_back(job, plan.at, DateTrigger(plan.at, timezone=timezone.utc)):
            return
    except Exception:
        log.exception(
            "job %s: could not store its retry; the next daemon start schedules it from the job record", job.id
        )
        return
    log.info(
        "job %s (queue %s): attempt %d of %d stored, due at %s",
        job.id,
        queue_of(job),
        plan.attempt + 1,
        plan.retries + 1,
        plan.at.isoformat(),
    )
