"""What a run writes to the ledger: its start and its end.

The runner (:mod:`pyramid_scheduler.daemon.execution`) hands a
:class:`RunStart` before calling the job and a :class:`RunEnd` after, to
the group commit (:class:`pyramid_scheduler.store.runs.RunWriter`), which
writes several at once (:mod:`pyramid_scheduler.store.runwrites`) or each on
its own (:meth:`pyramid_scheduler.store.ledger.Ledger.start_run` and
:meth:`~pyramid_scheduler.store.ledger.Ledger.finish_run`). A job that
skipped record-first (``durable=False``, :mod:`pyramid_scheduler.daemon.fastlane`)
hands one :class:`RunAfter` once its run is over: its job's record and its
run's, written together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RunStart:
    """A run about to start: recorded ``started`` (by *owner*) unless its key is known."""

    job_id: str
    queue: str
    run_key: str
    #: When the run was due (epoch seconds).
    scheduled_at: float
    #: The daemon running it (``host:pid:nonce``).
    owner: str

    def row(self, stamp: float) -> dict[str, Any]:
        """The run's row, started at *stamp*."""
        return {
            "run_key": self.run_key,
            "job_id": self.job_id,
            "queue": self.queue,
            "scheduled_at": self.scheduled_at,
            "status": "started",
            "owner": self.owner,
            "started_at": stamp,
        }


@dataclass(frozen=True, slots=True)
class EndKind:
    """The kind of a run's end, which picks the statements that write it."""

    status: str
    final: bool
    has_error: bool
    retry: bool


@dataclass(frozen=True, slots=True)
class RunEnd:
    """A run's outcome and what becomes of its job.

    *status* is ``done``, ``failed``, ``timed-out`` or ``stopped`` (see
    :data:`~pyramid_scheduler.store.tables.FAILED_RUNS`), ``missed`` or
    ``interrupted``; with *final* the job takes that status (``failed`` for
    the two stopped ones; else it stays live). With *retry_at*
    (a failed run to be retried) the job stays ``scheduled``, its next
    attempt due then.
    """

    job_id: str
    run_key: str
    status: str
    final: bool
    #: A done run's return value (stored as JSON, or its repr).
    result: Any = None
    error: str | None = None
    retry_at: float | None = None
    #: A run that may have no row yet (a missed run): when it was due, its
    #: queue and the daemon recording it.
    scheduled_at: float | None = None
    queue: str = ""
    owner: str = ""

    @property
    def kind(self) -> EndKind:
        return EndKind(self.status, self.final, self.error is not None, self.retry_at is not None)

    @property
    def unstarted(self) -> bool:
        """True if the end says where to record a run never started (a missed
        run): the ledger's own path, never a batch's."""
        return self.scheduled_at is not None or bool(self.queue) or bool(self.owner)

    def stored_result(self) -> str:
        """The result as the job's record keeps it."""
        return json_or_repr(self.result)

    def run_params(self, stamp: float) -> dict[str, Any]:
        """The parameters of the run's ``UPDATE``."""
        return {"p_run_key": self.run_key, "p_status": self.status, "p_stamp": stamp, "p_error": self.error}

    def job_params(self, stamp: float) -> dict[str, Any]:
        """The parameters of the job's ``UPDATE`` (a done run's result as ``p_result``)."""
        params = {"p_job_id": self.job_id, "p_stamp": stamp, "p_error": self.error, "p_retry_at": self.retry_at}
        if self.status == "done":
            params["p_result"] = self.stored_result()
        return params


def json_or_repr(value: Any) -> str:
    """*value* as JSON, or its repr as a JSON string."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return json.dumps(repr(value))


@dataclass(frozen=True, slots=True)
class RunAfter:
    """A run-now job that was not stored before its run (``durable=False``),
    recorded once its run is over: the job's record, final with the run's
    *status* (``done``, ``failed`` or ``missed``), and the run's record."""

    #: The job's wire request (the record keeps it whole).
    request: dict[str, Any]
    run_key: str
    #: When the run was due, the job was accepted, the run started (epoch seconds).
    scheduled_at: float
    created_at: float
    started_at: float
    #: The daemon that ran it (``host:pid:nonce``).
    owner: str
    status: str
    result: Any = None
    error: str | None = None

    @property
    def job_id(self) -> str:
        return str(self.request["id"])

    def run_row(self, stamp: float) -> dict[str, Any]:
        """The run's row, finished at *stamp*."""
        return {
            "run_key": self.run_key,
            "job_id": self.job_id,
            "queue": self.request["queue"],
            "scheduled_at": self.scheduled_at,
            "status": self.status,
            "owner": self.owner,
            "started_at": self.started_at,
            "finished_at": stamp,
            "error": self.error,
        }

    def job_values(self, stamp: float) -> dict[str, Any]:
        """What the job's row holds beside its request: its final status and
        the run's outcome, as :meth:`RunEnd.job_params` would set them."""
        ran = self.status in ("done", "failed")
        return {
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": stamp,
            "runs": 1 if ran else 0,
            "last_run_at": stamp if ran else None,
            "result": json_or_repr(self.result) if self.status == "done" else None,
            "error": self.error,
        }
