"""What a run writes to the ledger: its start and its end.

The runner (:mod:`pyramid_scheduler.daemon.execution`) hands a
:class:`RunStart` before calling the job and a :class:`RunEnd` after, to
the group commit (:class:`pyramid_scheduler.store.runs.RunWriter`), which
writes several at once (:mod:`pyramid_scheduler.store.runwrites`) or each on
its own (:meth:`pyramid_scheduler.store.ledger.Ledger.start_run` and
:meth:`~pyramid_scheduler.store.ledger.Ledger.finish_run`).
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

    *status* is ``done``, ``failed``, ``missed`` or ``interrupted``; with
    *final* the job takes that status (else it stays live). With *retry_at*
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
