"""Job records: what ``registry.scheduler`` reads back from the job store.

The producer only publishes; the daemon keeps each job's record (its status,
runs, result and error) in the job store's database
(:class:`~pyramid_scheduler.store.ledger.Ledger`). :class:`JobRecords` gives
:class:`~pyramid_scheduler.web.proxy.SchedulerProxy` its reading methods --
:meth:`~JobRecords.get_job`, :meth:`~JobRecords.get_jobs`,
:meth:`~JobRecords.get_runs`, :meth:`~JobRecords.wait` and
:meth:`~JobRecords.get_daemons` -- from any process that shares
``scheduler.jobstore.url``; :mod:`pyramid_scheduler.testing` serves them from
its own jobs instead (it replaces :meth:`~JobRecords._ledger`).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from pyramid_scheduler.exceptions import InvalidJob, InvalidQueue, JobTimeout
from pyramid_scheduler.settings import SchedulerSettings
from pyramid_scheduler.store.progress import read_progress
from pyramid_scheduler.wire.flows import children, flow_of

if TYPE_CHECKING:
    from pyramid_scheduler.store.ledger import Ledger


class JobRecords:
    """The reading half of :class:`~pyramid_scheduler.web.proxy.SchedulerProxy`.

    The job store is opened at the first read (a web process that never
    reads opens no database connection).
    """

    settings: SchedulerSettings
    _ledger_obj: Ledger | None = None

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The job's record from the job store's database, or ``None``.

        Keys: ``id``, ``queue``, ``func``, ``kind``, ``status`` (``scheduled``,
        ``running``, ``paused``, ``done``, ``failed``, ``missed``, ``expired``,
        ``canceled``, ``interrupted`` or ``parked``), ``runs``, ``created_at``,
        ``updated_at``, ``last_run_at``, ``next_run_time`` (epoch seconds;
        the latter from the job store, ``None`` when there is none), ``result`` (the
        last run's return value, decoded from JSON), ``error`` and ``progress``
        (the latest :func:`~pyramid_scheduler.report_progress` of its runs: a
        dict with ``fraction``, ``message``, ``at`` and ``run_key``, or
        ``None``). Works from any process that shares
        ``scheduler.jobstore.url`` (not with the memory store).
        A step of a chain or group (:doc:`flow`) also says ``parent`` (the
        flow's id), ``position`` (its place: 0, 1, ...; a group's then step:
        the group's size) and ``children`` (the ids of the jobs its end
        makes: a chain step's next step, a group member's then step); other
        jobs have ``None``, ``None`` and ``[]``.

        .. versionchanged:: 1.0 ``progress``, ``parent``, ``position`` and ``children``.
        """
        row = self._ledger().get_job(job_id)
        return None if row is None else self._records([row])[0]

    def get_jobs(
        self,
        queue: str | None = None,
        status: str | None = None,
        limit: int = 100,
        func: str | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """The most recently changed job records, newest first: the latest
        *limit* of them after the first *offset*, of *queue*, in *status*,
        whose function reference (``module:qualname``) contains *func*, as
        far as given.

        .. versionchanged:: 1.0 *func* and *offset*.
        """
        if queue is not None and queue not in self.settings.queues:
            raise InvalidQueue(queue, self.settings.queues)
        return self._records(self._ledger().list_jobs(queue, status, limit, func, offset))

    def _records(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Job records from ledger rows, with ``next_run_time`` (epoch
        seconds, or ``None``) from the job store where a row lacks it."""
        missing = [row for row in rows if "next_run_time" not in row]
        lacking = {row["id"] for row in missing}
        times = self._ledger().next_run_times(missing) if missing else {}
        ledger = self._ledger()
        progress = read_progress(ledger, ledger.engine, [row["id"] for row in rows]) if rows else {}
        records = []
        for row in rows:
            record = _record(row)
            record["progress"] = progress.get(row["id"])
            if row["id"] in lacking:
                record["next_run_time"] = times.get(row["id"])
            records.append(record)
        return records

    def get_runs(self, job_id: str, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The job's recorded runs, oldest first: the latest *limit* of them
        (with *status*: only those). A retry is a run of its own.

        Keys: ``run_key`` (``job_id@scheduled time``), ``queue``,
        ``scheduled_at``, ``started_at``, ``finished_at`` (epoch seconds),
        ``status`` (``started``, ``done``, ``failed``, ``timed-out`` (past
        the job's ``timeout``), ``stopped`` (its job canceled while it ran),
        ``missed``, ``expired`` or ``interrupted``), ``owner`` (the daemon) and ``error`` (why a run was
        missed, expired, failed or interrupted). A run that the catch-up policy did not
        run is here as ``missed``; many at once beyond
        ``scheduler.catch_up_limit`` are one ``missed`` row whose ``error``
        gives their number and span.

        .. versionadded:: 1.0
        """
        return [
            {k: v for k, v in run.items() if k != "job_id"} for run in self._ledger().list_runs(job_id, status, limit)
        ]

    def wait(self, job_id: str, timeout: float | None = 30.0, interval: float = 1.0) -> dict[str, Any]:
        """Wait until the job has finished and return its record (see
        :meth:`get_job`).

        Finished means a final status: ``done``, ``failed`` (after its last
        retry), ``missed``, ``expired``, ``canceled``, ``interrupted`` or ``parked``. The
        job store's database is polled, first every 50 ms, then less often,
        up to every *interval* seconds. A job that has not been stored yet
        (its message is still on its way) is waited for too. Mind that a
        finished record is removed after its ``ttl``, and that a job id used
        again finds the earlier job's record until the new one is stored.

        :param timeout: seconds to wait at most; ``None``: no limit.
        :raises JobTimeout: the job did not finish in time (it is not
            canceled; its last record is on the exception).

        .. versionadded:: 1.0
        """
        if timeout is not None and (isinstance(timeout, bool) or not timeout >= 0):
            raise InvalidJob(f"timeout: expected seconds of zero or more or None, got {timeout!r}")
        from pyramid_scheduler.store.tables import FINAL

        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.05
        while True:
            record = self.get_job(job_id)
            if record is not None and record["status"] in FINAL:
                return record
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise JobTimeout(job_id, float(timeout or 0), record)
                pause = min(pause, left)
            time.sleep(pause)
            pause = min(pause * 1.5, interval)

    def get_daemons(self) -> list[dict[str, Any]]:
        """Which daemons run each configured queue, from the job store.

        One dict per queue in ``scheduler.queues``: ``queue``; ``daemons``,
        the live daemons that execute it (each a dict: ``owner``
        ``host:pid:token``, ``host``, ``pid``, ``process`` such as ``"2/4"``
        under ``pscheduler --processes``, ``started_at`` and ``heartbeat_at``
        in epoch seconds); ``active``, true when at least one does; and
        ``owner`` and ``expires_at``, the daemon holding the queue's lease
        (the one doing the single-owner work: recovery, declared jobs,
        housekeeping) and until when (``None`` if none ever held it).
        """
        ledger = self._ledger()
        leases = {row["queue"]: row for row in ledger.list_leases()}
        stamp = time.time()
        live = [row for row in ledger.list_daemons() if row["expires_at"] > stamp]
        daemons = []
        for queue in self.settings.queues:
            lease = leases.get(queue) or {}
            serving = [
                {key: row[key] for key in ("owner", "host", "pid", "process", "started_at", "heartbeat_at")}
                for row in live
                if queue in row["queues"].split(",")
            ]
            daemons.append(
                {
                    "queue": queue,
                    "owner": lease.get("owner"),
                    "expires_at": lease.get("expires_at"),
                    "active": bool(serving),
                    "daemons": serving,
                }
            )
        return daemons

    def _ledger(self) -> Any:
        if self._ledger_obj is None:
            if self.settings.memory_store:
                raise InvalidJob("job records need a SQL job store; scheduler.jobstore.url is 'memory'")
            from pyramid_scheduler.store.db import create_db_engine
            from pyramid_scheduler.store.ledger import Ledger

            self._ledger_obj = Ledger(
                create_db_engine(self.settings.jobstore_url or "", wal=self.settings.sqlite_wal),
                self.settings.jobstore_tablename_prefix,
            )
        return self._ledger_obj

    def _close_ledger(self) -> None:
        if self._ledger_obj is not None:
            self._ledger_obj.engine.dispose()
            self._ledger_obj = None


def _record(row: dict[str, Any]) -> dict[str, Any]:
    record = {k: v for k, v in row.items() if k not in ("request", "mid")}
    if record.get("result") is not None:
        record["result"] = json.loads(record["result"])
    request = json.loads(row["request"])
    record.update(args=request.get("args"), kwargs=request.get("kwargs"), trigger=request.get("trigger"))
    record["children"] = children(flow_of(request))
    _retry_fields(record, request)
    return record


def _retry_fields(record: dict[str, Any], request: dict[str, Any]) -> None:
    """``retries`` (asked), ``retries_left``, ``attempt`` and ``retry_at``."""
    retries = int((request.get("options") or {}).get("retries") or 0)
    attempt = int(record.get("attempt") or 1)
    record.update(retries=retries, attempt=attempt, retries_left=max(retries - attempt + 1, 0))
