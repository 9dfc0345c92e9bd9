"""Slots and rates: the flow limits' rows in the job store, shared by every daemon.

Beneath :mod:`pyramid_scheduler.daemon.limits`, which asks before a run
starts. Three tables (:class:`~pyramid_scheduler.store.tables.Tables`):

* ``<prefix>slots``: one row per run holding a slot of its concurrency key,
  keyed by ``(key, slot)`` with ``slot`` from 0 to ``max_concurrency - 1``.
  :meth:`Slots.take` inserts a free number; the primary key makes
  two daemons that race for the last slot get one row between them, on
  every database, without a lock. The insert also carries the run's fence
  (:meth:`RunWrites.fence <pyramid_scheduler.store.runwrites.RunWrites.fence>`):
  a daemon declared dead takes no slot. The slot is given back when the run
  ends (:meth:`Slots.release`), or by the lease holder's recovery when its
  daemon is declared dead (:meth:`Slots.free_dead`).
* ``<prefix>rates``: one row per rate key, the earliest time the next run
  with that key may start. :meth:`Slots.reserve` moves it on by one
  interval (``period / count``) with one ``UPDATE ... RETURNING`` that
  computes the new time from the row's (the later of it and now, plus the
  interval): the row's lock orders concurrent reservations, none is lost,
  and runs past the rate get later times, in the order they asked.
* ``<prefix>rate_holds``: the runs stored back to start at their reserved
  time, by job id (a one-off job has one pending run); the run at that time
  finds its hold (:meth:`Slots.use_hold`) and does not reserve again.
"""

from __future__ import annotations

import zlib

import sqlalchemy as sa

from pyramid_scheduler.store.ledger import Ledger

#: Attempts of a conditional update of a rate row before giving up (each
#: failed one means another daemon reserved meanwhile).
RESERVE_ATTEMPTS = 100


class Slots:
    """The flow limits' reads and writes (see the module)."""

    def __init__(self, ledger: Ledger) -> None:
        """The flow limits' tables of *ledger*, on its engine, behind its fence."""
        tables, engine, run_writes = ledger, ledger.engine, ledger.run_writes
        self.tables, self.engine, self.run_writes = tables, engine, run_writes
        self.slots, self.rates, self.holds, self.jobs = tables.slots, tables.rates, tables.rate_holds, tables.jobs
        #: Where one statement is its own transaction: PostgreSQL in
        #: autocommit (no BEGIN and COMMIT round trips), else the engine.
        self._single = run_writes.autocommit if run_writes.autocommit is not None else engine
        self._build()

    def _build(self) -> None:
        """The statements of each call, built once (see :mod:`.runwrites`)."""
        slots, rates, param = self.slots, self.rates, sa.bindparam
        row = sa.select(
            param("p_key", type_=sa.String),
            param("p_slot", type_=sa.Integer),
            param("p_run_key", type_=sa.String),
            param("p_job_id", type_=sa.String),
            param("p_owner", type_=sa.String),
            param("p_stamp", type_=sa.Float),
        )
        columns = ["key", "slot", "run_key", "job_id", "owner", "taken_at"]
        self._take = slots.insert().from_select(columns, row)
        # A daemon serving with others (RunWrites.fence) takes a slot only while alive.
        self._take_fenced = slots.insert().from_select(columns, row.where(self.run_writes.alive()))
        # Whether a row was inserted, from the row itself where the database
        # returns it: psycopg's rowcount of an INSERT ... SELECT is not reliable.
        self._insert_returning = bool(getattr(self.engine.dialect, "insert_returning", False))
        if self._insert_returning:
            self._take = self._take.returning(slots.c.slot)
            self._take_fenced = self._take_fenced.returning(slots.c.slot)
        self._release = slots.delete().where(slots.c.run_key == param("p_run_key"))
        now, interval = param("p_now", type_=sa.Float), param("p_interval", type_=sa.Float)
        moved = sa.case((rates.c.next_at > now, rates.c.next_at), else_=now) + interval
        self._reserve = rates.update().where(rates.c.key == param("p_key")).values(next_at=moved)
        #: Databases without UPDATE ... RETURNING (MySQL) read the row and
        #: update it only if it still holds what was read (a conditional UPDATE).
        self._returning = bool(getattr(self.engine.dialect, "update_returning", False))
        if self._returning:
            self._reserve = self._reserve.returning(rates.c.next_at)
        else:
            self._build_without_returning()

    def _build_without_returning(self) -> None:
        """The reservation as a conditional ``UPDATE``: only if the row still
        holds the time read (``p_seen``); for databases without ``RETURNING``."""
        rates, param = self.rates, sa.bindparam
        now, interval = param("p_now", type_=sa.Float), param("p_interval", type_=sa.Float)
        moved = sa.case((rates.c.next_at > now, rates.c.next_at), else_=now) + interval
        self._returning = False
        self._reserve = (
            rates.update()
            .where(rates.c.key == param("p_key"), rates.c.next_at == param("p_seen", type_=sa.Float))
            .values(next_at=moved)
        )

    # -- concurrency ------------------------------------------------------------------
    def take(self, key: str, limit: int, run_key: str, job_id: str, owner: str, stamp: float) -> str:
        """Take a slot of *key* for the run *run_key*: ``"taken"`` (or it
        already holds one), ``"full"`` (*limit* runs hold one), or
        ``"fenced"`` (this daemon is declared dead).

        The first try is one ``INSERT`` at a slot number drawn from the run
        key (runs of one key rarely draw the same one); only if that number
        is taken are the key's slots read, and the free ones tried."""
        first = zlib.crc32(run_key.encode("utf-8")) % limit
        state = self._insert(key, first, run_key, job_id, owner, stamp)
        if state is not None:
            return state
        slots = self.slots
        with self._single.connect() as conn:
            held = conn.execute(sa.select(slots.c.slot, slots.c.run_key).where(slots.c.key == key)).all()
        if any(row.run_key == run_key for row in held):
            return "taken"
        taken = {row.slot for row in held}
        for step in range(1, limit):
            if len(taken) >= limit:
                break
            slot = (first + step) % limit
            if slot in taken:
                continue
            state = self._insert(key, slot, run_key, job_id, owner, stamp)
            if state is not None:
                return state
            taken.add(slot)  # another run took that number first: the next one
        return "full"

    def _insert(self, key: str, slot: int, run_key: str, job_id: str, owner: str, stamp: float) -> str | None:
        """Insert slot *slot* of *key*: ``"taken"``, ``"fenced"``, or None (that number is held)."""
        try:
            with self._single.begin() as conn:
                take = self._take_fenced if self.run_writes.fenced else self._take
                result = conn.execute(
                    take,
                    {
                        "p_key": key,
                        "p_slot": slot,
                        "p_run_key": run_key,
                        "p_job_id": job_id,
                        "p_owner": owner,
                        "p_stamp": stamp,
                    },
                )
                inserted = result.first() is not None if self._insert_returning else result.rowcount == 1
                return "taken" if inserted else "fenced"
        except sa.exc.IntegrityError:
            return None

    def release(self, run_key: str) -> None:
        """Give back the slot the run *run_key* holds (if any)."""
        with self._single.begin() as conn:
            conn.execute(self._release, {"p_run_key": run_key})

    def free_dead(self, live: set[str]) -> int:
        """Give back every slot held by a daemon not in *live*; how many."""
        with self.engine.begin() as conn:
            return max(int(conn.execute(self.slots.delete().where(self.slots.c.owner.not_in(live))).rowcount), 0)

    def held(self, key: str) -> int:
        """How many runs hold a slot of *key* now."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(self.slots.c.key == key)).scalar() or 0)

    # -- rates ------------------------------------------------------------------------
    def reserve(self, key: str, interval: float, now: float) -> float:
        """Reserve the next start of *key*: the later of *now* and the row's
        time, which moves on by *interval*, in one ``UPDATE`` (the row's lock
        orders the daemons that reserve at once). Returns the reserved time.

        :raises RuntimeError: :data:`RESERVE_ATTEMPTS` attempts all lost to
            other daemons (only without ``RETURNING``).
        """
        params = {"p_key": key, "p_now": now, "p_interval": interval}
        rates = self.rates
        for _ in range(RESERVE_ATTEMPTS):
            with self._single.begin() as conn:
                if self._returning:
                    moved = conn.execute(self._reserve, params).scalar()
                    if moved is not None:
                        return float(moved) - interval
                else:
                    seen = conn.execute(sa.select(rates.c.next_at).where(rates.c.key == key)).scalar()
                    if seen is not None:
                        if conn.execute(self._reserve, {**params, "p_seen": seen}).rowcount:
                            return max(float(seen), now)
                        continue  # another daemon reserved meanwhile: read again
            try:
                with self._single.begin() as conn:
                    conn.execute(self.rates.insert().values(key=key, next_at=now + interval))
                return now
            except sa.exc.IntegrityError:
                continue  # another daemon inserted it first: update it
        raise RuntimeError(f"rate key {key!r}: could not reserve a start in {RESERVE_ATTEMPTS} attempts")

    def hold(self, job_id: str, key: str, at: float) -> None:
        """Remember that the one-off job *job_id* (stored back, due at *at*)
        has its start reserved (one pending run per one-off job: by its id)."""
        with self.engine.begin() as conn:
            conn.execute(self.holds.delete().where(self.holds.c.job_id == job_id))
            conn.execute(self.holds.insert().values(job_id=job_id, key=key, at=at))

    def use_hold(self, job_id: str) -> bool:
        """True (once) if *job_id* had its start reserved (:meth:`hold`)."""
        with self._single.begin() as conn:
            return conn.execute(self.holds.delete().where(self.holds.c.job_id == job_id)).rowcount == 1

    # -- the job's record -------------------------------------------------------------
    def job_request(self, job_id: str) -> tuple[str, str] | None:
        """The wire request (JSON) and function reference of *job_id*, or None."""
        jobs = self.jobs
        with self._single.connect() as conn:
            row = conn.execute(sa.select(jobs.c.request, jobs.c.func).where(jobs.c.id == job_id)).first()
        return None if row is None else (str(row.request), str(row.func))

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
