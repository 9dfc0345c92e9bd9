"""Slots and rates: the flow limits' rows in the job store, shared by every daemon.

Beneath :mod:`pyramid_scheduler.daemon.limits`, which asks before a run
starts. Three tables (:class:`~pyramid_scheduler.store.tables.Tables`):

* ``<prefix>slots``: one row per run holding a slot of its concurrency key,
  keyed by ``(key, slot)`` with ``slot`` from 0 to ``max_concurrency - 1``.
  :meth:`Slots.take` inserts the first free number; the primary key makes
  two daemons that race for the last slot get one row between them, on
  every database, without a lock. The insert also carries the run's fence
  (:meth:`RunWrites.fence <pyramid_scheduler.store.runwrites.RunWrites.fence>`):
  a daemon declared dead takes no slot. The slot is given back when the run
  ends (:meth:`Slots.release`), or by the lease holder's recovery when its
  daemon is declared dead (:meth:`Slots.free_dead`).
* ``<prefix>rates``: one row per rate key, the earliest time the next run
  with that key may start. :meth:`Slots.reserve` moves it on by one
  interval (``period / count``) with a conditional ``UPDATE`` (only if it
  still holds what was read), and returns the start time reserved: runs
  past the rate get later times, in the order they asked.
* ``<prefix>rate_holds``: the runs stored back to start at their reserved
  time, by job id (a one-off job has one pending run); the run at that time
  finds its hold (:meth:`Slots.use_hold`) and does not reserve again.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pyramid_scheduler.store.runwrites import RunWrites
from pyramid_scheduler.store.tables import Tables

#: Attempts of a conditional update of a rate row before giving up (each
#: failed one means another daemon reserved meanwhile).
RESERVE_ATTEMPTS = 100


class Slots:
    """The flow limits' reads and writes (see the module)."""

    def __init__(self, tables: Tables, engine: Engine, run_writes: RunWrites) -> None:
        self.tables, self.engine, self.run_writes = tables, engine, run_writes
        self.slots, self.rates, self.holds, self.jobs = tables.slots, tables.rates, tables.rate_holds, tables.jobs

    # -- concurrency ------------------------------------------------------------------
    def take(self, key: str, limit: int, run_key: str, job_id: str, owner: str, stamp: float) -> str:
        """Take a slot of *key* for the run *run_key*: ``"taken"`` (or it
        already holds one), ``"full"`` (*limit* runs hold one), or
        ``"fenced"`` (this daemon is declared dead)."""
        slots = self.slots
        with self.engine.connect() as conn:
            held = conn.execute(sa.select(slots.c.slot, slots.c.run_key).where(slots.c.key == key)).all()
        if any(row.run_key == run_key for row in held):
            return "taken"
        taken = {row.slot for row in held}
        if len(taken) >= limit:
            return "full"
        for slot in range(limit):
            if slot in taken:
                continue
            row = sa.select(
                sa.literal(key),
                sa.literal(slot),
                sa.literal(run_key),
                sa.literal(job_id),
                sa.literal(owner),
                sa.literal(stamp, type_=sa.Float),
            )
            if self.run_writes.fenced:
                row = row.where(self.run_writes._alive())
            insert = slots.insert().from_select(["key", "slot", "run_key", "job_id", "owner", "taken_at"], row)
            try:
                with self.engine.begin() as conn:
                    if conn.execute(insert, {"p_owner": owner}).rowcount:
                        return "taken"
                    return "fenced"
            except sa.exc.IntegrityError:
                continue  # another run took that number first: the next one
        return "full"

    def release(self, run_key: str) -> None:
        """Give back the slot the run *run_key* holds (if any)."""
        with self.engine.begin() as conn:
            conn.execute(self.slots.delete().where(self.slots.c.run_key == run_key))

    def free_dead(self, live: set[str]) -> int:
        """Give back every slot held by a daemon not in *live*; how many."""
        with self.engine.begin() as conn:
            return int(conn.execute(self.slots.delete().where(self.slots.c.owner.not_in(live))).rowcount or 0)

    def held(self, key: str) -> int:
        """How many runs hold a slot of *key* now."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(self.slots.c.key == key)).scalar() or 0)

    # -- rates ------------------------------------------------------------------------
    def reserve(self, key: str, interval: float, now: float) -> float:
        """Reserve the next start of *key*: the later of *now* and the row's
        time, which moves on by *interval*. Returns the reserved time.

        :raises RuntimeError: :data:`RESERVE_ATTEMPTS` conditional updates
            all lost to other daemons.
        """
        rates = self.rates
        for _ in range(RESERVE_ATTEMPTS):
            with self.engine.begin() as conn:
                seen = conn.execute(sa.select(rates.c.next_at).where(rates.c.key == key)).scalar()
                if seen is None:
                    try:
                        with conn.begin_nested():
                            conn.execute(rates.insert().values(key=key, next_at=now + interval))
                        return now
                    except sa.exc.IntegrityError:
                        continue
                start = max(float(seen), now)
                moved = conn.execute(
                    rates.update().where(rates.c.key == key, rates.c.next_at == seen).values(next_at=start + interval)
                ).rowcount
                if moved:
                    return start
        raise RuntimeError(f"rate key {key!r}: could not reserve a start in {RESERVE_ATTEMPTS} attempts")

    def hold(self, job_id: str, key: str, at: float) -> None:
        """Remember that the one-off job *job_id* (stored back, due at *at*)
        has its start reserved (one pending run per one-off job: by its id)."""
        with self.engine.begin() as conn:
            conn.execute(self.holds.delete().where(self.holds.c.job_id == job_id))
            conn.execute(self.holds.insert().values(job_id=job_id, key=key, at=at))

    def use_hold(self, job_id: str) -> bool:
        """True (once) if *job_id* had its start reserved (:meth:`hold`)."""
        with self.engine.begin() as conn:
            return bool(conn.execute(self.holds.delete().where(self.holds.c.job_id == job_id)).rowcount)

    # -- the job's record -------------------------------------------------------------
    def set_waiting(self, job_id: str, reason: str, stamp: float) -> None:
        """Show the job ``waiting``, with *reason* (unless it left the live
        statuses meanwhile, or is paused)."""
        jobs = self.jobs
        with self.engine.begin() as conn:
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.status.in_(("scheduled", "running", "waiting")))
                .values(status="waiting", waiting_reason=reason[:1000], updated_at=stamp)
            )
