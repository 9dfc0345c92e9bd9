"""``kill -9`` of a daemon whose run holds a concurrency slot (two real
``pscheduler`` daemons, Redis, PostgreSQL): the lease holder's recovery
gives the slot back, the cut run is reported ``interrupted``, and the run
that was ``waiting`` for the slot runs on the survivor."""

from __future__ import annotations

import time
import uuid

import pytest
import sqlalchemy as sa

from integration.conftest import DEADLINE, wait_until
from integration.sampleapp import jobs
from integration.test_limits import two_daemons

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

LEASE_TTL = 3.0  # conftest.make_settings


def test_a_slot_held_by_a_killed_daemon_is_freed_and_the_waiting_run_runs(make_harness):
    harness, proxy, daemons = two_daemons(make_harness)
    key = f"tenant:{uuid.uuid4().hex[:6]}"
    holder_id, waiter_id = f"holder-{key[7:]}", f"waiter-{key[7:]}"

    proxy.add_async_job(
        jobs.slow, args=[harness.oracle, holder_id, 120], id=holder_id, max_concurrency=1, concurrency_key=key
    )
    (started,) = harness.wait_runs(holder_id, alive=tuple(daemons))
    proxy.add_async_job(
        jobs.record, args=[harness.oracle, waiter_id], id=waiter_id, max_concurrency=1, concurrency_key=key
    )
    waiting = harness.wait_job(proxy, waiter_id, {"waiting"}, alive=tuple(daemons))
    assert key in waiting["waiting_reason"]
    code, output = harness.run("job", waiter_id)  # the command line shows why it waits
    assert code == 0, output
    assert "status:   waiting" in output
    assert f"waiting:  concurrency limit: 1 run(s) with key {key!r} already" in output  # cut to 80 columns

    (victim,) = [daemon for daemon in daemons if daemon.pid == started["pid"]]
    (survivor,) = [daemon for daemon in daemons if daemon is not victim]
    victim.kill()
    killed_at = time.time()

    failover = LEASE_TTL * 3 + DEADLINE
    done = harness.wait_job(proxy, waiter_id, {"done"}, timeout=failover, alive=(survivor,))
    assert done["runs"] == 1
    (ran,) = harness.runs(waiter_id)
    assert ran["pid"] == survivor.pid and ran["at"] > killed_at  # not before the slot was free
    holder = harness.wait_job(proxy, holder_id, {"interrupted"}, timeout=failover, alive=(survivor,))
    assert holder["status"] == "interrupted"
    assert [run["phase"] for run in harness.runs(holder_id)] == ["start"]  # cut, not run again

    settings = harness.settings
    engine = sa.create_engine(settings["scheduler.jobstore.url"])
    try:
        slots = sa.table(f"{settings['scheduler.jobstore.tablename_prefix']}slots", sa.column("key"))

        def no_slot_left() -> bool:
            with engine.connect() as conn:
                return not conn.execute(
                    sa.select(sa.func.count()).select_from(slots).where(slots.c.key == key)
                ).scalar()

        wait_until(no_slot_left, f"the slots of {key} to be given back", alive=(survivor,))
    finally:
        engine.dispose()
