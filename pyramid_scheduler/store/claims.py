"""Claims: which daemon holds each job of a queue's table (``claimed_by``).

Every daemon of a queue executes, so the jobs of its table
(``<prefix>aps_<queue>``) are shared out by a claim on each row: the
daemon named in ``claimed_by`` is the one that hands the job to its workers
when it is due, until that daemon is declared dead
(:mod:`pyramid_scheduler.store.membership`). A claim sticks: a recurring job
stays with the daemon that holds it, so ``max_instances`` holds and its
runs stay in order. A job is claimed

* by the daemon that stores it (the one the broker gave the ``add`` message
  to: the broker's delivery shares the jobs out), or that changes it
  (pause, resume, reschedule);
* when it is due and unclaimed, or held by a daemon that is dead: by the
  first daemon that looks (every daemon looks at least every
  :data:`pyramid_scheduler.daemon.scheduling.POLL` seconds), at most
  :data:`BATCH` at a time, rows locked by another daemon's claim skipped
  (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, MySQL and MariaDB; SQLite has
  one writer at a time).

A daemon that takes a job over by changing it while another live daemon
runs it (a pause and resume, a reschedule consumed by the other daemon)
starts none of its fires while that run goes on (:meth:`Claims.running_elsewhere`):
``max_instances`` holds across daemons.

A claim decides who hands a job over; it is not what keeps a run from
happening twice. That is the run ledger: each run is recorded once, by its
key, and only while its daemon is not declared dead (:mod:`.runwrites`). A daemon's
writes of a row after the hand-over are made only while it still holds the
claim, so one that was paused while another took its jobs over does not
write its stale copy back.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pyramid_scheduler.store.ledger import Ledger

#: The most due jobs one daemon claims at one look; the others take the
#: rest (and it looks again at once when it took that many).
BATCH = 500


class Claims:
    """The claim statements of one queue's table for the daemon *owner*."""

    def __init__(self, table: sa.Table, ledger: Ledger, owner: str) -> None:
        daemons, param = ledger.daemons, sa.bindparam
        self.owner = owner
        live = sa.select(daemons.c.owner).where(daemons.c.expires_at > 0)
        #: A row no live daemon holds (none, or one declared dead: see
        #: :mod:`pyramid_scheduler.store.membership`).
        self.claimable = sa.or_(table.c.claimed_by.is_(None), table.c.claimed_by.not_in(live))
        #: A row this daemon holds.
        self.mine = table.c.claimed_by == owner
        self._pick = (
            sa.select(table.c.id)
            .where(table.c.next_run_time <= param("p_until"), self.claimable)
            .order_by(table.c.next_run_time)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
        runs = ledger.runs
        self._elsewhere = (
            sa.select(runs.c.run_key)
            .where(
                runs.c.job_id == param("p_id"),
                runs.c.status == "started",
                runs.c.owner != owner,
                runs.c.owner.in_(live),
            )
            .limit(1)
        )
        # The claimable test again: on a database without SKIP LOCKED two
        # daemons may pick the same rows, and the second takes none of them.
        self._take = (
            table.update()
            .where(table.c.id.in_(param("p_ids", expanding=True)), self.claimable)
            .values(claimed_by=owner)
        )

    def take_due(self, conn: sa.Connection, until: float) -> bool:
        """Claim the jobs due by *until* that no live daemon holds, in the
        transaction of *conn*; True if the batch was full (look again soon)."""
        ids = conn.execute(self._pick, {"p_until": until}).scalars().all()
        if ids:
            conn.execute(self._take, {"p_ids": list(ids)})
        return len(ids) >= BATCH

    def running_elsewhere(self, conn: sa.Connection, job_id: str) -> bool:
        """True while another live daemon has a run of *job_id* started and
        not ended."""
        return conn.execute(self._elsewhere, {"p_id": job_id}).first() is not None

    def where_mine(self, statement: Any) -> Any:
        """*statement* (an UPDATE or DELETE of the table) for rows this daemon holds."""
        return statement.where(self.mine)
