"""The ledger's tables: their names, their columns, and the job statuses.

All of them live in the job store's database (``scheduler.jobstore.url``):

* ``<prefix>jobs``: one row per job request (its wire message, status, run
  count, last result or error). It absorbs redelivered and duplicate messages
  by job id, and it is what users can read back.
* ``<prefix>runs``: one row per scheduled run, keyed by ``run_key``
  (``job_id@scheduled time``): started -> done | failed | missed |
  interrupted. It closes APScheduler 3's gaps (it submits a run before
  updating its store, and removes a date job before the run finishes): a run
  found ``started`` after a crash is reported interrupted, never re-run.
* ``<prefix>aps_<queue>``: APScheduler's own table, one per queue, so a
  daemon restricted with ``-q`` only loads its queues' jobs
  (:mod:`pyramid_scheduler.store.jobstores`).
* ``<prefix>leases``: which daemon does the single-owner work of each queue
  (recovery, declared jobs, housekeeping), with an epoch
  (:mod:`pyramid_scheduler.store.lease`).
* ``<prefix>daemons``: every daemon that executes, with its heartbeat; a run
  starts only while its daemon's row is alive
  (:mod:`pyramid_scheduler.store.membership`).
* ``<prefix>event_seqs``: the number of each job's last event on the fan-out.
* ``<prefix>dead_letters``: messages refused at the daemon's door, with why.
* ``<prefix>slots``, ``<prefix>rates`` and ``<prefix>rate_holds``: the flow
  limits' concurrency slots and rate reservations (:mod:`pyramid_scheduler.store.slots`).
* ``<prefix>progress``: the latest progress each job's run reported, one row
  per job (:mod:`pyramid_scheduler.store.progress`).
* ``<prefix>flows``: one row per group of jobs, locked by each member that
  ends so that the last one makes the group's ``then`` step
  (:mod:`pyramid_scheduler.store.flows`).

The queries are :class:`pyramid_scheduler.store.ledger.Ledger`'s; the
schema's upgrades, :mod:`pyramid_scheduler.store.schema`'s.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable

import sqlalchemy as sa

#: Job statuses. ``scheduled``, ``running``, ``paused`` and ``waiting`` (held
#: back by a flow limit: :mod:`pyramid_scheduler.store.slots`) are live; the others are final.
LIVE = ("scheduled", "running", "paused", "waiting")
FINAL = ("done", "failed", "missed", "expired", "canceled", "interrupted", "parked")
#: Run statuses of a run that raised or was stopped: each counts as a run of
#: its job, keeps its error, and fails a live job (``stopped``: its job was
#: canceled while it ran, and stays so; ``timed-out``: past its ``timeout``).
FAILED_RUNS = ("failed", "timed-out", "stopped")
#: Every status a run can have in the runs table.
RUN_STATUSES = ("started", "done", *FAILED_RUNS, "missed", "expired", "interrupted")

#: The longest table name every supported database keeps whole (PostgreSQL: 63).
MAX_TABLENAME = 63


def now() -> float:
    return time.time()


def aps_tablename(prefix: str, queue: str) -> str:
    """The name of *queue*'s APScheduler table: distinct queues, distinct tables.

    A queue name of letters, digits and ``_`` is used as it is (the names
    of 0.3.4 and of every release so far). Any other name (``a.b``, ``a-b``)
    has its other characters replaced by ``_`` and a digest of the exact
    name appended, so ``a.b``, ``a-b`` and ``a_b`` no longer share a table.
    """
    if re.fullmatch(r"[A-Za-z0-9_]+", queue):
        return f"{prefix}aps_{queue}"
    digest = hashlib.sha256(queue.encode("utf-8")).hexdigest()[:10]
    readable = f"{prefix}aps_{re.sub(r'[^A-Za-z0-9_]', '_', queue)}"
    return f"{readable[: MAX_TABLENAME - len(digest) - 1]}_{digest}"


def table_clash(prefix: str, queues: tuple[str, ...]) -> tuple[str, str] | None:
    """Two of *queues* whose tables a database would take for one (names
    equal but for case, as SQLite and MySQL compare them, or in their first
    :data:`MAX_TABLENAME` characters, where PostgreSQL cuts them), or None."""
    seen: dict[str, str] = {}
    for queue in queues:
        key = aps_tablename(prefix, queue).lower()[:MAX_TABLENAME]
        if key in seen:
            return seen[key], queue
        seen[key] = queue
    return None


class Tables:
    """The scheduler's own tables under one prefix (their definitions only)."""

    def __init__(self, prefix: str = "pyramid_scheduler_") -> None:
        self.prefix = prefix
        #: Where the records' own times (created, updated, run started and
        #: finished) are read, in epoch seconds: the system's; the testing
        #: kit's fake clock in :mod:`pyramid_scheduler.testing`.
        self.now: Callable[[], float] = now
        self.metadata = sa.MetaData()
        self.jobs = sa.Table(
            f"{prefix}jobs",
            self.metadata,
            sa.Column("id", sa.String(200), primary_key=True),
            sa.Column("queue", sa.String(200), nullable=False, index=True),
            sa.Column("func", sa.String(500), nullable=False),
            sa.Column("kind", sa.String(20), nullable=False),
            sa.Column("status", sa.String(20), nullable=False, index=True),
            sa.Column("mid", sa.String(64), nullable=False),
            sa.Column("request", sa.Text, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("updated_at", sa.Float, nullable=False),
            sa.Column("runs", sa.Integer, nullable=False, default=0),
            sa.Column("last_run_at", sa.Float),
            sa.Column("result", sa.Text),
            sa.Column("error", sa.Text),
            # Retries: the number of the next (or current) attempt at the job's
            # run, and when the next retry is due (None: none pending).
            sa.Column("attempt", sa.Integer, nullable=False, server_default="1"),
            sa.Column("retry_at", sa.Float),
            # Seconds the finished record is kept (None: scheduler.result_ttl).
            sa.Column("ttl", sa.Float),
            # The daemon that last took the job out of its queue's table to
            # run it (a run-now job it stored, a date job it handed over):
            # if that daemon dies before the run starts, the job is its orphan.
            sa.Column("owner", sa.String(200)),
            # A step of a chain or group (pyramid_scheduler.store.flows): the
            # flow's id, and the step's place in it (a group's then: its size).
            sa.Column("parent", sa.String(200), index=True),
            sa.Column("position", sa.Integer),
            # Why the job is ``waiting`` (a flow limit held its run back).
            sa.Column("waiting_reason", sa.Text),
        )
        self.runs = sa.Table(
            f"{prefix}runs",
            self.metadata,
            sa.Column("run_key", sa.String(300), primary_key=True),
            sa.Column("job_id", sa.String(200), nullable=False, index=True),
            sa.Column("queue", sa.String(200), nullable=False),
            sa.Column("scheduled_at", sa.Float, nullable=False),
            sa.Column("status", sa.String(20), nullable=False, index=True),
            sa.Column("owner", sa.String(200), nullable=False),
            sa.Column("started_at", sa.Float),
            sa.Column("finished_at", sa.Float),
            #: Why a run was missed, failed or interrupted.
            sa.Column("error", sa.Text),
        )
        self.leases = sa.Table(
            f"{prefix}leases",
            self.metadata,
            sa.Column("queue", sa.String(200), primary_key=True),
            sa.Column("owner", sa.String(200), nullable=False),
            sa.Column("epoch", sa.Integer, nullable=False),
            sa.Column("expires_at", sa.Float, nullable=False),
        )
        self.daemons = sa.Table(
            f"{prefix}daemons",
            self.metadata,
            sa.Column("owner", sa.String(200), primary_key=True),
            sa.Column("queues", sa.Text, nullable=False),
            sa.Column("host", sa.String(200), nullable=False),
            sa.Column("pid", sa.Integer, nullable=False),
            #: "2/4" under ``pscheduler --processes 4``; "" for a lone process.
            sa.Column("process", sa.String(20), nullable=False, server_default=""),
            sa.Column("started_at", sa.Float, nullable=False),
            sa.Column("heartbeat_at", sa.Float, nullable=False),
            #: Past this, the daemon is dead for good: its row is never renewed again.
            sa.Column("expires_at", sa.Float, nullable=False, index=True),
        )
        self.event_seqs = sa.Table(
            f"{prefix}event_seqs",
            self.metadata,
            sa.Column("job_id", sa.String(200), primary_key=True),
            sa.Column("seq", sa.Integer, nullable=False),
        )
        self.progress = sa.Table(
            f"{prefix}progress",
            self.metadata,
            sa.Column("job_id", sa.String(200), primary_key=True),
            sa.Column("run_key", sa.String(300), nullable=False),
            sa.Column("fraction", sa.Float, nullable=False),
            sa.Column("message", sa.Text, nullable=False),
            sa.Column("at", sa.Float, nullable=False),
        )
        self.dead_letters = sa.Table(
            f"{prefix}dead_letters",
            self.metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("queue", sa.String(200), nullable=False),
            sa.Column("received_at", sa.Float, nullable=False),
            sa.Column("reason", sa.Text, nullable=False),
            #: The first DEAD_LETTER_PREFIX bytes of the body (as text).
            sa.Column("body", sa.Text, nullable=False),
            #: The whole body's size in bytes and SHA-256 (hex).
            sa.Column("size", sa.BigInteger),
            sa.Column("sha256", sa.String(64)),
            #: The whole body, when it can be replayed (see
            #: :func:`pyramid_scheduler.wire.door.kept_for_replay`); else NULL.
            sa.Column("message", sa.Text),
            #: Whether it was signed with the daemon's secret (NULL: no secret).
            sa.Column("signed", sa.Boolean),
        )
        self.flows = sa.Table(
            f"{prefix}flows",
            self.metadata,
            #: A group's id: its row is what the members that end lock, one
            #: at a time, to tell which of them ends last.
            sa.Column("id", sa.String(200), primary_key=True),
            sa.Column("kind", sa.String(20), nullable=False),
            sa.Column("size", sa.Integer, nullable=False),
            #: ``running``, then ``done`` (its then step made) or ``canceled``.
            sa.Column("status", sa.String(20), nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("updated_at", sa.Float, nullable=False),
        )
        # The flow limits (pyramid_scheduler.store.slots): a run holding one of
        # the max_concurrency slots of its key; the next free start of each
        # rate key; and the runs stored back to start at a reserved time.
        self.slots = sa.Table(
            f"{prefix}slots",
            self.metadata,
            sa.Column("key", sa.String(200), primary_key=True),
            sa.Column("slot", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("run_key", sa.String(300), nullable=False, unique=True),
            sa.Column("job_id", sa.String(200), nullable=False),
            sa.Column("owner", sa.String(200), nullable=False, index=True),
            sa.Column("taken_at", sa.Float, nullable=False),
        )
        self.rates = sa.Table(
            f"{prefix}rates",
            self.metadata,
            sa.Column("key", sa.String(200), primary_key=True),
            sa.Column("next_at", sa.Float, nullable=False),
        )
        self.rate_holds = sa.Table(
            f"{prefix}rate_holds",
            self.metadata,
            sa.Column("job_id", sa.String(200), primary_key=True),
            sa.Column("key", sa.String(200), nullable=False),
            sa.Column("at", sa.Float, nullable=False, index=True),
        )
