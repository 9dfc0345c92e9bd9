"""Testing the flow limits: other daemons' load, for an application's own tests.

The testing kit (:mod:`pyramid_scheduler.testing`) runs the daemon's own
limits (:mod:`pyramid_scheduler.daemon.limits`) on its fake clock: a job
held back shows ``waiting`` and is run by a later ``clock.advance()``. In a
test, every run is the caller's, one at a time, so a concurrency limit never
fills by itself. :func:`slots_taken` plays the runs of other daemons that
hold a key's slots; :func:`next_start` tells when a rate key's next run may
start::

    from pyramid_scheduler.testing_limits import slots_taken

    def test_a_busy_tenant_waits(scheduler):
        with slots_taken(scheduler, "tenant:acme", 3):
            job_id = scheduler.add_async_job(report, args=["acme"], max_concurrency=3,
                                             concurrency_key="tenant:{0}")
            scheduler.run_pending()
            assert scheduler.get_job(job_id)["status"] == "waiting"
        scheduler.clock.advance(seconds=2)  # the next poll finds a slot
        assert scheduler.get_job(job_id)["status"] == "done"

See :doc:`flow`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime, timezone

import sqlalchemy as sa

from pyramid_scheduler.store.slots import Slots
from pyramid_scheduler.testing import TestingScheduler

__all__ = ["next_start", "slots_taken"]

#: The owner named in the slots :func:`slots_taken` holds.
OTHERS = "pyramid_scheduler.testing_limits"


def _slots(scheduler: TestingScheduler) -> Slots:
    return Slots(scheduler._ledger())


@contextlib.contextmanager
def slots_taken(scheduler: TestingScheduler, key: str, count: int = 1) -> Iterator[None]:
    """Hold *count* slots of the concurrency key *key* for the block, as
    runs on other daemons would (slot numbers 0 to *count* - 1, so a job
    with ``max_concurrency=count`` finds them all taken); given back at its end.

    :raises ValueError: *count* is not 1 or more, or a slot is held already.
    """
    if count < 1:
        raise ValueError(f"slots_taken: count must be 1 or more, got {count!r}")
    slots = _slots(scheduler)
    stamp = scheduler.clock.now().timestamp()
    taken = []
    try:
        for number in range(count):
            run_key = f"{OTHERS}:{key}#{number}"
            with slots.engine.begin() as conn:
                try:
                    conn.execute(
                        slots.slots.insert().values(
                            key=key, slot=number, run_key=run_key, job_id=OTHERS, owner=OTHERS, taken_at=stamp
                        )
                    )
                except sa.exc.IntegrityError as exc:
                    raise ValueError(f"slots_taken: slot {number} of {key!r} is held already") from exc
            taken.append(run_key)
        yield
    finally:
        for run_key in taken:
            slots.release(run_key)


def next_start(scheduler: TestingScheduler, key: str) -> datetime | None:
    """The earliest start the next run with the rate key *key* may have
    (UTC), or None if no run has asked yet."""
    slots = _slots(scheduler)
    with slots.engine.connect() as conn:
        at = conn.execute(sa.select(slots.rates.c.next_at).where(slots.rates.c.key == key)).scalar()
    return None if at is None else datetime.fromtimestamp(float(at), timezone.utc)
